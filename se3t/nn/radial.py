"""Radial profiles: the learned functions ``phi_J(|x|, edge features)`` of the TFN kernel.

``RadialProfile`` is the MLP ``in -> H -> H -> out`` with optional layer norm and ReLU after each
hidden layer and NO bias in the last layer (as in the SE(3)-Transformer and NVIDIA's version):
a bias there would give the kernel a constant part independent of the edge, and keeping the
last layer linear lets the fused convolution fold it into its contraction (``se3t.nn.kernel``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RadialProfile"]


class RadialProfile(nn.Module):
    """``hidden(edge_scalars) [E, H]`` then ``last: H -> out_features`` (no bias).

    ``forward`` returns the full radial output ``[E, out_features]``; fused convolutions call
    :meth:`hidden` and apply ``last.weight`` themselves, chunk by chunk.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: int = 32, layer_norm: bool = True
    ):
        super().__init__()
        for name, v in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("hidden", hidden),
        ):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"RadialProfile: {name} must be a positive int, got {v!r}")
        self.in_features, self.out_features, self.hidden_features = (
            in_features,
            out_features,
            hidden,
        )
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.LayerNorm(hidden) if layer_norm else nn.Identity(),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden) if layer_norm else nn.Identity(),
            nn.ReLU(),
        )
        self.last = nn.Linear(hidden, out_features, bias=False)

    def hidden(self, edge_scalars: Tensor) -> Tensor:
        return self.net(edge_scalars)  # [E, H]

    def forward(self, edge_scalars: Tensor) -> Tensor:
        return self.last(self.net(edge_scalars))  # [E, out_features]

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.hidden_features} -> {self.out_features}"
