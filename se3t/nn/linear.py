"""``LinearSE3``: per-degree channel mixing ``y_d = W_d x_d`` (equivariant: acts on channels)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3t.so3.fiber import Fiber

__all__ = ["LinearSE3"]


class LinearSE3(nn.Module):
    """``{d: [N, C_in_d, 2d+1]} -> {d: [N, C_out_d, 2d+1]}`` for every degree of ``fiber_out``
    (each must be in ``fiber_in``); weights ``[C_out, C_in] / sqrt(C_in)``, no bias (a bias
    would break equivariance for degrees > 0)."""

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber):
        super().__init__()
        self.fiber_in, self.fiber_out = Fiber(fiber_in), Fiber(fiber_out)
        missing = [d for d in self.fiber_out if d not in self.fiber_in]
        if missing:
            raise ValueError(
                f"LinearSE3: output degrees {missing} of {self.fiber_out} "
                f"not in input {self.fiber_in}"
            )
        self.weights = nn.ParameterDict(
            {
                str(d): nn.Parameter(torch.randn(c, self.fiber_in[d]) / self.fiber_in[d] ** 0.5)
                for d, c in self.fiber_out.items()
            }
        )

    def extra_repr(self) -> str:
        return f"{self.fiber_in} -> {self.fiber_out}"

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        self.fiber_in.check(feats, "LinearSE3 input")
        # [C_out, C_in] @ [N, C_in, 2d+1] -> [N, C_out, 2d+1]
        return {int(d): torch.matmul(w, feats[int(d)]) for d, w in self.weights.items()}
