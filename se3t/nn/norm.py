"""``NormSE3``: equivariant norm nonlinearity (Fuchs et al. 2020, sec. 3.3).

``y_d = phi(LN(|x_d|)) * x_d / |x_d|`` per degree ``d`` and channel, with ``|x_d|`` the norm over
``m`` (rotation invariant, clamped to 2^-24), ``LN`` a layer norm over the channels of that
degree and ``phi`` ReLU. When all degrees share a channel count, the layer norms of all degrees
run as ONE group norm (groups = degrees) on the stacked norms: the fused path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3t.so3.fiber import Fiber

__all__ = ["NormSE3"]

NORM_CLAMP = 2**-24


class NormSE3(nn.Module):
    def __init__(
        self, fiber: Fiber, nonlinearity: nn.Module | None = None, fused: bool | None = None
    ):
        super().__init__()
        self.fiber = Fiber(fiber)
        self.nonlinearity = nonlinearity if nonlinearity is not None else nn.ReLU()
        uniform = self.fiber.uniform_channels is not None
        if fused and not uniform:
            raise ValueError(
                f"NormSE3: the fused path needs equal channels per degree, got {self.fiber}"
            )
        self.fused = uniform if fused is None else fused
        if self.fused:
            n = len(self.fiber)
            self.group_norm = nn.GroupNorm(n, n * self.fiber.uniform_channels)
        else:
            self.layer_norms = nn.ModuleDict(
                {str(d): nn.LayerNorm(c) for d, c in self.fiber.items()}
            )

    def extra_repr(self) -> str:
        return f"{self.fiber}, fused={self.fused}"

    def forward(self, feats: dict[int, Tensor]) -> dict[int, Tensor]:
        self.fiber.check(feats, "NormSE3 input")
        degrees = self.fiber.degrees
        norms = {d: feats[d].norm(dim=-1, keepdim=True).clamp(min=NORM_CLAMP) for d in degrees}
        if self.fused:
            stacked = torch.cat([norms[d].squeeze(-1) for d in degrees], dim=1)  # [N, D*C]
            new = self.nonlinearity(self.group_norm(stacked))
            new = new.unsqueeze(-1).split(self.fiber.uniform_channels, dim=1)  # D x [N, C, 1]
            new = dict(zip(degrees, new, strict=True))
        else:
            new = {
                d: self.nonlinearity(self.layer_norms[str(d)](norms[d].squeeze(-1))).unsqueeze(-1)
                for d in degrees
            }
        return {d: (new[d] / norms[d]).to(feats[d].dtype) * feats[d] for d in degrees}
