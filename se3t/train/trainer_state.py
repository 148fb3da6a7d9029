"""A Trainer's checkpointed state, written and read back: everything a resumed run needs to
continue bit for bit (model, optimizer, scheduler, scaler, RNG states, the position in the
epoch and its sampler, running training-MAE sums, best validation score, config)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from se3t.config import to_dict
from se3t.data.provenance import dataset_record
from se3t.train.checkpoint import capture_rng, restore_rng

if TYPE_CHECKING:
    from se3t.train.loop import Trainer

__all__ = ["restore_trainer", "trainer_state"]

log = logging.getLogger("se3t.train")


def trainer_state(tr: Trainer) -> dict[str, Any]:
    """The checkpoint of ``tr`` as it stands (at an optimizer-step boundary)."""
    return {
        "model": tr.model.state_dict(),
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else {},
        "epoch": tr.epoch,
        "batch_in_epoch": tr.batch_in_epoch,
        "sampler": {
            "kind": tr.sampler_kind,
            "epoch": tr.epoch,
            "start": tr.batch_in_epoch,
            "buffer_chunks": int(tr.cfg.basis.buffer_chunks),
        },
        "step": tr.step,
        "best_val": tr.best_val,
        "train_sums": tr.train_sums.clone(),
        "rng": capture_rng(),
        "config": to_dict(tr.cfg),
        "target_stats": {
            "targets": list(tr.train_set.targets),
            "mean": tr.train_set.mean.clone(),
            "std": tr.train_set.std.clone(),
        },
        "world_size": tr.env.world_size,
        "encoding": tr.train_set.encoding.to_dict(),
        "dataset": dataset_record(tr.train_set),  # evaluate checks it (se3t.data.provenance)
    }


def restore_trainer(tr: Trainer, s: dict[str, Any]) -> None:
    """Put checkpoint ``s`` back into ``tr``, built from the current config."""
    tr.model.load_state_dict(s["model"])
    tr.optimizer.load_state_dict(s["optimizer"])
    tr.scheduler.load_state_dict(s["scheduler"])
    # the schedule's length follows the current config (more epochs may be asked for)
    tr.scheduler.lr_lambdas[0].total = tr.total_steps
    if s.get("scaler"):
        tr.scaler.load_state_dict(s["scaler"])
    tr.epoch, tr.batch_in_epoch, tr.step = s["epoch"], s["batch_in_epoch"], s["step"]
    was = (s.get("sampler") or {}).get("kind", "random")
    if was != tr.sampler_kind:
        log.warning(
            "%s was written with %s sampling, this run samples %s (basis.read): the "
            "rest of epoch %d is not the batches the run had left",
            tr.resume_path,
            was,
            tr.sampler_kind,
            tr.epoch,
        )
    tr.best_val = s["best_val"]
    if s.get("train_sums") is not None:
        tr.train_sums = s["train_sums"].to(torch.float64)
    restore_rng(s["rng"])
