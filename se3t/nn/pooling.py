"""Graph pooling of degree-0 node features: max or mean over each molecule's atoms (invariant)."""

from __future__ import annotations

from torch import Tensor, nn

from se3t.choices import Pooling
from se3t.nn.graph_ops import scatter_max, scatter_mean

__all__ = ["GraphPooling"]


class GraphPooling(nn.Module):
    """``{0: [N, C, 1]}`` -> ``[B, C]`` by ``pool`` ("max" or "mean") over ``node_graph``."""

    def __init__(self, pool: str = "max"):
        super().__init__()
        if pool not in [p.value for p in Pooling]:
            raise ValueError(f"GraphPooling: pool must be 'max' or 'mean', got {pool!r}")
        self.pool = Pooling(pool)

    def extra_repr(self) -> str:
        return self.pool

    def forward(self, feats: dict[int, Tensor], node_graph: Tensor, num_graphs: int) -> Tensor:
        if 0 not in feats:
            raise ValueError("GraphPooling: needs degree-0 features")
        x = feats[0].squeeze(-1)  # [N, C]
        fn = scatter_max if self.pool == "max" else scatter_mean
        return fn(x, node_graph, num_graphs)  # [B, C]
