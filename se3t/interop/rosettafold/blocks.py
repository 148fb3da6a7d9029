"""The vendored ``SE3Transformer`` as se3t layers: attention blocks with norms, then the final
convolution or linear layer, at the fuse levels and with the autocast rules of each copy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from se3t.choices import Fusion, Kernel, NvidiaFuseLevel
from se3t.graph import Graph
from se3t.nn.attention import AttentionBlockSE3, AttentionSE3
from se3t.nn.conv import ConvSE3, nvidia_fusion
from se3t.nn.kernel import KernelState
from se3t.nn.linear import LinearSE3
from se3t.nn.norm import NormSE3
from se3t.so3.basis import compute_basis_flat
from se3t.so3.fiber import Fiber

VARIANTS = ("rfdiffusion", "rf2", "rfaa")
FINAL_LAYERS = ("conv", "lin")
POPULATE_EDGE = ("lin", "arcsin", "log", "zero")


@dataclass(frozen=True)
class Variant:
    final_layer: str
    populate_edge: str
    nvidia_levels: bool  # RF2: NVIDIA's rule (low_memory -> NONE; final conv at that level)
    autocast_off: str  # "" (the caller's), "block" (RF2), "attention" (RFAA)


VARIANT_SETTINGS = {
    "rfdiffusion": Variant("conv", "lin", nvidia_levels=False, autocast_off=""),
    "rf2": Variant("lin", "arcsin", nvidia_levels=True, autocast_off="block"),
    "rfaa": Variant("lin", "arcsin", nvidia_levels=False, autocast_off="attention"),
}


def fuse_levels(
    variant: Variant, tensor_cores: bool, low_memory: bool
) -> tuple[NvidiaFuseLevel, NvidiaFuseLevel]:
    """The attention blocks' and the final convolution's fuse levels, as the copy picks them."""
    if variant.nvidia_levels:
        level = (
            NvidiaFuseLevel.NONE
            if low_memory
            else (NvidiaFuseLevel.FULL if tensor_cores else NvidiaFuseLevel.PARTIAL)
        )
        return level, level
    full = tensor_cores and not low_memory
    return (NvidiaFuseLevel.FULL if full else NvidiaFuseLevel.PARTIAL), NvidiaFuseLevel.FULL


def _float32_at_least(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _Float32Query(LinearSE3):
    """RFAA's query projection: autocast off, float32 at least."""

    def forward(self, feats):
        x = next(iter(feats.values()))
        with torch.autocast(x.device.type, enabled=False):
            w_dtype = next(iter(self.weights.values())).dtype
            return super().forward(
                {d: v.to(torch.promote_types(v.dtype, w_dtype)) for d, v in feats.items()}
            )


class _Float32Attention(AttentionSE3):
    """RFAA's attention: logits, softmax and weighted sum with autocast off, float32 at least."""

    def forward(self, value, key, query, graph):
        x = next(iter(value.values()))
        with torch.autocast(x.device.type, enabled=False):
            f = {
                n: {d: _float32_at_least(v) for d, v in t.items()}
                for n, t in (("v", value), ("k", key), ("q", query))
            }
            return super().forward(f["v"], f["k"], f["q"], graph)


