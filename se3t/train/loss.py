"""The training loss's per-target errors with missing targets masked out.

A dataset of users' molecules may lack a property for some molecules (stored as NaN). Such an
entry contributes nothing: its error is 0 and it passes no gradient, and it is not counted in
the per-target means of the metrics (``present``). The missing target is replaced by the
detached prediction rather than masked after the subtraction, because ``where`` after a NaN
would still send NaN into the backward pass (0 * NaN). Without missing values the result is
``|pred - y|`` exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_abs_error"]


def masked_abs_error(pred: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(``|pred - y|`` [B, T] with 0 where ``y`` is NaN, ``present`` [B, T] bool)."""
    present = ~torch.isnan(y)
    return (pred - torch.where(present, y, pred.detach())).abs(), present
