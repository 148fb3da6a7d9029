"""What a training run reports as it goes: its start line in ``train.log``, and the step,
validation and epoch records of ``metrics.jsonl`` (with their log lines)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from se3t.device import peak_memory
from se3t.train import distributed as D
from se3t.train.records import MetricsWriter

if TYPE_CHECKING:
    from se3t.train.loop import Trainer

__all__ = ["log_start", "write_epoch", "write_step", "write_val"]

log = logging.getLogger("se3t.train")


def log_start(tr: Trainer) -> None:
    where = "starting"
    if tr.resume_state is not None:
        where = f"resuming from {tr.resume_path} at epoch {tr.epoch}, step {tr.step}"
    log.info(
        "%s: %s; %d train / %d val molecules, %d steps per epoch, %d steps in all, "
        "world size %d (%s), device %s, precision %s, bases %s",
        tr.run_dir,
        where,
        len(tr.train_set),
        len(tr.val_set),
        tr.steps_per_epoch,
        tr.total_steps,
        tr.env.world_size,
        tr.env.source,
        tr.device,
        tr.cfg.train.precision,
        "from store" if tr.basis_store else "computed",
    )


def write_step(tr: Trainer, metrics: MetricsWriter, window, tick: float, bar, lr: float) -> float:
    """A ``kind: step`` record of the steps since ``tick`` (``window``: loss sum, molecules,
    micro-batches, summed over the ranks here and then zeroed). Returns the time now."""
    D.all_reduce_(window)
    now = time.perf_counter()
    loss = float(window[0] / window[1].clamp(min=1))
    rec = {
        "kind": "step",
        "epoch": tr.epoch,
        "step": tr.step,
        "loss": loss,
        "lr": lr,
        "mol_per_s": float(window[1]) / max(now - tick, 1e-9),
        "peak_mem_bytes": peak_memory(tr.device),
        "device_name": tr.device_name,
        "time": time.time(),
    }
    metrics.write(rec)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
    window.zero_()
    return now


def write_val(tr: Trainer, metrics: MetricsWriter, val_mae: dict[str, float], seconds: float):
    """A ``kind: val`` record: validation between epochs."""
    rec = {"kind": "val", "epoch": tr.epoch, "step": tr.step, "val_mae": val_mae}
    metrics.write({**rec, "eval_s": seconds, "time": time.time()})
    if tr.env.is_main:
        log.info("step %d: val MAE %s (%.1f s)", tr.step, fmt(val_mae), seconds)


def write_epoch(
    tr: Trainer,
    metrics: MetricsWriter,
    mae: torch.Tensor,
    train_mae: dict[str, float],
    val_mae: dict[str, float],
) -> None:
    """A ``kind: epoch`` record; ``mae [T]``: the epoch's training MAE in target units."""
    std = tr.train_set.std.double()
    rec = {
        "kind": "epoch",
        "epoch": tr.epoch,
        "step": tr.step,
        "loss": float((mae / std).mean()),
        "lr": tr.optimizer.param_groups[0]["lr"],
        "peak_mem_bytes": peak_memory(tr.device),
        "train_mae": train_mae,
        "val_mae": val_mae,
        "device_name": tr.device_name,
        "time": time.time(),
    }
    metrics.write(rec)
    if tr.env.is_main:
        log.info(
            "epoch %d (step %d): train MAE %s, val MAE %s",
            tr.epoch,
            tr.step,
            fmt(train_mae),
            fmt(val_mae) or "-",
        )


def fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())
