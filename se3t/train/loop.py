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

The module holds the Trainer alone (its helpers live beside it: ``inputs``, ``step``,
``records``, ``signals``, ``checkpoint``, ``sampler``, ``schedule``); at ~500 lines it is over
the ~400-line guide because the epoch loop, evaluation and the checkpointed state share the
Trainer's fields, and splitting them would pass that state back and forth.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from se3t.config import Config, save, to_dict
from se3t.data import collate
from se3t.data.provenance import dataset_record
from se3t.device import device_name, peak_memory
from se3t.errors import InputError
from se3t.models import build
from se3t.train import distributed as D
from se3t.train.checkpoint import capture_rng, check_model_state, restore_rng, save_checkpoint
from se3t.train.guards import NonFiniteGuard
from se3t.train.init import initial_weights
from se3t.train.inputs import Inputs, check_inputs
from se3t.train.loss import masked_abs_error
from se3t.train.records import MetricsWriter, log_to
from se3t.train.runlock import hold_run_folder
from se3t.train.sampler import ChunkResumableBatchSampler, ResumableBatchSampler
from se3t.train.schedule import build_optimizer, build_scheduler
from se3t.train.signals import StopSignals
from se3t.train.step import autocast, grad_scaler, set_matmul_precision

__all__ = ["Inputs", "Trainer", "check_inputs", "train"]

log = logging.getLogger("se3t.train")


