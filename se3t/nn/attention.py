"""SE(3)-equivariant graph self-attention (Fuchs et al. 2020, eq. 10; NVIDIA's layout).

For edge ``e = (s -> t)`` and head ``h``: key ``k_e`` and value ``v_e`` are TFN messages from
``s`` (ONE convolution with the key and value channels side by side, split afterwards — half
the radial profiles and contractions of two convolutions), the query ``q_t`` a linear map of
``t``'s own features. ``alpha_e = softmax_{e -> t}(<q_t, k_e>_h / sqrt(F_key))`` over the
incoming edges of ``t``; the output is ``sum_e alpha_e v_e``. Inner products run over channels
and ``m`` of every degree (invariant), so attention weights are invariant and outputs
equivariant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from se3t.choices import Fusion
from se3t.graph import Graph
from se3t.nn.conv import ConvSE3
from se3t.nn.graph_ops import edge_softmax, gather, scatter_sum
from se3t.nn.linear import LinearSE3
from se3t.so3.fiber import Fiber

__all__ = ["AttentionBlockSE3", "AttentionSE3"]


class AttentionSE3(nn.Module):
    """Multi-head dot-product attention on per-edge keys/values and per-node queries."""

    def __init__(self, num_heads: int, key_fiber: Fiber, value_fiber: Fiber):
        super().__init__()
        self.num_heads, self.key_fiber, self.value_fiber = (
            num_heads,
            Fiber(key_fiber),
            Fiber(value_fiber),
        )
        for name, f in (("key", self.key_fiber), ("value", self.value_fiber)):
            bad = {d: c for d, c in f.items() if c % num_heads}
            if bad:
                raise ValueError(
                    f"AttentionSE3: {name} channels {bad} not divisible by {num_heads} heads"
                )

    def _heads(self, feats: dict[int, Tensor]) -> Tensor:
        # {d: [X, C, 2d+1]} -> [X, heads, F / heads]; sizes spelled out: X may be 0 (no edges)
        return torch.cat(
            [
                feats[d].reshape(
                    len(feats[d]), self.num_heads, feats[d].shape[1:].numel() // self.num_heads
                )
                for d in self.key_fiber
            ],
            dim=-1,
        )

    def forward(self, value, key, query, graph: Graph) -> dict[int, Tensor]:
        k = self._heads(key)  # [E, H, F/H]
        q = self._heads(query)  # [N, H, F/H]
        logits = (k * gather(q, graph.dst).to(k.dtype)).sum(
            -1
        ) / self.key_fiber.num_features**0.5  # [E, H]
        alpha = edge_softmax(logits, graph.dst, graph.num_nodes)  # [E, H]
        out = {}
        for d, v in value.items():
            E, C, M = v.shape
            weighted = (
                v.view(E, self.num_heads, C // self.num_heads, M)
                * alpha.to(v.dtype)[..., None, None]
            )
            out[d] = scatter_sum(weighted.view(E, C, M), graph.dst, graph.num_nodes)  # [N, C, 2d+1]
        return out


class AttentionBlockSE3(nn.Module):
    """Attention layer ``fiber_in -> fiber_out``: fused key/value TFN conv, query linear,
    attention, then a linear projection of ``[attention output, input]`` (a skip connection by
    concatenation, as in NVIDIA's block)."""

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber | None = None,
        *,
        num_heads: int = 8,
        channels_div: int = 2,
        max_degree: int,
        layer_norm: bool = True,
        radial_hidden: int = 32,
        fusion: Fusion | str = Fusion.AUTO,
        chunk_elements: int | None = None,
        unit_scalar_kernel: bool = False,
    ):
        super().__init__()
        self.fiber_in, self.fiber_out = Fiber(fiber_in), Fiber(fiber_out)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(
                f"AttentionBlockSE3: num_heads must be a positive int, got {num_heads!r}"
            )
        self.value_fiber = self.fiber_out.scaled(channels_div)
        self.key_fiber = Fiber({d: c for d, c in self.value_fiber.items() if d in self.fiber_in})
        self.to_key_value = ConvSE3(
            self.fiber_in,
            self.value_fiber + self.key_fiber,
            fiber_edge,
            max_degree=max_degree,
            pool=False,
            layer_norm=layer_norm,
            radial_hidden=radial_hidden,
            fusion=fusion,
            chunk_elements=chunk_elements,
            unit_scalar_kernel=unit_scalar_kernel,
        )
        self.to_query = LinearSE3(self.fiber_in, self.key_fiber)
        self.attention = AttentionSE3(num_heads, self.key_fiber, self.value_fiber)
        cat = self.value_fiber + self.fiber_in
        self.project = LinearSE3(Fiber({d: cat[d] for d in self.fiber_out}), self.fiber_out)

    def extra_repr(self) -> str:
        return f"{self.fiber_in} -> {self.fiber_out}, heads={self.attention.num_heads}"

    def forward(self, feats, graph: Graph, basis: Tensor, edge_scalars: Tensor, edge_feats=None):
        kv = self.to_key_value(
            feats, graph, basis, edge_scalars, edge_feats
        )  # {d: [E, Cv+Ck, 2d+1]}
        value = {d: kv[d][:, : self.value_fiber[d]] for d in self.value_fiber}
        key = {d: kv[d][:, self.value_fiber[d] :] for d in self.key_fiber}
        query = self.to_query(feats)  # {d: [N, Ck, 2d+1]}
        z = self.attention(value, key, query, graph)  # {d: [N, Cv, 2d+1]}
        cat = {
            d: torch.cat([z[d], feats[d].to(z[d].dtype)], dim=1) if d in feats else z[d]
            for d in self.fiber_out
        }
        return self.project(cat)  # {d: [N, C_out, 2d+1]}
