"""A Trainer's checkpointed state, written and read back: everything a resumed run needs to
continue bit for bit (model, optimizer, scheduler, scaler, RNG states, the position in the
epoch and its sampler, running training-MAE sums, best validation score, config)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from se3t.config import to_dict
from se3t.data.provenance import dataset_record
from se3t.train.checkpoint import capture_rng, restore_rng

__all__ = ["TrainerState"]

log = logging.getLogger("se3t.train")


class TrainerState:
    """The checkpointed state, as a base of ``Trainer``."""

    def state(self) -> dict[str, Any]:
        """The checkpoint of ``tr`` as it stands (at an optimizer-step boundary)."""
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

    def _restore(self, s: dict[str, Any]) -> None:
        """Put checkpoint ``s`` back into ``tr``, built from the current config."""
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