class Trainer:
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
        self.device = self._device(t.device)
        self.device_name = device_name(self.device, self.env.world_size)
        inputs = check_inputs(cfg, world_size=self.env.world_size)
        self.cfg = cfg = inputs.cfg
        self.train_set, self.val_set = inputs.train_set, inputs.val_set
        self.basis_store = inputs.basis_store
        self.resume_path, self.resume_state = inputs.resume_path, inputs.resume_state

        # ---- determinism, precision, model ------------------------------------------------
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        set_matmul_precision(t.precision)
        torch.manual_seed(t.seed)
        self.model = build(cfg.model)
        if self.resume_state is not None:
            check_model_state(self.model, self.resume_state["model"], str(self.resume_path))
        elif t.init_weights:
            self.model.load_state_dict(initial_weights(cfg, self.model))
        del inputs
        self.model.to(self.device)
        D.init(self.env, self.device, timeout_s=t.collective_timeout)
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model

        self.sampler_kind = self._sampler_kind()
        self.sampler = self._build_sampler()
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

    # ---- setup helpers -------------------------------------------------------------------
    def _sampler_kind(self) -> str:
        """``chunks`` when the basis store is read chunk by chunk on any rank (``read=auto``
        decides per process, from its free memory: the ranks must agree), else ``random``."""
        chunks = torch.tensor(
            [int(self.basis_store is not None and self.basis_store.read == "chunks")]
        )
        D.all_reduce_(chunks, op="max")
        return "chunks" if int(chunks) else "random"

    def _build_sampler(self):
        t = self.cfg.train
        if self.sampler_kind == "chunks":
            # the store is read chunk by chunk: batches drawn chunk-window by chunk-window
            # (se3t.basis.sampler: the effect on sampling is documented there)
            return ChunkResumableBatchSampler(
                self.basis_store,
                self.train_set.indices,
                t.batch_size,
                buffer_chunks=self.cfg.basis.buffer_chunks,
                seed=t.seed,
                rank=self.env.rank,
                world_size=self.env.world_size,
            )
        return ResumableBatchSampler(
            len(self.train_set),
            t.batch_size,
            shuffle=True,
            seed=t.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
        )

    def _device(self, name: str) -> torch.device:
        if name == "cuda" and not torch.cuda.is_available():
            raise InputError("config key 'train.device': cuda requested but no CUDA device")
        if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
            local = self.env.local_rank % max(1, torch.cuda.device_count())
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")

    def _restore(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        # the schedule's length follows the current config (more epochs may be asked for)
        self.scheduler.lr_lambdas[0].total = self.total_steps
        if s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.batch_in_epoch, self.step = s["epoch"], s["batch_in_epoch"], s["step"]
        was = (s.get("sampler") or {}).get("kind", "random")
        if was != self.sampler_kind:
            log.warning(
                "%s was written with %s sampling, this run samples %s (basis.read): the "
                "rest of epoch %d is not the batches the run had left",
                self.resume_path,
                was,
                self.sampler_kind,
                self.epoch,
            )
        self.best_val = s["best_val"]
        if s.get("train_sums") is not None:
            self.train_sums = s["train_sums"].to(torch.float64)
        restore_rng(s["rng"])

    # ---- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "sampler": {
                "kind": self.sampler_kind,
                "epoch": self.epoch,
                "start": self.batch_in_epoch,
                "buffer_chunks": int(self.cfg.basis.buffer_chunks),
            },
            "step": self.step,
            "best_val": self.best_val,
            "train_sums": self.train_sums.clone(),
            "rng": capture_rng(),
            "config": to_dict(self.cfg),
            "target_stats": {
                "targets": list(self.train_set.targets),
                "mean": self.train_set.mean.clone(),
                "std": self.train_set.std.clone(),
            },
            "world_size": self.env.world_size,
            "encoding": self.train_set.encoding.to_dict(),
            "dataset": dataset_record(self.train_set),  # evaluate checks it (se3t.data.provenance)
        }

    def save(self, name: str = "last.pt") -> None:
        if self.env.is_main:
            save_checkpoint(self.state(), self.run_dir / name)
            log.info("checkpoint %s: epoch %d, step %d", name, self.epoch, self.step)

    # ---- pieces of a step ----------------------------------------------------------------
    def _autocast(self):
        return autocast(self.cfg.train.precision, self.device)

    def _basis(self, batch):
        if self.basis_store is None:
            return None
        return self.basis_store.gather(batch.index).to(
            self.device, torch.float32, non_blocking=True
        )

    def _loader(self, dataset, batch_sampler) -> DataLoader:
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

    def _peak_mem(self) -> int:
        return peak_memory(self.device)

    @torch.no_grad()
    def evaluate(self, dataset) -> dict[str, float]:
        """MAE per target in target units over ``dataset`` (ranks split it and reduce)."""
        self.model.eval()
        positions = list(range(self.env.rank, len(dataset), self.env.world_size))
        if self.sampler_kind == "chunks":  # chunk by chunk: each chunk decoded once
            chunk = self.basis_store.molecule_chunk[dataset.indices]
            positions.sort(key=lambda p: int(chunk[p]))
        bs = self.cfg.eval.batch_size
        batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
        sums = torch.zeros(2, len(dataset.targets), dtype=torch.float64)
        std = dataset.std.to(self.device)
        for batch in self._loader(dataset, batches):
            batch = batch.to(self.device, non_blocking=True)
            with self._autocast():
                pred = self.model(batch, self._basis(batch))  # [B, T]
            err, present = masked_abs_error(pred.float(), batch.y)
            err = err * std  # [B, T] target units, 0 where the target is missing
            sums[0] += err.sum(0).double().cpu()
            sums[1] += present.sum(0).double().cpu()
        D.all_reduce_(sums)
        self.model.train()
        mae = sums[0] / sums[1].clamp(min=1)
        return {t: float(mae[k]) for k, t in enumerate(dataset.targets)}

    def _score(self, val_mae: dict[str, float]) -> float:
        """Model selection: mean over targets of MAE / training std (unit-free)."""
        std = self.train_set.std.double()
        return float(
            sum(val_mae[t] / std[k] for k, t in enumerate(self.train_set.targets)) / len(val_mae)
        )

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

    def _log_start(self) -> None:
        t = self.cfg.train
        where = "starting"
        if self.resume_state is not None:
            where = f"resuming from {self.resume_path} at epoch {self.epoch}, step {self.step}"
        log.info(
            "%s: %s; %d train / %d val molecules, %d steps per epoch, %d steps in all, "
            "world size %d (%s), device %s, precision %s, bases %s",
            self.run_dir,
            where,
            len(self.train_set),
            len(self.val_set),
            self.steps_per_epoch,
            self.total_steps,
            self.env.world_size,
            self.env.source,
            self.device,
            t.precision,
            "from store" if self.basis_store else "computed",
        )

    def _epoch(self, metrics: MetricsWriter, std: torch.Tensor) -> tuple[bool, bool]:
        """Train from the current position to the epoch's end (or ``total_steps`` or a stop).
        Returns ``(epoch_done, stopped)``."""
        t = self.cfg.train
        start = self.batch_in_epoch
        self.sampler.set_epoch(self.epoch, start=start)
        self.micro_per_epoch = len(self.sampler)
        show = self.env.is_main and (self.progress if self.progress is not None else True)
        bar = tqdm(
            total=self.micro_per_epoch,
            initial=start,
            disable=not show,
            file=sys.stderr,
            desc=f"epoch {self.epoch}",
            unit="batch",
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 10.0,
        )
        window = torch.zeros(3, dtype=torch.float64)  # loss sum, molecules, micro-batches
        tick = time.perf_counter()
        group_start = start
        try:
            for i, batch in enumerate(self._loader(self.train_set, self.sampler), start=start):
                n_acc = min(t.accumulate, self.micro_per_epoch - group_start)
                last_micro = i + 1 - group_start == n_acc
                batch = batch.to(self.device, non_blocking=True)
                sync = contextlib.nullcontext()
                if self.env.distributed and not last_micro:
                    sync = self.ddp.no_sync()
                with sync:
                    with self._autocast():
                        pred = self.ddp(batch, self._basis(batch))  # [b, T]
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
                bar.update(1)
                if not last_micro:
                    continue
                lr = self._optimizer_step(loss)
                if not getattr(self, "_kernel_logged", False) and self.env.is_main:
                    # the fused kernel's tiles are chosen (or read) during the first step
                    self._kernel_logged = True
                    log.info("fused kernel %s: %s", self.cfg.model.kernel, self._kernel_report())
                self.batch_in_epoch = group_start = i + 1
                if t.log_every and self.step % t.log_every == 0:
                    tick = self._log_step(metrics, window, tick, bar, lr)
                if t.eval_every_steps and self.step % t.eval_every_steps == 0:
                    tick += self._eval_step(metrics)  # not in the next window's mol/s
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save("last.pt")
                if self.stop.agreed(self.env.distributed):
                    return False, True
                if self.step >= self.total_steps:
                    return self.batch_in_epoch >= self.micro_per_epoch, False
        finally:
            bar.close()
        return True, False

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
        self.scheduler.step()
        self.step += 1
        return lr

    def _log_step(self, metrics, window, tick, bar, lr: float) -> float:
        D.all_reduce_(window)
        now = time.perf_counter()
        loss = float(window[0] / window[1].clamp(min=1))
        rec = {
            "kind": "step",
            "epoch": self.epoch,
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "mol_per_s": float(window[1]) / max(now - tick, 1e-9),
            "peak_mem_bytes": self._peak_mem(),
            "device_name": self.device_name,
            "time": time.time(),
        }
        metrics.write(rec)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
        window.zero_()
        return now

    def _eval_step(self, metrics: MetricsWriter) -> float:
        """Validation between epochs (``train.eval_every_steps``): a ``kind: val`` record.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        val_mae = self.evaluate(self.val_set)
        seconds = time.perf_counter() - t0
        rec = {"kind": "val", "epoch": self.epoch, "step": self.step, "val_mae": val_mae}
        metrics.write({**rec, "eval_s": seconds, "time": time.time()})
        if self.env.is_main:
            log.info("step %d: val MAE %s (%.1f s)", self.step, _fmt(val_mae), seconds)
        return seconds

    def _end_of_epoch(self, metrics, epoch_done: bool, finished: bool):
        t = self.cfg.train
        sums = D.all_reduce_(self.train_sums.clone())
        mae = sums[0] / sums[1].clamp(min=1)
        train_mae = {name: float(mae[k]) for k, name in enumerate(self.train_set.targets)}
        val_mae: dict[str, float] = {}
        if finished or (self.epoch + 1) % t.eval_every == 0:
            val_mae = self.evaluate(self.val_set)
        std = self.train_set.std.double()
        rec = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "loss": float((mae / std).mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
            "peak_mem_bytes": self._peak_mem(),
            "train_mae": train_mae,
            "val_mae": val_mae,
            "device_name": self.device_name,
            "time": time.time(),
        }
        metrics.write(rec)
        if self.env.is_main:
            log.info(
                "epoch %d (step %d): train MAE %s, val MAE %s",
                self.epoch,
                self.step,
                _fmt(train_mae),
                _fmt(val_mae) or "-",
            )
        if epoch_done:
            self.epoch += 1
            self.batch_in_epoch = 0
            self.train_sums.zero_()
        improved = bool(val_mae) and self._score(val_mae) < self.best_val
        if improved:
            self.best_val = self._score(val_mae)
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        return train_mae, val_mae


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())


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
