"""What a training run reports as it goes: its start line in ``train.log``, and the step,
validation and epoch records of ``metrics.jsonl`` (with their log lines)."""

from __future__ import annotations

import logging
import time

import torch

from se3t.device import peak_memory
from se3t.train import distributed as D
from se3t.train.records import MetricsWriter

__all__ = ["RunLog"]

log = logging.getLogger("se3t.train")


class RunLog:
    """The Trainer's records, as a base of ``Trainer`` (its methods read the run's state)."""

    def _log_start(self) -> None:
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
            self.cfg.train.precision,
            "from store" if self.basis_store else "computed",
        )

    def _write_step(self, metrics: MetricsWriter, window, tick: float, bar, lr: float) -> float:
        """A ``kind: step`` record of the steps since ``tick`` (``window``: loss sum, molecules,
        micro-batches, summed over the ranks here and then zeroed). Returns the time now."""
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
            "peak_mem_bytes": peak_memory(self.device),
            "device_name": self.device_name,
            "time": time.time(),
        }
        metrics.write(rec)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
        window.zero_()
        return now

    def _write_val(self, metrics: MetricsWriter, val_mae: dict[str, float], seconds: float):
        """A ``kind: val`` record: validation between epochs."""
        rec = {"kind": "val", "epoch": self.epoch, "step": self.step, "val_mae": val_mae}
        metrics.write({**rec, "eval_s": seconds, "time": time.time()})
        if self.env.is_main:
            log.info("step %d: val MAE %s (%.1f s)", self.step, fmt(val_mae), seconds)

    def _write_epoch(
        self,
        metrics: MetricsWriter,
        mae: torch.Tensor,
        train_mae: dict[str, float],
        val_mae: dict[str, float],
    ) -> None:
        """A ``kind: epoch`` record; ``mae [T]``: the epoch's training MAE in target units."""
        std = self.train_set.std.double()
        rec = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "loss": float((mae / std).mean()),
            "lr": self.optimizer.param_groups[0]["lr"],
            "peak_mem_bytes": peak_memory(self.device),
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
                fmt(train_mae),
                fmt(val_mae) or "-",
            )


def fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())
