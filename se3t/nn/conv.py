"""``ConvSE3``: the tensor field network (TFN) convolution with its fusion levels.

For every pair of input degree ``d_in`` and output degree ``d_out`` the message of edge
``e = (s -> t)`` is ``W_{d_in, d_out}(x_e) x_{d_in}[s]`` with the kernel
``W(x)[c_o, m_o, c_i, m_i] = sum_J R_J(|x|, f_e)[c_o, c_i] B_J(x)[m_i, m_o]`` (Fuchs et al. 2020,
eq. 8; ``B`` from :mod:`se3t.so3.basis`, ``R`` a radial profile MLP). Messages to ``d_out`` are
summed over ``d_in``; with ``pool`` they are summed over the incoming edges of each node, and
``self_interaction`` adds ``W_self x_{d_out}[t]`` (a per-degree linear map of the node itself):
once per node (se3t's form), or once per incoming edge before the sum (NVIDIA's form,
``self_interaction_per_edge``: the term is then scaled by the node's in-degree).

:func:`nvidia_fusion` reproduces NVIDIA's per-layer choice of fuse level, so that a model
built with it has NVIDIA's exact parameter layout (``se3t.interop.nvidia``, docs/model.md).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from se3t.choices import Evaluation, Fusion, NvidiaFuseLevel
from se3t.graph import Graph
from se3t.nn.graph_ops import gather, scatter_sum
from se3t.nn.kernel import KernelSpec, KernelState, fused_tfn
from se3t.nn.radial import RadialProfile
from se3t.so3.basis import basis_size
from se3t.so3.fiber import Fiber

__all__ = ["ConvSE3", "Fusion", "NvidiaFuseLevel", "nvidia_fusion", "pairwise_reference"]


def nvidia_fusion(
    fiber_in: Fiber,
    fiber_out: Fiber,
    fiber_edge: Fiber | None,
    max_degree: int,
    level: NvidiaFuseLevel | str,
) -> Fusion:
    """The fusion (radial sharing) NVIDIA's ``ConvSE3`` uses for these fibers at maximum
    fuse ``level`` ("none", "partial", "full").

    NVIDIA concatenates features of all fused degrees along ``m``, so a level applies only
    when the fused side has one channel count (input channels counting the concatenated
    edge features of degree > 0) and spans degrees ``0..max_degree``; otherwise the layer
    drops to the next condition: FULL, then PARTIAL per output degree, then PARTIAL per input
    degree, then pairwise.
    """
    try:
        rank = NvidiaFuseLevel(level).rank
    except ValueError:
        levels = [v.value for v in NvidiaFuseLevel]
        raise ValueError(f"nvidia fuse level must be one of {levels}, got {level!r}") from None
    edge = fiber_edge or {}
    ins = {c + (edge.get(d, 0) if d > 0 else 0) for d, c in fiber_in.items()}
    outs = set(fiber_out.values())
    span = list(range(max_degree + 1))
    in_ok = len(ins) == 1 and fiber_in.degrees == span
    out_ok = len(outs) == 1 and fiber_out.degrees == span
    if rank >= 2 and in_ok and out_ok:
        return Fusion.FULL
    if rank >= 1 and in_ok:
        return Fusion.PER_OUTPUT
    if rank >= 1 and out_ok:
        return Fusion.PER_INPUT
    return Fusion.PAIRWISE


def _as_fiber(f, name: str) -> Fiber:
    if isinstance(f, Fiber):
        return f
    try:
        return Fiber(f)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _check_degrees(fiber_in: Fiber, fiber_out: Fiber, max_degree) -> None:
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 0:
        raise ValueError(f"ConvSE3: max_degree must be an int >= 0, got {max_degree!r}")
    for name, f in (("fiber_in", fiber_in), ("fiber_out", fiber_out)):
        if f.max_degree > max_degree:
            raise ValueError(
                f"ConvSE3: {name} {f} has degree {f.max_degree} > max_degree {max_degree}"
            )


def _fusion(fusion: Fusion | str) -> Fusion:
    """The level a convolution runs at: ``auto`` is FULL."""
    try:
        fusion = Fusion(fusion)
    except ValueError:
        raise ValueError(
            f"ConvSE3: fusion must be one of {[f.value for f in Fusion]}, got {fusion!r}"
        ) from None
    return Fusion.FULL if fusion is Fusion.AUTO else fusion


def fusion_groups(fusion: Fusion, fiber_in: Fiber, fiber_out: Fiber) -> list[tuple[list, list]]:
    """The ``(input (degree, channels) list, output list)`` groups whose pairs share one radial
    profile at ``fusion``."""
    ins, outs = list(fiber_in.items()), list(fiber_out.items())
    if fusion is Fusion.PAIRWISE:
        return [([i], [o]) for i in ins for o in outs]
    if fusion is Fusion.PER_OUTPUT:
        return [(ins, [o]) for o in outs]
    if fusion is Fusion.PER_INPUT:
        return [([i], outs) for i in ins]
    return [(ins, outs)]


class ConvSE3(nn.Module):
    """TFN convolution ``fiber_in -> fiber_out`` on a graph.

    Args:
        fiber_in, fiber_out: node fibers. Degrees must be ``<= max_degree``.
        fiber_edge: edge fiber: degree 0 channels feed the radial profiles (with the edge
            length appended); higher degrees are concatenated to the source node's features
            of the same degree. ``None``: no edge features (the length only).
        max_degree: max degree of the flat basis passed to ``forward``.
        pool: sum messages onto destination nodes (else return per-edge messages).
        self_interaction: add a per-degree linear map of the destination node's own features
            (needs ``pool``). self_interaction_per_edge: add it to every incoming edge's
            message before the sum (NVIDIA's form: scaled by the in-degree) instead of once.
        aggregate: ``"sum"`` the messages onto each node (with ``pool``), or ``"mean"``: divide
            by the node's in-degree (nodes without incoming edges get zeros). With the
            per-edge self-interaction the mean keeps it unscaled (the RoseTTAFold All-Atom
            copy's ``sum_over_edge=False``).
        unit_scalar_kernel: the ``(0, 0)`` pair's kernel is its radial profile alone, without
            the constant basis value ``Y_0 = 1/sqrt(4 pi)``: what NVIDIA's pairwise
            convolutions compute (they drop that basis), while its fused ones keep it.
        layer_norm: layer norm in the radial profiles. radial_hidden: their width.
        fusion: a :class:`Fusion` or its value (``"auto"``). The level used is ``self.fusion``.
        chunk_elements: radial outputs held at once by the fused op (memory vs. op count).
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        fiber_edge: Fiber | None = None,
        *,
        max_degree: int,
        pool: bool = True,
        self_interaction: bool = False,
        self_interaction_per_edge: bool = False,
        unit_scalar_kernel: bool = False,
        layer_norm: bool = True,
        radial_hidden: int = 32,
        fusion: Fusion | str = Fusion.AUTO,
        chunk_elements: int | None = None,
        aggregate: str = "sum",
    ):
        super().__init__()
        self.fiber_in = _as_fiber(fiber_in, "ConvSE3 fiber_in")
        self.fiber_out = _as_fiber(fiber_out, "ConvSE3 fiber_out")
        self.fiber_edge = _as_fiber(fiber_edge, "ConvSE3 fiber_edge") if fiber_edge else None
        _check_degrees(self.fiber_in, self.fiber_out, max_degree)
        if self_interaction and not pool:
            raise ValueError("ConvSE3: self_interaction needs pool=True")
        if aggregate not in ("sum", "mean"):
            raise ValueError(f"ConvSE3: aggregate must be 'sum' or 'mean', got {aggregate!r}")
        self.mean = aggregate == "mean"
        self.fusion = _fusion(fusion)
        self.max_degree, self.pool, self.chunk_elements = max_degree, pool, chunk_elements
        edge = self.fiber_edge or {}
        self.edge_scalars = edge.get(0, 0) + 1  # + the edge length
        # per-edge input fiber: node channels plus edge features of the same degree (> 0)
        self.edge_hi = {d: c for d, c in edge.items() if d > 0}
        for d in self.edge_hi:
            if d not in self.fiber_in or d > max_degree:
                raise ValueError(
                    f"ConvSE3: edge feature degree {d} has no matching input degree "
                    f"in {self.fiber_in}"
                )
        self.fiber_msg_in = self.fiber_in + Fiber(self.edge_hi) if self.edge_hi else self.fiber_in
        groups = fusion_groups(self.fusion, self.fiber_msg_in, self.fiber_out)
        self.specs = [KernelSpec(gi, go, max_degree) for gi, go in groups]
        self.radial = nn.ModuleList(
            RadialProfile(self.edge_scalars, spec.num_radial, radial_hidden, layer_norm)
            for spec in self.specs
        )
        self.self_interaction = self_interaction
        self.self_interaction_per_edge = bool(self_interaction and self_interaction_per_edge)
        self.unit_scalar_kernel = bool(unit_scalar_kernel and 0 in self.fiber_in)
        if self_interaction:
            self.self_weights = nn.ParameterDict(
                {
                    str(d): nn.Parameter(torch.randn(c, self.fiber_in[d]) / self.fiber_in[d] ** 0.5)
                    for d, c in self.fiber_out.items()
                    if d in self.fiber_in
                }
            )

    def extra_repr(self) -> str:
        extra = ", self_interaction_per_edge" if self.self_interaction_per_edge else ""
        extra += ", unit_scalar_kernel" if self.unit_scalar_kernel else ""
        extra += ", aggregate=mean" if self.mean else ""
        return (
            f"{self.fiber_in} -> {self.fiber_out}, fusion={self.fusion.value}, "
            f"pool={self.pool}{extra}"
        )

    def _check(self, feats, graph: Graph, basis: Tensor, edge_scalars: Tensor, edge_feats) -> None:
        self.fiber_in.check(feats, "ConvSE3 node features")
        E = graph.num_edges
        size = basis_size(self.max_degree)
        if not isinstance(basis, Tensor) or tuple(basis.shape) != (E, size):
            shape = list(basis.shape) if isinstance(basis, Tensor) else type(basis).__name__
            raise ValueError(
                f"ConvSE3 basis: expected the flat basis [{E}, {size}] "
                f"(max_degree {self.max_degree}), got {shape}"
            )
        if tuple(edge_scalars.shape) != (E, self.edge_scalars):
            raise ValueError(
                f"ConvSE3 edge_scalars: expected [{E}, {self.edge_scalars}] (degree-0 edge "
                f"features + length), got {list(edge_scalars.shape)}"
            )
        for d, c in self.edge_hi.items():
            x = (edge_feats or {}).get(d)
            if x is None or tuple(x.shape) != (E, c, 2 * d + 1):
                got = None if x is None else list(x.shape)
                raise ValueError(
                    f"ConvSE3 edge_feats[{d}]: expected [{E}, {c}, {2 * d + 1}], got {got}"
                )

    def forward(
        self,
        feats: dict[int, Tensor],
        graph: Graph,
        basis: Tensor,
        edge_scalars: Tensor,
        edge_feats: dict[int, Tensor] | None = None,
        state: KernelState | None = None,
    ) -> dict[int, Tensor]:
        """``feats {d: [N, C_in_d, 2d+1]}``, ``basis [E, basis_size]`` flat, ``edge_scalars
        [E, F_edge + 1]`` -> ``{d: [N, C_out_d, 2d+1]}`` (pool) or ``{d: [E, C_out_d, 2d+1]}``.

        ``state``: the forward pass's :class:`se3t.nn.kernel.KernelState` (backend, tuning,
        block bases shared by the layers, chunk sizes); None builds one for this call (backend
        ``auto``, this layer's ``chunk_elements``)."""
        self._check(feats, graph, basis, edge_scalars, edge_feats)
        if self.unit_scalar_kernel and 0 in self.fiber_out:
            # flat column 0 is the (0, 0) pair's only basis value (se3t.so3.basis layout)
            basis = torch.cat([torch.ones_like(basis[:, :1]), basis[:, 1:]], dim=1)
        if state is None:
            state = KernelState(basis, chunk_elements=self.chunk_elements)
        src = graph.src
        if self.edge_hi:
            # per-edge inputs: the source's features with the edge's own features appended
            xs = {d: gather(feats[d], src) for d in self.fiber_in}
            for d in self.edge_hi:
                xs[d] = torch.cat([xs[d], edge_feats[d].to(xs[d].dtype)], dim=1)
            src = torch.arange(graph.num_edges, device=src.device)
        else:
            xs = feats
        msgs: dict[int, Tensor] = {}
        how = Evaluation.PAIRWISE if self.fusion is Fusion.PAIRWISE else None
        for spec, radial in zip(self.specs, self.radial, strict=True):
            # an edge and its reverse share radial weights where the evaluation can use it
            share = state.radial_share(spec, edge_scalars, graph, how)
            z = radial.hidden(edge_scalars if share is None else share.take(edge_scalars))
            xl = [xs[d] for d, _ in spec.ins]
            for do, msg in fused_tfn(
                spec, z, radial.last.weight, basis, src, xl, state, share, how
            ).items():
                msgs[do] = msg if do not in msgs else msgs[do] + msg  # [E, C_o, 2 d_out + 1]
        if not self.pool:
            return msgs  # {d: [E, C_o, 2d+1]}
        out = {d: scatter_sum(m, graph.dst, graph.num_nodes) for d, m in msgs.items()}
        if self.mean or self.self_interaction_per_edge:
            deg = torch.bincount(graph.dst, minlength=graph.num_nodes)
            deg = deg.to(out[next(iter(out))].dtype)[:, None, None]  # [N, 1, 1]
        if self.mean:
            out = {d: o / deg.clamp(min=1) for d, o in out.items()}
        if self.self_interaction:
            if self.self_interaction_per_edge:
                # sum over incoming edges of W x[t] == in-degree(t) * W x[t]; their mean is
                # W x[t] itself, where t has incoming edges
                scale = (deg > 0).to(deg.dtype) if self.mean else deg
            for key, w in self.self_weights.items():
                d = int(key)
                si = torch.matmul(w.to(out[d].dtype), feats[d].to(out[d].dtype))
                out[d] = out[d] + (scale * si if self.self_interaction_per_edge else si)
        return out  # {d: [N, C_o, 2d+1]}


def pairwise_reference(conv: ConvSE3) -> ConvSE3:
    """A ``PAIRWISE`` copy of ``conv`` computing the same function with the same weights:
    each pair's radial profile copies its group's hidden layers and its rows of the last
    layer. Used to test every fused level against the reference."""
    ref = copy.deepcopy(conv)
    if conv.fusion is Fusion.PAIRWISE:
        return ref
    ref.fusion = Fusion.PAIRWISE
    groups = fusion_groups(Fusion.PAIRWISE, conv.fiber_msg_in, conv.fiber_out)
    ref.specs = [KernelSpec(gi, go, conv.max_degree) for gi, go in groups]
    radials = []
    for spec in ref.specs:
        (di, _), (do, _) = spec.ins[0], spec.outs[0]
        g = next(k for k, s in enumerate(conv.specs) if (di, do) in s.w_off)
        src = conv.radial[g]
        r = copy.deepcopy(src)
        rows = conv.specs[g].pair_rows(di, do)
        n = rows.stop - rows.start
        w = src.last.weight  # the copy keeps its dtype (a default-dtype layer would round it)
        r.last = nn.Linear(src.hidden_features, n, bias=False, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            r.last.weight.copy_(src.last.weight[rows])
        r.out_features = n
        r.to(src.last.weight.dtype)
        radials.append(r)
    ref.radial = nn.ModuleList(radials)
    return ref
