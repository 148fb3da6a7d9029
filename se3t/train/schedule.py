"""Optimizers and the learning-rate schedule (linear warm-up, then cosine decay or constant).

``lr(step) = lr * f(step)`` with, for ``W`` warm-up steps and ``T`` total optimizer steps,

- warm-up, ``step < W``: ``f = (step + 1) / W``;
- cosine: ``f = m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (step - W) / max(1, T - W)``
  clipped to [0, 1] and ``m = min_lr / lr``, so it ends at ``min_lr``;
- constant: ``f = 1``.
"""

from __future__ import annotations

import math

import torch

from se3t.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with momentum, with ``cfg.weight_decay``."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def lr_factor(step: int, *, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """The multiplier ``f(step)`` of the module docstring."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


class _Factor:
    """Picklable schedule (LambdaLR keeps callables with a ``__dict__`` in its state)."""

    def __init__(self, warmup: int, total: int, kind: str, min_ratio: float) -> None:
        # a plain str: the checkpoint keeps this object, and loads with weights_only (no enums)
        self.warmup, self.total, self.kind, self.min_ratio = warmup, total, str(kind), min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(
            step, warmup=self.warmup, total=self.total, kind=self.kind, min_ratio=self.min_ratio
        )


def build_scheduler(optimizer, cfg: TrainConfig, *, steps_per_epoch: int, total_steps: int):
    """LambdaLR stepping once per optimizer step."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    min_ratio = min(1.0, cfg.min_lr / cfg.lr)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _Factor(warmup, total_steps, cfg.scheduler, min_ratio)
    )
