"""Training never finishes on non-finite numbers, and its records are strict JSON.

A non-finite loss or gradient (a learning rate of inf, NaN positions, an exploding run) must
not train on to exit 0, writing bare ``NaN`` into ``metrics.jsonl``, which strict JSON parsers
reject. :class:`NonFiniteGuard` checks every optimizer step before it is taken: with
``train.nan_policy=stop`` (the default) the run stops with :class:`NonFiniteError` (exit 2)
before the step, so nothing is saved over the last good checkpoint; with ``skip`` the step is
dropped, as AMP's gradient scaler drops an overflowing one, and the run stops only after
``MAX_SKIPS`` skipped steps in a row. Parameters that became non-finite after a step (a finite
gradient times an infinite rate) always stop the run. :func:`strict_record` makes a metrics
record strict JSON: a non-finite number becomes ``null`` and its key is listed in
``"nonfinite"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import torch

from se3t.choices import NanPolicy
from se3t.config import ConfigError
from se3t.errors import Se3tError
from se3t.train import distributed as D

__all__ = ["NAN_POLICIES", "NonFiniteError", "NonFiniteGuard", "strict_record"]

NAN_POLICIES = tuple(p.value for p in NanPolicy)
MAX_SKIPS = 10  # skipped steps in a row after which even ``skip`` stops: the run is not healing

log = logging.getLogger("se3t.train")


class NonFiniteError(Se3tError):
    """Training produced a non-finite loss, gradient or parameter."""


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    maxima = [t.detach().abs().amax() for t in tensors if t.numel()]
    if not maxima:
        return True
    # one flag for all ranks: they must take (or skip) the step together
    flag = torch.tensor([0.0 if bool(torch.isfinite(torch.stack(maxima)).all()) else 1.0])
    return not bool(D.all_reduce_(flag, op="max").item())


class NonFiniteGuard:
    """Checks a run's steps for non-finite numbers (see the module docstring)."""

    def __init__(self, policy: str, *, amp_scaler: bool, checkpoint: str) -> None:
        if policy not in NAN_POLICIES:
            raise ConfigError(
                f"config key 'train.nan_policy': {policy!r} is not one of {list(NAN_POLICIES)}"
            )
        self.policy = policy
        self.amp_scaler = amp_scaler  # fp16's scaler already skips overflowing gradients
        self.checkpoint = checkpoint
        self.skipped_in_a_row = 0
        self.skipped = 0

    def _fail(self, what: str, step: int, epoch: int) -> NonFiniteError:
        return NonFiniteError(
            f"training stopped at epoch {epoch}, step {step}: {what}. Nothing was saved over "
            f"the last good checkpoint ({self.checkpoint}). Check train.lr and the dataset "
            "(se3t data info --verify); train.nan_policy=skip drops such steps instead"
        )

    def step_allowed(
        self, loss: torch.Tensor, model: torch.nn.Module, step: int, epoch: int
    ) -> bool:
        """Before the optimizer step: True to take it; False to skip it (``skip`` policy, the
        gradients should then be zeroed); NonFiniteError to stop."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if _all_finite([loss.reshape(1)]) and (self.amp_scaler or _all_finite(grads)):
            self.skipped_in_a_row = 0
            return True
        what = (
            f"the loss is {float(loss.detach()):g}"
            if not math.isfinite(float(loss.detach()))
            else ("a gradient is not finite")
        )
        if self.policy == "stop":
            raise self._fail(what, step + 1, epoch)
        self.skipped += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row > MAX_SKIPS:
            raise self._fail(f"{what}, {self.skipped_in_a_row} steps in a row", step + 1, epoch)
        log.warning("step %d skipped (train.nan_policy=skip): %s", step + 1, what)
        return False

    def check_parameters(self, model: torch.nn.Module, step: int, epoch: int) -> None:
        """After the optimizer step: NonFiniteError when a parameter is no longer finite."""
        if not _all_finite(model.parameters()):
            raise self._fail("a parameter became non-finite after the update", step, epoch)


def strict_record(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` with every non-finite float (nested dicts too) replaced by None, and the dotted
    keys of those listed under ``"nonfinite"``: strict JSON, and the loss of information said."""
    bad: list[str] = []

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
            return None
        return value

    out = clean(rec, "")
    if bad:
        out["nonfinite"] = bad
    return out