class Blocks(nn.Module):
    """The vendored ``SE3Transformer`` (no pooling, no return type): attention blocks with
    norms, then the final convolution or linear layer."""

    def __init__(
        self,
        *,
        fiber_in: Fiber,
        fiber_hidden: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber,
        num_layers: int,
        num_heads: int,
        channels_div: dict[int, int],
        variant: Variant,
        final_layer: str,
        populate_edge: str,
        sum_over_edge: bool,
        norm: bool,
        use_layer_norm: bool,
        tensor_cores: bool,
        low_memory: bool,
        kernel: Kernel,
    ):
        super().__init__()
        self.fiber_in, self.fiber_hidden, self.fiber_out = fiber_in, fiber_hidden, fiber_out
        self.fiber_edge, self.channels_div = fiber_edge, channels_div
        self.final_layer, self.populate_edge, self.kernel = final_layer, populate_edge, kernel
        self.max_degree = max(f.max_degree for f in (fiber_in, fiber_hidden, fiber_out))
        self.levels = fuse_levels(variant, tensor_cores, low_memory)
        self._common = dict(max_degree=self.max_degree, layer_norm=use_layer_norm)
        blocks = []
        f = fiber_in
        for _ in range(num_layers):
            att = self._attention_block(f, num_heads, variant)
            blocks.append(nn.ModuleList([att, NormSE3(fiber_hidden) if norm else nn.Identity()]))
            f = fiber_hidden
        self.blocks = nn.ModuleList(blocks)
        self.final = self._final_layer(f, sum_over_edge)

    def _layout(self, fin: Fiber, fout: Fiber, level: NvidiaFuseLevel) -> dict:
        fu = nvidia_fusion(fin, fout, self.fiber_edge, self.max_degree, level)
        return dict(fusion=fu, unit_scalar_kernel=fu is Fusion.PAIRWISE)

    def _attention_block(self, f: Fiber, num_heads: int, variant: Variant) -> AttentionBlockSE3:
        """One attention block on input fiber ``f``, with the copy's fibers and precisions."""
        hidden, edge, level, common = (
            self.fiber_hidden,
            self.fiber_edge,
            self.levels[0],
            self._common,
        )
        value = Fiber({d: c // self.channels_div[d] for d, c in hidden.items()})
        key = Fiber({d: c for d, c in value.items() if d in f})
        divs = set(self.channels_div.values())
        att = AttentionBlockSE3(
            f,
            hidden,
            edge,
            num_heads=num_heads,
            channels_div=divs.pop() if len(divs) == 1 else 1,
            **common,
            **self._layout(f, value + key, level),
        )
        if (att.value_fiber, att.key_fiber) != (value, key):
            # per-degree divisors (RFAA's option): se3t's block takes one divisor, so its
            # fibers and the layers built on them are replaced
            att.value_fiber, att.key_fiber = value, key
            kv = value + key
            att.to_key_value = ConvSE3(
                f, kv, edge, pool=False, **common, **self._layout(f, kv, level)
            )
            att.to_query = LinearSE3(f, key)
            att.attention = AttentionSE3(num_heads, key, value)
            cat = value + f
            att.project = LinearSE3(Fiber({d: cat[d] for d in hidden}), hidden)
        if variant.autocast_off == "attention":
            att.to_query = _Float32Query(f, key)
            att.attention = _Float32Attention(num_heads, key, value)
        return att

    def _final_layer(self, f: Fiber, sum_over_edge: bool) -> nn.Module:
        if self.final_layer != "conv":
            return LinearSE3(f, self.fiber_out)
        return ConvSE3(
            f,
            self.fiber_out,
            self.fiber_edge,
            pool=True,
            self_interaction=True,
            self_interaction_per_edge=True,
            aggregate="sum" if sum_over_edge else "mean",
            **self._common,
            **self._layout(f, self.fiber_out, self.levels[1]),
        )

    def edge_length(self, rel_pos: Tensor) -> Tensor:
        """The radial profiles' last input, ``[E, 1]``, as the copy populates it."""
        r = rel_pos.norm(dim=-1, keepdim=True)
        if self.populate_edge == "lin":
            return r
        if self.populate_edge == "arcsin":
            r = torch.maximum(r, torch.zeros_like(r) + 4.0) - 4.0
            return torch.arcsinh(r) / 3.0
        if self.populate_edge == "log":
            return torch.log(1 + r)
        return torch.zeros_like(r)

    def forward(self, graph: Graph, rel_pos: Tensor, feats: dict[int, Tensor], edge0: Tensor):
        """``feats {d: [N, C, 2d+1]}``, ``edge0 [E, F]`` degree-0 edge features ->
        ``{d: [N, C_out, 2d+1]}``."""
        dtype = edge0.dtype
        with torch.no_grad():
            # the vendored get_basis(compute_gradients=False): no gradient through the basis
            basis = compute_basis_flat(rel_pos.detach(), self.max_degree, dtype=dtype)
        edge_scalars = torch.cat([edge0, self.edge_length(rel_pos).to(dtype)], dim=1)
        kernel = self.kernel
        if kernel is Kernel.AUTO and edge0.device.type == "cpu" and torch.is_grad_enabled():
            # on these blocks' narrow fibers the C++ kernel's backward pass is no faster than
            # the torch evaluation (3.5 s against 3.3 s for RFdiffusion's main block at L = 600,
            # docs/kernel.md); its forward pass, which never writes the radial weights, serves
            # inference
            kernel = Kernel.TORCH
        state = KernelState(basis, kernel)
        for att, norm in self.blocks:
            feats = norm(att(feats, graph, basis, edge_scalars, None, state))
        if self.final_layer == "conv":
            return self.final(feats, graph, basis, edge_scalars, None, state)
        return self.final(feats)
