"""The training loop: ``train(cfg)`` runs one process (one DDP rank) from start or from the run
folder's last checkpoint to the end.

Steps and batches. ``train.batch_size`` is the *global* micro-batch (all ranks together);
``train.accumulate`` micro-batches make one optimizer step. The loss is the L1 distance between
prediction and standardized target, averaged over targets; each rank's loss is

    loss_r = sum_{i in rank r's molecules} l_i * world_size / (global micro-batch size * n_acc)

so that DDP's gradient average equals the gradient of the mean loss over the global batch of a
one-process run (``n_acc`` is the number of micro-batches in this optimizer step).

Checkpoints happen only at optimizer-step boundaries (every ``train.checkpoint_every`` steps,
at every epoch end, at the end, and when a stop signal arrives), and hold everything a resumed
run needs to continue bit for bit: model, optimizer, scheduler, scaler, RNG states, the epoch
and the number of its micro-batches consumed (the sampler replays the epoch's order from
``(seed, epoch)`` and skips them), running training-MAE sums, best validation score, config.

Stop signals (SIGUSR2: SLURM preemption or time limit through submitit; SIGTERM) only set a
flag; at the next step boundary every rank agrees on it (an all-reduce), rank 0 writes
``last.pt`` and ``train`` returns with ``status="stopped"`` — the caller requeues or exits.

The module holds the Trainer's epoch loop; its helpers live beside it: ``inputs``,
``rank_setup`` (device, model, sampler), ``trainer_state`` (the checkpointed state),
``validation``, ``run_log`` (records), ``step``, ``signals``, ``checkpoint``, ``schedule``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from se3t.config import Config, save
from se3t.data import collate
from se3t.device import device_name
from se3t.train import distributed as D
from se3t.train.checkpoint import save_checkpoint
from se3t.train.guards import NonFiniteGuard
from se3t.train.inputs import Inputs, check_inputs
from se3t.train.loss import masked_abs_error
from se3t.train.rank_setup import (
    build_sampler,
    rank_device,
    rank_model,
    sampler_kind,
    set_determinism,
    wrapped,
)
from se3t.train.records import MetricsWriter, log_to
from se3t.train.run_log import RunLog
from se3t.train.runlock import hold_run_folder
from se3t.train.sampler import ChunkResumableBatchSampler
from se3t.train.schedule import build_optimizer, build_scheduler
from se3t.train.signals import StopSignals
from se3t.train.step import autocast, grad_scaler
from se3t.train.trainer_state import TrainerState
from se3t.train.validation import Validation, selection_score

__all__ = ["Inputs", "Trainer", "check_inputs", "train"]

log = logging.getLogger("se3t.train")


class Trainer(RunLog, TrainerState, Validation):
    """One rank of a training run. ``Trainer(cfg)`` checks every input (dataset, targets, basis
    store, checkpoint compatibility) before any training work; ``run()`` trains."""

    def __init__(
        self,
        cfg: Config,
        *,
        progress: bool | None = None,
        stop_signals: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM),
    ) -> None:
        self.env = D.detect()
        self.progress = progress
        self.stop = StopSignals(stop_signals)
        self.run_dir = Path(cfg.run.dir).absolute()
        t = cfg.train
        self.device = rank_device(t.device, self.env)
        self.device_name = device_name(self.device, self.env.world_size)
        inputs = check_inputs(cfg, world_size=self.env.world_size)
        self.cfg = cfg = inputs.cfg
        self.train_set, self.val_set = inputs.train_set, inputs.val_set
        self.basis_store = inputs.basis_store
        self.resume_path, self.resume_state = inputs.resume_path, inputs.resume_state
        del inputs
        set_determinism(t)
        self.model = rank_model(cfg, self.resume_path, self.resume_state, t.init_weights)
        self.model.to(self.device)
        D.init(self.env, self.device, timeout_s=t.collective_timeout)
        self.ddp = wrapped(self.model, self.env, self.device)
        self.sampler_kind = sampler_kind(self.basis_store)
        self.sampler = build_sampler(
            self.sampler_kind, self.basis_store, self.train_set, cfg, self.env
        )
        # epochs -> steps with epoch 0's length (chunk sampling under DDP varies it by a batch)
        self.micro_per_epoch = len(self.sampler)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.accumulate)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(self.model.parameters(), t)
        self.scheduler = build_scheduler(
            self.optimizer, t, steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps
        )
        self.scaler = grad_scaler(t.precision, self.device)
        self.guard = NonFiniteGuard(
            t.nan_policy,
            amp_scaler=self.scaler.is_enabled(),
            checkpoint=str(self.run_dir / "last.pt"),
        )

        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.best_val = math.inf
        self.train_sums = torch.zeros(2, len(self.train_set.targets), dtype=torch.float64)
        if self.resume_state is not None:
            self._restore(self.resume_state)

    # ---- checkpoints (the state itself: TrainerState.state) ------------------------------
    def save(self, name: str = "last.pt") -> None:
        if self.env.is_main:
            save_checkpoint(self.state(), self.run_dir / name)
            log.info("checkpoint %s: epoch %d, step %d", name, self.epoch, self.step)

    # ---- pieces of a step ----------------------------------------------------------------
    def autocast(self):
        return autocast(self.cfg.train.precision, self.device)

    def basis(self, batch):
        if self.basis_store is None:
            return None
        return self.basis_store.gather(batch.index).to(
            self.device, torch.float32, non_blocking=True
        )

    def loader(self, dataset, batch_sampler) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def _global_size(self, i: int, local: int) -> int:
        """Molecules in global micro-batch ``i`` of the epoch (``local`` on this rank)."""
        if isinstance(self.sampler, ChunkResumableBatchSampler):
            return self.sampler.global_size(local)
        return min(self.cfg.train.batch_size, len(self.train_set) - i * self.cfg.train.batch_size)

    def _kernel_report(self) -> str:
        """The tiles the fused kernel runs with, per shape (se3t.nn.tuning)."""
        model = getattr(self.model, "module", self.model)  # DDP wraps the model
        tuner = getattr(getattr(model, "transformer", None), "tuner", None)
        return tuner.report() if tuner is not None else "default tiles"

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        main = self.env.is_main
        metrics = MetricsWriter(
            self.run_dir / "metrics.jsonl", enabled=main, tensorboard=t.tensorboard
        )
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save(self.cfg, self.run_dir / "config.yaml")
            log_to(self.run_dir / "train.log")
            if self.resume_state is not None:
                metrics.truncate(self.step, self.epoch)
        if main:
            self._log_start()
        self.resume_state = None  # free it
        self.model.train()
        status = "completed"
        val_mae: dict[str, float] = {}
        train_mae: dict[str, float] = {}
        std = self.train_set.std.to(self.device)
        with self.stop, metrics:
            if t.eval_every_steps and self.step == 0:
                self._eval_step(metrics)  # the starting weights' score
            while self.step < self.total_steps:
                epoch_done, stopped = self._epoch(metrics, std)
                if stopped:
                    status = "stopped"
                    break
                finished = self.step >= self.total_steps
                if epoch_done or finished:
                    train_mae, val_mae = self._end_of_epoch(metrics, epoch_done, finished)
            if status == "completed" and not val_mae:
                val_mae = self.evaluate(self.val_set)
        if status == "stopped":
            self.save("last.pt")
            D.barrier()
            log.warning(
                "stopped by signal %s at step %d: checkpoint written",
                self.stop.requested,
                self.step,
            )
        elif main:
            log.info("done: step %d, epoch %d, val MAE %s", self.step, self.epoch, val_mae)
        return {
            "status": status,
            "run_dir": str(self.run_dir),
            "epoch": self.epoch,
            "step": self.step,
            "best_val": self.best_val,
            "val_mae": val_mae,
            "train_mae": train_mae,
            "signal": self.stop.requested,
        }

    def _epoch(self, metrics: MetricsWriter, std: torch.Tensor) -> tuple[bool, bool]:
        """Train from the current position to the epoch's end (or ``total_steps`` or a stop).
        Returns ``(epoch_done, stopped)``."""
        t = self.cfg.train
        start = self.batch_in_epoch
        self.sampler.set_epoch(self.epoch, start=start)
        self.micro_per_epoch = len(self.sampler)
        bar = self._progress_bar(start)
        window = torch.zeros(3, dtype=torch.float64)  # loss sum, molecules, micro-batches
        tick = time.perf_counter()
        group_start = start
        try:
            for i, batch in enumerate(self.loader(self.train_set, self.sampler), start=start):
                n_acc = min(t.accumulate, self.micro_per_epoch - group_start)
                last_micro = i + 1 - group_start == n_acc
                loss = self._micro_batch(batch, i, n_acc, last_micro, std, window)
                bar.update(1)
                if not last_micro:
                    continue
                lr = self._optimizer_step(loss)
                if not getattr(self, "_kernel_logged", False) and self.env.is_main:
                    # the fused kernel's tiles are chosen (or read) during the first step
                    self._kernel_logged = True
                    log.info("fused kernel %s: %s", self.cfg.model.kernel, self._kernel_report())
                self.batch_in_epoch = group_start = i + 1
                tick = self._after_step(metrics, window, tick, bar, lr)
                if self.stop.agreed(self.env.distributed):
                    return False, True
                if self.step >= self.total_steps:
                    return self.batch_in_epoch >= self.micro_per_epoch, False
        finally:
            bar.close()
        return True, False

    def _progress_bar(self, start: int) -> tqdm:
        show = self.env.is_main and (self.progress if self.progress is not None else True)
        return tqdm(
            total=self.micro_per_epoch,
            initial=start,
            disable=not show,
            file=sys.stderr,
            desc=f"epoch {self.epoch}",
            unit="batch",
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 10.0,
        )

    def _micro_batch(self, batch, i: int, n_acc: int, last_micro: bool, std, window) -> Tensor:
        """Forward and backward of micro-batch ``i`` of the epoch (gradients synchronized on
        the last of the step's ``n_acc``); adds it to the MAE sums and the log ``window``.
        Returns its scaled loss."""
        batch = batch.to(self.device, non_blocking=True)
        sync = contextlib.nullcontext()
        if self.env.distributed and not last_micro:
            sync = self.ddp.no_sync()
        with sync:
            with self.autocast():
                pred = self.ddp(batch, self.basis(batch))  # [b, T]
            # [b, T] standardized units; missing targets (NaN) give 0
            per_mol, present = masked_abs_error(pred.float(), batch.y)
            scale = self.env.world_size / (self._global_size(i, per_mol.shape[0]) * n_acc)
            loss = per_mol.mean(1).sum() * scale
            self.scaler.scale(loss).backward()
        with torch.no_grad():
            self.train_sums[0] += (per_mol.detach() * std).sum(0).double().cpu()
            self.train_sums[1] += present.sum(0).double().cpu()
            window[0] += float(per_mol.detach().mean(1).sum())
            window[1] += per_mol.shape[0]
            window[2] += 1
        return loss

    def _after_step(self, metrics: MetricsWriter, window, tick: float, bar, lr: float) -> float:
        """The step's record, validation and checkpoint where they are due. Returns the start
        of the next log window."""
        t = self.cfg.train
        if t.log_every and self.step % t.log_every == 0:
            tick = self._write_step(metrics, window, tick, bar, lr)
        if t.eval_every_steps and self.step % t.eval_every_steps == 0:
            tick += self._eval_step(metrics)  # not in the next window's mol/s
        if t.checkpoint_every and self.step % t.checkpoint_every == 0:
            self.save("last.pt")
        return tick

    def _optimizer_step(self, loss: torch.Tensor) -> float:
        """The only place the training state changes; returns the learning rate it used. A
        non-finite loss or gradient stops the run (or skips the step, train.nan_policy) before
        it changes anything (se3t.train.guards)."""
        if self.guard.step_allowed(loss, self.model, self.step, self.epoch):
            if self.cfg.train.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.guard.check_parameters(self.model, self.step + 1, self.epoch)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # a skipped step (fp16's scaler dropped an overflowing one, or nan_policy=skip)
            # still counts in the schedule, as in NVIDIA's loop (its schedule moves per epoch,
            # skipped steps included); torch takes a first step skipped that way for a
            # misordered loop and warns, wrongly here
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        self.step += 1
        return lr

    def _eval_step(self, metrics: MetricsWriter) -> float:
        """Validation between epochs (``train.eval_every_steps``): a ``kind: val`` record.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        val_mae = self.evaluate(self.val_set)
        seconds = time.perf_counter() - t0
        self._write_val(metrics, val_mae, seconds)
        return seconds

    def _end_of_epoch(self, metrics, epoch_done: bool, finished: bool):
        t = self.cfg.train
        sums = D.all_reduce_(self.train_sums.clone())
        mae = sums[0] / sums[1].clamp(min=1)
        train_mae = {name: float(mae[k]) for k, name in enumerate(self.train_set.targets)}
        val_mae: dict[str, float] = {}
        if finished or (self.epoch + 1) % t.eval_every == 0:
            val_mae = self.evaluate(self.val_set)
        self._write_epoch(metrics, mae, train_mae, val_mae)
        if epoch_done:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.train_sums.zero_()
        improved = bool(val_mae) and selection_score(val_mae, self.train_set) < self.best_val
        if improved:
            self.best_val = selection_score(val_mae, self.train_set)
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        return train_mae, val_mae


def train(cfg: Config, *, progress: bool | None = None) -> dict[str, Any]:
    """Train one rank from ``cfg`` (resuming from ``{run.dir}/last.pt`` when it exists and
    ``train.resume``). Returns a summary: ``status`` (completed | stopped), ``run_dir``,
    ``epoch``, ``step``, ``best_val``, ``val_mae``, ``train_mae`` (per target, target units),
    ``signal`` (the stop signal, if any). Raises :class:`InputError` for bad input before
    any training work."""
    # process-wide switches that a run sets (deterministic algorithms, TF32) are put back
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        trainer = Trainer(cfg, progress=progress)  # checks every input; writes nothing
        with hold_run_folder(trainer.run_dir, is_main=trainer.env.is_main):
            return trainer.run()
    finally:
        D.shutdown()
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:]
