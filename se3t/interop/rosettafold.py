"""The RoseTTAFold family's SE(3)-Transformer blocks on se3t: no DGL, any recent torch.

RFdiffusion, RoseTTAFold2 (RF2) and RoseTTAFold All-Atom (RFAA) vendor modified copies of
NVIDIA's SE3Transformer and call it through an ``SE3TransformerWrapper`` on residue graphs built
with DGL (docs/rosettafold.md). This module is a drop-in for both:

- :class:`SE3TransformerWrapper`: their constructor (``num_layers``, ``num_channels``,
  ``num_degrees``, ``n_heads``, ``div``, ``l0_in_features``, ``l0_out_features``,
  ``l1_in_features``, ``l1_out_features``, ``num_edge_features``) and ``forward(G,
  type_0_features, type_1_features=None, edge_features=None) -> {"0": ..., "1": ...}``,
  computing the vendored code's function; ``variant`` picks whose copy ("rfdiffusion", "rf2",
  "rfaa"). ``G`` is a :class:`ResidueGraph` or a ``DGLGraph`` with ``edata["rel_pos"]``.
  ``state_dict()`` / ``load_state_dict()`` use the vendored keys and layouts, also when the
  module sits inside a whole RF model under any prefix, so an RF checkpoint loads unchanged.
- :func:`make_full_graph`, :func:`make_topk_graph`: their graph builders, returning a
  :class:`ResidueGraph` with the same edges in the same order.

What differs between the copies, and how each is reproduced here:

- final layer: RFdiffusion ends with NVIDIA's TFN convolution (self-interaction added per
  incoming edge); RF2 and RFAA with a per-node linear layer (``final_layer="lin"``);
- edge length fed to the radial profiles: ``|x|`` (RFdiffusion) or ``asinh(max(|x| - 4, 0)) / 3``
  (``populate_edge="arcsin"``, RF2, RFAA); also ``"log"`` (``log(1 + |x|)``) and ``"zero"``;
- fuse levels, which fix which degree pairs share a radial profile (the parameter layout):
  RFdiffusion and RFAA run attention blocks FULL with ``tensor_cores and not low_memory``, else
  PARTIAL, and their final convolution at FULL; RF2 follows NVIDIA (``low_memory`` -> NONE).
  Each layer then downgrades on its fibers as NVIDIA's does (:func:`se3t.nn.conv.nvidia_fusion`).
  RFdiffusion's and RFAA's per-input convolutions are built "FULL" only to skip an unpadding
  slice: the same function as NVIDIA's PARTIAL;
- RFAA: ``sum_over_edge=False`` averages the final convolution's messages over incoming edges;
  ``channels_div`` may be a per-degree dict; the attention (logits, softmax, weighted sum) and
  the queries run with autocast off, in float32 at least. RF2 runs the whole block with
  autocast off.

Everything NVIDIA-specific (Clebsch-Gordan signs of e3nn 0.3.3, the radial rows' order, the
``(0, 0)`` pairwise kernel without ``Y_0``, bases without gradient) is what
:mod:`se3t.interop.nvidia` already reproduces; this module reuses its key mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from se3t.choices import Fusion, Kernel, NvidiaFuseLevel
from se3t.graph import Graph
from se3t.interop.nvidia import Entry, conv_entries, nv_order
from se3t.nn.attention import AttentionBlockSE3, AttentionSE3
from se3t.nn.conv import ConvSE3, nvidia_fusion
from se3t.nn.kernel import KernelState
from se3t.nn.linear import LinearSE3
from se3t.nn.norm import NormSE3
from se3t.so3.basis import compute_basis_flat
from se3t.so3.fiber import Fiber

__all__ = [
    "VARIANTS",
    "ResidueGraph",
    "SE3TransformerWrapper",
    "make_full_graph",
    "make_topk_graph",
]

VARIANTS = ("rfdiffusion", "rf2", "rfaa")
FINAL_LAYERS = ("conv", "lin")
POPULATE_EDGE = ("lin", "arcsin", "log", "zero")


@dataclass(frozen=True)
class _Variant:
    final_layer: str
    populate_edge: str
    nvidia_levels: bool  # RF2: NVIDIA's rule (low_memory -> NONE; final conv at that level)
    autocast_off: str  # "" (the caller's), "block" (RF2), "attention" (RFAA)


_VARIANTS = {
    "rfdiffusion": _Variant("conv", "lin", nvidia_levels=False, autocast_off=""),
    "rf2": _Variant("lin", "arcsin", nvidia_levels=True, autocast_off="block"),
    "rfaa": _Variant("lin", "arcsin", nvidia_levels=False, autocast_off="attention"),
}


# --------------------------------------------------------------------------------------------
# residue graphs


@dataclass
class ResidueGraph:
    """A residue graph as their builders make it: se3t's :class:`Graph` (one graph of ``B *
    L`` nodes, as their ``dgl.graph``) and ``rel_pos [E, 3] = xyz[dst] - xyz[src]`` (their
    ``G.edata["rel_pos"]``, detached: no gradient through the basis)."""

    graph: Graph
    rel_pos: Tensor

    def edges(self) -> tuple[Tensor, Tensor]:
        return self.graph.src, self.graph.dst

    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def num_edges(self) -> int:
        return self.graph.num_edges

    def to(self, device) -> ResidueGraph:
        return replace(self, graph=self.graph.to(device), rel_pos=self.rel_pos.to(device))


def _residue_graph(xyz: Tensor, b: Tensor, i: Tensor, j: Tensor) -> ResidueGraph:
    B, L = xyz.shape[:2]
    n = B * L
    graph = Graph(b * L + i, b * L + j, torch.zeros(n, dtype=torch.long, device=xyz.device), n, 1)
    return ResidueGraph(graph, (xyz[b, j, :] - xyz[b, i, :]).detach())


def _check_inputs(xyz: Tensor, pair: Tensor, idx: Tensor, who: str) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{who}: xyz must be [B, L, 3] (CA coordinates), got {list(xyz.shape)}")
    B, L = xyz.shape[:2]
    if pair.dim() != 4 or tuple(pair.shape[:3]) != (B, L, L):
        raise ValueError(f"{who}: pair must be [{B}, {L}, {L}, F], got {list(pair.shape)}")
    if tuple(idx.shape) != (B, L):
        raise ValueError(f"{who}: idx must be [{B}, {L}], got {list(idx.shape)}")


def make_full_graph(xyz: Tensor, pair: Tensor, idx: Tensor, top_k: int = 64, kmin: int = 9):
    """Every ordered pair of residues with distinct residue indices (``L (L - 1)`` edges per
    chain): ``(ResidueGraph, edge_feats [E, F, 1])`` with RFdiffusion's / RF2's edge order.
    ``xyz [B, L, 3]`` (CA), ``pair [B, L, L, F]``, ``idx [B, L]``; ``top_k``, ``kmin``
    unused, as in theirs."""
    _check_inputs(xyz, pair, idx, "make_full_graph")
    sep = idx[:, None, :] - idx[:, :, None]
    b, i, j = torch.where(sep.abs() > 0)
    return _residue_graph(xyz, b, i, j), pair[b, i, j][..., None]


def make_topk_graph(
    xyz: Tensor,
    pair: Tensor,
    idx: Tensor,
    top_k: int = 64,
    kmin: int = 32,
    eps: float = 1e-6,
    *,
    variant: str = "rfdiffusion",
):
    """Each residue's ``top_k`` nearest residues (CA distance, ties broken by sequence
    separation) and every residue less than ``kmin`` apart in sequence: ``(ResidueGraph,
    edge_feats [E, F, 1])``, edges ``src -> dst`` for ``dst`` a neighbour of ``src``.

    ``variant="rfdiffusion"`` (RFdiffusion's builder): ``min(top_k, L)`` neighbours, so that
    for ``L <= top_k`` every residue is its own neighbour too (a self-loop, zero ``rel_pos``);
    ``"rf2"``: ``min(top_k, L - 1)`` neighbours, ``top_k <= 0`` meaning all (RF2's builder,
    default ``top_k`` there 128).
    """
    _check_inputs(xyz, pair, idx, "make_topk_graph")
    if variant not in ("rfdiffusion", "rf2"):
        raise ValueError(
            f"make_topk_graph: variant must be 'rfdiffusion' or 'rf2', got {variant!r}"
        )
    B, L = xyz.shape[:2]
    device = xyz.device
    eye = torch.eye(L, device=device).unsqueeze(0)
    D = torch.cdist(xyz, xyz) + eye * 999.9  # [B, L, L]
    sep = idx[:, None, :] - idx[:, :, None]
    sep = sep.abs() + eye * 999.9
    D = D + sep * eps
    # RFdiffusion's min(top_k, L) includes the residue itself when L <= top_k; RF2's does not
    rf2_k = min(top_k if top_k > 0 else L - 1, L - 1)
    k = min(top_k, L) if variant == "rfdiffusion" else rf2_k
    _, nearest = torch.topk(D, k, largest=False)  # [B, L, k]
    chosen = torch.zeros((B, L, L), device=device)
    chosen.scatter_(2, nearest, 1.0)
    b, i, j = torch.where(torch.logical_or(chosen > 0.0, sep < kmin))
    return _residue_graph(xyz, b, i, j), pair[b, i, j][..., None]


def _graph_and_positions(G) -> tuple[Graph, Tensor]:
    if isinstance(G, ResidueGraph):
        return G.graph, G.rel_pos
    if hasattr(G, "edata") and hasattr(G, "batch_num_nodes"):  # a DGLGraph
        from se3t.interop.dgl import graph_of  # deferred: only DGL users pass DGL graphs

        if "rel_pos" not in G.edata:
            raise ValueError(
                f"rosettafold: the DGLGraph has no edata['rel_pos'] "
                f"(has {sorted(G.edata.keys())}); build it with their make_*_graph"
            )
        return graph_of(G), G.edata["rel_pos"]
    raise TypeError(
        f"rosettafold: G must be a ResidueGraph (se3t.interop.rosettafold.make_full_graph / "
        f"make_topk_graph) or a DGLGraph with edata['rel_pos'], got {type(G).__name__}"
    )


# --------------------------------------------------------------------------------------------
# the block


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


class _Blocks(nn.Module):
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
        variant: _Variant,
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
        if variant.nvidia_levels:
            level = (
                NvidiaFuseLevel.NONE
                if low_memory
                else (NvidiaFuseLevel.FULL if tensor_cores else NvidiaFuseLevel.PARTIAL)
            )
            final_level = level
        else:
            full = tensor_cores and not low_memory
            level = NvidiaFuseLevel.FULL if full else NvidiaFuseLevel.PARTIAL
            final_level = NvidiaFuseLevel.FULL
        self.levels = (level, final_level)

        def layout(fin: Fiber, fout: Fiber, lv: NvidiaFuseLevel) -> dict:
            fu = nvidia_fusion(fin, fout, fiber_edge, self.max_degree, lv)
            return dict(fusion=fu, unit_scalar_kernel=fu is Fusion.PAIRWISE)

        common = dict(max_degree=self.max_degree, layer_norm=use_layer_norm)
        blocks = []
        f = fiber_in
        for _ in range(num_layers):
            value = Fiber({d: c // channels_div[d] for d, c in fiber_hidden.items()})
            key = Fiber({d: c for d, c in value.items() if d in f})
            divs = set(channels_div.values())
            att = AttentionBlockSE3(
                f,
                fiber_hidden,
                fiber_edge,
                num_heads=num_heads,
                channels_div=divs.pop() if len(divs) == 1 else 1,
                **common,
                **layout(f, value + key, level),
            )
            if (att.value_fiber, att.key_fiber) != (value, key):
                # per-degree divisors (RFAA's option): se3t's block takes one divisor, so its
                # fibers and the layers built on them are replaced
                att.value_fiber, att.key_fiber = value, key
                kv = value + key
                att.to_key_value = ConvSE3(
                    f, kv, fiber_edge, pool=False, **common, **layout(f, kv, level)
                )
                att.to_query = LinearSE3(f, key)
                att.attention = AttentionSE3(num_heads, key, value)
                cat = value + f
                att.project = LinearSE3(Fiber({d: cat[d] for d in fiber_hidden}), fiber_hidden)
            if variant.autocast_off == "attention":
                att.to_query = _Float32Query(f, key)
                att.attention = _Float32Attention(num_heads, key, value)
            blocks.append(nn.ModuleList([att, NormSE3(fiber_hidden) if norm else nn.Identity()]))
            f = fiber_hidden
        self.blocks = nn.ModuleList(blocks)
        if final_layer == "conv":
            self.final = ConvSE3(
                f,
                fiber_out,
                fiber_edge,
                pool=True,
                self_interaction=True,
                self_interaction_per_edge=True,
                aggregate="sum" if sum_over_edge else "mean",
                **common,
                **layout(f, fiber_out, final_level),
            )
        else:
            self.final = LinearSE3(f, fiber_out)

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
            # the C++ kernel's backward pass, tuned for QM9's 32 channels per degree, is slower
            # than the torch evaluation on these blocks' narrow fibers (BENCHMARKS.md); its
            # forward pass, which never writes the radial weights, serves inference
            kernel = Kernel.TORCH
        state = KernelState(basis, kernel)
        for att, norm in self.blocks:
            feats = norm(att(feats, graph, basis, edge_scalars, None, state))
        if self.final_layer == "conv":
            return self.final(feats, graph, basis, edge_scalars, None, state)
        return self.final(feats)


def _positive_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"SE3TransformerWrapper: {name} must be an int >= {low}, got {value!r}")
    return value


def _register_hooks(module: nn.Module) -> None:
    """The state-dict hooks that speak the vendored layout (public names from torch 2.5 on)."""
    post = getattr(module, "register_state_dict_post_hook", None)
    if post is not None:
        post(_to_vendored_hook)
    else:
        module._register_state_dict_hook(_to_vendored_hook)
    pre = getattr(module, "register_load_state_dict_pre_hook", None)
    if pre is not None:
        pre(_from_vendored_hook)
    else:
        module._register_load_state_dict_pre_hook(_from_vendored_hook, with_module=True)


class SE3TransformerWrapper(nn.Module):
    """The RF family's ``SE3TransformerWrapper`` on se3t (see the module docstring).

    Their arguments, with their defaults, then keywords: ``variant`` ("rfdiffusion", "rf2",
    "rfaa": whose copy's function), ``final_layer`` ("conv", "lin"), ``populate_edge``
    ("lin", "arcsin", "log", "zero") overriding the variant's; ``sum_over_edge`` (RFAA's
    option: False averages the final convolution over incoming edges); ``channels_div`` (an
    int or ``{degree: divisor}``, default ``div``); ``tensor_cores``, ``low_memory`` (their
    fuse-level switches; they change the parameter layout, never the memory here);
    ``norm``, ``use_layer_norm``; ``kernel``: se3t's :class:`se3t.choices.Kernel`.
    """

    def __init__(
        self,
        num_layers: int = 2,
        num_channels: int = 32,
        num_degrees: int = 3,
        n_heads: int = 4,
        div: int = 4,
        l0_in_features: int = 32,
        l0_out_features: int = 32,
        l1_in_features: int = 3,
        l1_out_features: int = 2,
        num_edge_features: int = 32,
        *,
        variant: str = "rfdiffusion",
        final_layer: str | None = None,
        populate_edge: str | None = None,
        sum_over_edge: bool = True,
        channels_div: int | Mapping | None = None,
        tensor_cores: bool = False,
        low_memory: bool = False,
        norm: bool = True,
        use_layer_norm: bool = True,
        kernel: Kernel | str = Kernel.AUTO,
    ):
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(
                f"SE3TransformerWrapper: variant must be one of {VARIANTS}, got {variant!r}"
            )
        v = _VARIANTS[variant]
        final_layer = final_layer or v.final_layer
        populate_edge = populate_edge or v.populate_edge
        if final_layer not in FINAL_LAYERS:
            raise ValueError(
                f"SE3TransformerWrapper: final_layer must be one of {FINAL_LAYERS} "
                f"(the attention final layer is not supported), got {final_layer!r}"
            )
        if populate_edge not in POPULATE_EDGE:
            raise ValueError(
                f"SE3TransformerWrapper: populate_edge must be one of {POPULATE_EDGE}, "
                f"got {populate_edge!r}"
            )
        for name, value, low in (
            ("num_layers", num_layers, 1),
            ("num_channels", num_channels, 1),
            ("num_degrees", num_degrees, 1),
            ("n_heads", n_heads, 1),
            ("div", div, 1),
            ("l0_in_features", l0_in_features, 1),
            ("l0_out_features", l0_out_features, 1),
            ("l1_in_features", l1_in_features, 0),
            ("l1_out_features", l1_out_features, 0),
            ("num_edge_features", num_edge_features, 0),
        ):
            _positive_int(value, name, low)
        try:
            self.kernel = Kernel(kernel)
        except ValueError:
            raise ValueError(
                f"SE3TransformerWrapper: kernel must be one of {[b.value for b in Kernel]}, "
                f"got {kernel!r}"
            ) from None
        self.variant, self.l1_in, self.l1_out = variant, l1_in_features, l1_out_features
        self.autocast_off = v.autocast_off
        fiber_in = Fiber({0: l0_in_features, **({1: l1_in_features} if l1_in_features else {})})
        fiber_out = Fiber({0: l0_out_features, **({1: l1_out_features} if l1_out_features else {})})
        fiber_hidden = Fiber.create(num_degrees, num_channels)
        if channels_div is None:
            channels_div = div
        if isinstance(channels_div, Mapping):
            divs = {int(d): int(c) for d, c in channels_div.items()}
        else:
            divs = {d: int(channels_div) for d in fiber_hidden.degrees}
        bad = {d: c for d, c in fiber_hidden.items() if d not in divs or c % divs[d]}
        if bad:
            raise ValueError(
                f"SE3TransformerWrapper: channels_div {channels_div!r} must divide the hidden "
                f"channels of every degree, {dict(fiber_hidden)}"
            )
        self.se3 = _Blocks(
            fiber_in=fiber_in,
            fiber_hidden=fiber_hidden,
            fiber_out=fiber_out,
            fiber_edge=Fiber({0: num_edge_features}) if num_edge_features else None,
            num_layers=num_layers,
            num_heads=n_heads,
            channels_div=divs,
            variant=v,
            final_layer=final_layer,
            populate_edge=populate_edge,
            sum_over_edge=sum_over_edge,
            norm=norm,
            use_layer_norm=use_layer_norm,
            tensor_cores=tensor_cores,
            low_memory=low_memory,
            kernel=self.kernel,
        )
        self._entries = _entries(self)
        self.reset_parameter()
        _register_hooks(self)

    def extra_repr(self) -> str:
        s = self.se3
        return (
            f"variant={self.variant}, {s.fiber_in} -> {s.fiber_out}, final_layer="
            f"{s.final_layer}, populate_edge={s.populate_edge}, "
            f"fuse levels {tuple(map(str, s.levels))}"
        )

    def reset_parameter(self) -> None:
        """Their initialization as it takes effect: zero biases, Kaiming-normal radial hidden
        layers, zero radial last layers and final-layer weights (their LeCun re-draw of the
        other weights rebinds a local name only, so those keep the default draw)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, e in self._entries.items():
                p = params[e.se3t]
                if "bias" in key:
                    nn.init.zeros_(p)
                elif p.dim() == 1 or "radial_func" not in key:
                    continue
                elif ".net.6." in key:
                    nn.init.zeros_(p)
                else:
                    nn.init.kaiming_normal_(p, nonlinearity="relu")
            final = self.se3.final
            weights = final.self_weights if isinstance(final, ConvSE3) else final.weights
            for w in weights.values():
                nn.init.zeros_(w)

    def forward(
        self,
        G,
        type_0_features: Tensor,
        type_1_features: Tensor | None = None,
        edge_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``G``: a :class:`ResidueGraph` or DGLGraph (``edata["rel_pos"] [E, 3]``);
        ``type_0_features [N, l0_in, 1]``, ``type_1_features [N, l1_in, 3]``, ``edge_features
        [E, num_edge_features, 1]`` -> ``{"0": [N, l0_out, 1], "1": [N, l1_out, 3]}``."""
        graph, rel_pos = _graph_and_positions(G)
        if self.autocast_off == "block":
            with torch.autocast(type_0_features.device.type, enabled=False):
                return self._forward(
                    graph, rel_pos, type_0_features, type_1_features, edge_features
                )
        return self._forward(graph, rel_pos, type_0_features, type_1_features, edge_features)

    def _forward(self, graph, rel_pos, x0, x1, edge) -> dict[str, Tensor]:
        dtype = next(self.parameters()).dtype
        N, E = graph.num_nodes, graph.num_edges
        s = self.se3
        want = {0: (N, s.fiber_in[0], 1)}
        if self.l1_in:
            want[1] = (N, self.l1_in, 3)
        feats = {0: x0, 1: x1} if self.l1_in else {0: x0}
        for d, shape in want.items():
            got = feats[d]
            if got is None or tuple(got.shape) != shape:
                shown = None if got is None else list(got.shape)
                raise ValueError(
                    f"SE3TransformerWrapper: type_{d}_features must be {list(shape)}, got {shown}"
                )
        F = s.fiber_edge[0] if s.fiber_edge else 0
        if edge is None and F == 0:
            edge = rel_pos.new_zeros(E, 0, 1)
        if edge is None or tuple(edge.shape) != (E, F, 1):
            shown = None if edge is None else list(edge.shape)
            raise ValueError(
                f"SE3TransformerWrapper: edge_features must be [{E}, {F}, 1], got {shown}"
            )
        if tuple(rel_pos.shape) != (E, 3):
            raise ValueError(
                f"SE3TransformerWrapper: rel_pos must be [{E}, 3], got {list(rel_pos.shape)}"
            )
        feats = {d: x.to(dtype) for d, x in feats.items()}
        out = s(graph, rel_pos, feats, edge.squeeze(-1).to(dtype))
        return {str(d): x for d, x in out.items()}

    def vendored_state_dict(self, *, grad: bool = False) -> dict[str, Tensor]:
        """The vendored module's state dict (keys relative to the wrapper, e.g.
        ``se3.graph_modules.0.to_key_value.conv_in.0.radial_func.net.0.weight``), detached
        copies; ``grad``: the parameters' gradients in the same layout (zeros where none)."""
        params = dict(self.named_parameters())
        out = {}
        for k, e in self._entries.items():
            p = params[e.se3t]
            v = p.detach()
            if grad:
                v = p.grad.detach() if p.grad is not None else torch.zeros_like(v)
            out[k] = e.to_nvidia(v).clone()
        return out


def _to_vendored_hook(module: SE3TransformerWrapper, state_dict, prefix, local_metadata):
    """state_dict(): se3t's parameter names -> the vendored keys and layouts, under ``prefix``."""
    values = {}
    for key, e in module._entries.items():
        values[key] = state_dict.pop(prefix + e.se3t)
    for key, e in module._entries.items():
        v = values[key]
        state_dict[prefix + key] = e.to_nvidia(v) if e.perm is not None else v


def _from_vendored_hook(
    module: SE3TransformerWrapper,
    state_dict,
    prefix,
    local_metadata,
    strict,
    missing_keys,
    unexpected_keys,
    error_msgs,
):
    """load_state_dict(): the vendored keys under ``prefix`` -> se3t's names and layouts (a
    key already in se3t's names loads as is)."""
    params = dict(module.named_parameters())
    for key, e in module._entries.items():
        name = prefix + key
        if name not in state_dict:
            continue
        v = state_dict.pop(name)
        want = tuple(params[e.se3t].shape)
        if tuple(v.shape) != want:
            error_msgs.append(
                f"size mismatch for {name}: the checkpoint has {list(v.shape)}, the "
                f"{module.variant} block with these arguments has {list(want)}"
            )
            continue
        state_dict[prefix + e.se3t] = e.to_se3t(v)


def _linear_order(fiber: list[tuple[int, int]]) -> list[str]:
    """The vendored LinearSE3's key order: it builds its ParameterDict from a plain dict, which
    torch's ParameterDict.update inserts in sorted key order."""
    return sorted(str(d) for d, _ in fiber)


def _entries(w: SE3TransformerWrapper) -> dict[str, Entry]:
    """Vendored state-dict key (relative to the wrapper) -> where it lives in ``w``, in the
    vendored order (NVIDIA's Fiber orders its ModuleDicts by channels)."""
    s = w.se3
    out: dict[str, Entry] = {}
    nv = "se3.graph_modules."
    f_in = nv_order(s.fiber_in.items())
    hidden = nv_order(s.fiber_hidden.items())
    idx = 0
    for i, (att, norm) in enumerate(s.blocks):
        value = nv_order((d, c // s.channels_div[d]) for d, c in hidden)
        key = nv_order((d, c) for d, c in value if d in dict(f_in))
        kv = nv_order((d, c + dict(key).get(d, 0)) for d, c in value)
        se = f"se3.blocks.{i}."
        out |= conv_entries(
            att.to_key_value, f"{nv}{idx}.to_key_value.", f"{se}0.to_key_value.", f_in, kv
        )
        for part, fout in (("to_query", key), ("project", hidden)):
            for d in _linear_order(fout):
                out[f"{nv}{idx}.{part}.weights.{d}"] = Entry(f"{se}0.{part}.weights.{d}")
        idx += 1
        if not isinstance(norm, nn.Identity):
            for p in ("weight", "bias"):
                out[f"{nv}{idx}.group_norm.{p}"] = Entry(f"{se}1.group_norm.{p}")
            idx += 1
        f_in = hidden
    f_out = nv_order(s.fiber_out.items())
    if s.final_layer == "conv":
        out |= conv_entries(s.final, f"{nv}{idx}.", "se3.final.", f_in, f_out)
    else:
        for d in _linear_order(f_out):
            out[f"{nv}{idx}.weights.{d}"] = Entry(f"se3.final.weights.{d}")
    return out
