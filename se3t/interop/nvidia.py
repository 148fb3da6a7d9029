"""NVIDIA's SE3Transformer (DeepLearningExamples, DGLPyTorch/DrugDiscovery/SE3Transformer) on se3t.

``from_state_dict(state_dict, **kwargs)`` builds the se3t model that computes NVIDIA's function
from the keyword arguments of NVIDIA's ``SE3TransformerPooled`` (``fiber_in``, ``fiber_out``,
``fiber_edge``, ``num_degrees``, ``num_channels``, ``output_dim``, ``num_layers``,
``num_heads``, ``channels_div``, ``pooling``, ``norm``, ``use_layer_norm``, ``tensor_cores``,
``low_memory``) or of its plain ``SE3Transformer`` (``fiber_hidden`` instead of
``num_degrees``/``num_channels``/``output_dim``, plus ``return_type``), and loads every tensor of
NVIDIA's state dict into it. No DGL: the model runs on se3t's :class:`~se3t.graph.Batch` or on
NVIDIA-style feature dicts with an se3t :class:`~se3t.graph.Graph`.

What makes the function NVIDIA's (docs/model.md, "NVIDIA's parameterization"):

- the fuse level of every convolution as NVIDIA decides it (``tensor_cores`` -> FULL,
  ``low_memory`` -> NONE, else PARTIAL, each layer downgrading when its fibers fail the
  level's channel conditions: :func:`se3t.nn.conv.nvidia_fusion`), which fixes which degree
  pairs share a radial MLP;
- the radial last layer's rows, which NVIDIA orders ``(c_out, c_in, pair, J)`` across a fused
  group and se3t per pair (``se3t.nn.kernel.KernelSpec``): a fixed row permutation, exact;
- NVIDIA's Clebsch-Gordan signs: its pinned e3nn (0.3.3) returns some ``Q_J`` with the
  opposite sign to later releases; each ``Q_J`` meets its own radial weight, so the loader
  negates those weights (exact; the table is recorded from NVIDIA's environment by
  benchmarks/nvidia/cg_table.py into :mod:`se3t.interop._nvidia_cg`);
- NVIDIA's pairwise ``(0, 0)`` kernel without the basis constant ``Y_0``;
- the final convolution's self-interaction added per incoming edge;
- bases computed without gradient (NVIDIA's ``get_basis(compute_gradients=False)``): the
  gradient with respect to positions flows through the edge lengths only, as in NVIDIA.

``to_state_dict(model)`` writes NVIDIA's keys back; a round trip is the identity. Unknown,
missing or wrongly shaped keys raise :class:`NvidiaStateDictError` naming the key and the shape
NVIDIA's model has for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from se3t.choices import NvidiaFuseLevel
from se3t.graph import Batch, Graph
from se3t.interop import _nvidia_cg
from se3t.models.transformer import SE3Transformer
from se3t.nn.conv import ConvSE3, Fusion
from se3t.nn.graph_ops import scatter_max, scatter_mean
from se3t.so3.basis import basis_size, clebsch_gordan, compute_basis_flat, num_freq
from se3t.so3.fiber import Fiber

__all__ = [
    "NVIDIA_COMMIT",
    "NvidiaSE3Transformer",
    "DLEModel",
    "NvidiaStateDictError",
    "expected_shapes",
    "load_dle_checkpoint",
    "read_sidecar",
    "from_state_dict",
    "fuse_levels",
    "nvidia_model",
    "to_state_dict",
]

# the DeepLearningExamples commit whose SE3Transformer the fixtures were made with
NVIDIA_COMMIT = "729963dd47e7c8bd462ad10bfac7a7b0b604e6dd"

# max readout: values this many float eps (relative) below the max count as tied (_first_max)
TIE_ULPS = 64

_POOLED_ARGS = {"fiber_in", "fiber_out", "fiber_edge", "num_degrees", "num_channels", "output_dim"}
_COMMON_ARGS = {
    "num_layers",
    "num_heads",
    "channels_div",
    "pooling",
    "norm",
    "use_layer_norm",
    "tensor_cores",
    "low_memory",
}
_PLAIN_ARGS = {"fiber_in", "fiber_hidden", "fiber_out", "fiber_edge", "return_type"}


class NvidiaStateDictError(ValueError):
    """A state dict that does not fit NVIDIA's model for the given arguments."""


def _fiber(value, name: str, allow_empty: bool = False) -> Fiber | None:
    """``{degree: channels}`` (int or str keys; NVIDIA's ``Fiber`` is such a dict) -> Fiber."""
    if value is None or (isinstance(value, Mapping) and len(value) == 0):
        if allow_empty:
            return None
        raise ValueError(f"nvidia: {name} must be a non-empty {{degree: channels}} dict")
    if not isinstance(value, Mapping):
        raise ValueError(f"nvidia: {name} must be a {{degree: channels}} dict, got {value!r}")
    try:
        return Fiber({int(d): int(c) for d, c in value.items() if int(c) > 0})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"nvidia: {name}: {exc}") from None


def _level(tensor_cores: bool, low_memory: bool) -> NvidiaFuseLevel:
    # NVIDIA's SE3Transformer.__init__: low memory wins over tensor cores
    if low_memory:
        return NvidiaFuseLevel.NONE
    return NvidiaFuseLevel.FULL if tensor_cores else NvidiaFuseLevel.PARTIAL


class NvidiaSE3Transformer(nn.Module):
    """se3t's SE3Transformer with NVIDIA's inputs, outputs and parameter layout.

    ``forward(batch, basis=None)`` with an se3t :class:`Batch` (degree-0 node features
    ``[N, F]``, degree-0 edge features ``[E, F_edge]``), or ``forward(graph, node_feats,
    edge_feats=None, rel_pos=..., basis=None)`` with NVIDIA's dicts (``{"0": [N, C, 1], ...}``,
    ``{"0": [E, F, 1], "1": ...}``) and the edge vectors ``rel_pos = pos[dst] - pos[src]``.
    ``basis``: a precomputed flat se3t basis ``[E, basis_size]`` (else computed, without
    gradient, as NVIDIA does). Returns what NVIDIA returns: the pooled model's ``[B]``
    (``output_dim == 1``) or ``[B, output_dim]``; the plain model's pooled features, its
    ``return_type`` features, or its dict of features.
    """

    def __init__(self, *, pooled: bool, args: dict):
        super().__init__()
        self.pooled, self.args = pooled, dict(args)
        a = self.args
        self.fiber_in = _fiber(a["fiber_in"], "fiber_in")
        self.fiber_out = _fiber(a["fiber_out"], "fiber_out")
        self.fiber_edge = _fiber(a.get("fiber_edge"), "fiber_edge", allow_empty=True)
        # NVIDIA's Fiber iteration orders (they order its state dict's keys)
        self.nv_in = _nv_order(a["fiber_in"].items())
        self.nv_out = _nv_order(a["fiber_out"].items())
        if pooled:
            self.nv_hidden = _nv_order((d, a["num_channels"]) for d in range(a["num_degrees"]))
            self.fiber_hidden = Fiber.create(a["num_degrees"], a["num_channels"])
            self.return_type = 0
            self.pool = a.get("pooling") or "max"
        else:
            self.fiber_hidden = _fiber(a["fiber_hidden"], "fiber_hidden")
            self.nv_hidden = _nv_order(a["fiber_hidden"].items())
            self.return_type = a.get("return_type")
            self.pool = a.get("pooling")
        if self.pool not in (None, "max", "avg"):
            raise ValueError(f"nvidia: pooling must be 'max', 'avg' or None, got {self.pool!r}")
        if self.pool is not None and self.return_type is None:
            raise ValueError("nvidia: return_type must be specified when pooling")
        norm = bool(a.get("norm", True))
        if norm and self.fiber_hidden.uniform_channels is None:
            # NVIDIA's NormSE3 falls back to per-degree layer norms here, and that branch calls
            # rescale(new_norm, feat, norm), i.e. new_norm / feat * norm: not reproduced
            raise NotImplementedError(
                f"nvidia: norm=True with a hidden fiber of unequal channels "
                f"{dict(self.fiber_hidden)} uses NVIDIA's per-degree NormSE3 branch, whose "
                f"rescale arguments are swapped; se3t does not reproduce it"
            )
        self.fuse_level = _level(bool(a.get("tensor_cores")), bool(a.get("low_memory")))
        self.max_degree = max(
            f.max_degree for f in (self.fiber_in, self.fiber_hidden, self.fiber_out)
        )
        self.transformer = SE3Transformer(
            self.fiber_in,
            self.fiber_hidden,
            self.fiber_out,
            self.fiber_edge,
            num_layers=a["num_layers"],
            num_heads=a["num_heads"],
            channels_div=a["channels_div"],
            norm=norm,
            layer_norm=bool(a.get("use_layer_norm", True)),
            max_degree=self.max_degree,
            nvidia_fuse_level=self.fuse_level,
            self_interaction_per_edge=True,
        )
        if pooled:
            n = self.fiber_out.num_features
            self.mlp = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, a["output_dim"]))

    def extra_repr(self) -> str:
        return f"{'pooled' if self.pooled else 'plain'}, fuse level {self.fuse_level}"

    def _pool(self, x: Tensor, graph: Graph) -> Tensor:
        # dgl.nn MaxPooling / AvgPooling over each graph's nodes, then GPooling's squeeze(-1)
        flat = x.reshape(x.shape[0], -1)  # [N, F]
        if self.pool == "avg":
            out = scatter_mean(flat, graph.node_graph, graph.num_graphs)
        else:
            out = _first_max(flat, graph.node_graph, graph.num_graphs)
        return out.view(-1, *x.shape[1:]).squeeze(-1)

    def forward(
        self,
        graph: Batch | Graph,
        node_feats: Mapping[str, Tensor] | None = None,
        edge_feats: Mapping[str, Tensor] | None = None,
        *,
        rel_pos: Tensor | None = None,
        basis: Tensor | None = None,
    ):
        dtype = next(self.parameters()).dtype
        if isinstance(graph, Batch):
            if node_feats is not None or edge_feats is not None:
                raise ValueError("nvidia: pass either a Batch or (graph, node_feats, ...)")
            batch = graph
            graph = batch.graph
            node_feats = {"0": batch.node_feats[..., None]}
            edge_feats = {"0": batch.edge_feats[..., None]} if self.fiber_edge else {}
            rel_pos = batch.edge_vec
        elif node_feats is None or rel_pos is None:
            raise ValueError("nvidia: forward(graph, node_feats, ...) needs node_feats and rel_pos")
        edge_feats = dict(edge_feats or {})
        E = graph.num_edges
        if tuple(rel_pos.shape) != (E, 3):
            raise ValueError(f"nvidia: rel_pos must be [{E}, 3], got {list(rel_pos.shape)}")
        if basis is None:
            with torch.no_grad():
                basis = compute_basis_flat(rel_pos.detach(), self.max_degree, dtype=dtype)
        elif tuple(basis.shape) != (E, basis_size(self.max_degree)):
            raise ValueError(
                f"nvidia: basis must be the flat [{E}, {basis_size(self.max_degree)}], "
                f"got {list(basis.shape)}"
            )
        r = rel_pos.norm(dim=-1, keepdim=True).to(dtype)  # [E, 1]
        scalars = [edge_feats["0"].squeeze(-1).to(dtype)] if "0" in edge_feats else []
        edge_scalars = torch.cat([*scalars, r], dim=1)  # [E, F_edge + 1]
        feats = {int(d): x.to(dtype) for d, x in node_feats.items()}
        hi = {int(d): x.to(dtype) for d, x in edge_feats.items() if int(d) > 0}
        out = self.transformer(feats, graph, basis, edge_scalars, hi or None)
        out = {str(d): x for d, x in out.items()}
        if self.pool is not None:
            out = self._pool(out[str(self.return_type)], graph)
        elif self.return_type is not None:
            out = out[str(self.return_type)]
        if self.pooled:
            return self.mlp(out.squeeze(-1)).squeeze(-1)
        return out


def _first_max(x: Tensor, index: Tensor, num: int) -> Tensor:
    """Max of ``x [N, F]`` rows per ``index``, the gradient going to the FIRST arg-max row.

    DGL's max readout passes the gradient to the first arg-max node; se3t's ``scatter_max``
    shares it among ties. Ties are real in molecules (the two hydrogens of water get equal
    features), so NVIDIA's input gradients need DGL's choice. Values within ``TIE_ULPS`` units
    in the last place of the max count as tied: NVIDIA computes symmetric atoms bit-identically,
    while se3t's sums, in another order, may leave them a rounding apart.
    """
    N, F = x.shape
    with torch.no_grad():
        peak = scatter_max(x, index, num)  # [B, F]
        tol = TIE_ULPS * torch.finfo(x.dtype).eps * peak.abs()
        rows = torch.arange(N, device=x.device)[:, None].expand(N, F)
        rows = torch.where(x >= (peak - tol)[index], rows, N)
        first = torch.full((num, F), N, dtype=torch.long, device=x.device)
        first = first.scatter_reduce(0, index[:, None].expand(N, F), rows, reduce="amin")
    return x.gather(0, first)  # [B, F]


def _split_args(kwargs: dict) -> bool:
    """True for SE3TransformerPooled's arguments, False for SE3Transformer's; checks names."""
    keys = set(kwargs)
    pooled = bool(keys & {"num_degrees", "num_channels", "output_dim"})
    allowed = _COMMON_ARGS | (_POOLED_ARGS if pooled else _PLAIN_ARGS)
    unknown = sorted(keys - allowed)
    if unknown:
        model = "SE3TransformerPooled" if pooled else "SE3Transformer"
        raise ValueError(f"nvidia: unknown {model} arguments {unknown} (known: {sorted(allowed)})")
    required = {"fiber_in", "fiber_out", "num_layers", "num_heads", "channels_div"}
    required |= (
        {"num_degrees", "num_channels", "output_dim", "fiber_edge"} if pooled else {"fiber_hidden"}
    )
    missing = sorted(required - keys)
    if missing:
        model = "SE3TransformerPooled" if pooled else "SE3Transformer"
        raise ValueError(f"nvidia: {model} needs the arguments {missing}")
    return pooled


def nvidia_model(**kwargs) -> NvidiaSE3Transformer:
    """The se3t model of NVIDIA's arguments, freshly initialized (se3t's initialization)."""
    return NvidiaSE3Transformer(pooled=_split_args(kwargs), args=kwargs)


@dataclass(frozen=True)
class _Entry:
    se3t: str  # parameter name in the se3t model
    # se3t tensor rows = sign * NVIDIA tensor rows [perm] (radial last layers; else None)
    perm: Tensor | None = None
    sign: Tensor | None = None

    def to_se3t(self, v: Tensor) -> Tensor:
        if self.perm is None:
            return v
        return v[self.perm.to(v.device)] * self.sign.to(v.device, v.dtype)[:, None]

    def to_nvidia(self, v: Tensor) -> Tensor:
        if self.perm is None:
            return v
        v = v * self.sign.to(v.device, v.dtype)[:, None]
        return v[torch.argsort(self.perm.to(v.device))]


def _cg_sign(J: int, d_in: int, d_out: int) -> int:
    """+1 or -1: NVIDIA's ``Q_J`` over se3t's (see :mod:`se3t.interop._nvidia_cg`)."""
    ref = _nvidia_cg.REFERENCE.get((J, d_in, d_out))
    if ref is None:
        raise NotImplementedError(
            f"nvidia: NVIDIA's Clebsch-Gordan signs are recorded up to degree "
            f"{_nvidia_cg.MAX_DEGREE} (benchmarks/nvidia/cg_table.py); degrees {d_in} -> {d_out}"
        )
    k, value = ref
    mine = float(clebsch_gordan(J, d_in, d_out).flatten()[k])
    if abs(abs(mine) - abs(value)) > 1e-9:
        raise RuntimeError(
            f"nvidia: Clebsch-Gordan Q_{J} ({d_in} -> {d_out}) entry {k} is {mine}, NVIDIA's "
            f"is {value}: not the same tensor up to sign (e3nn changed its convention?)"
        )
    return 1 if mine * value > 0 else -1


def _radial_rows(conv: ConvSE3, g: int) -> tuple[Tensor, Tensor]:
    """``(perm, sign)`` with ``se3t_last[k] = sign[k] * nvidia_last[perm[k]]`` for group ``g``.

    NVIDIA's fused radial output is viewed as ``[C_out, C_in * F]`` with ``F`` running over
    the group's pairs (output degree outer, input degree inner, as its fused bases are
    stacked) and ``J`` within a pair; se3t stores one ``[C_out, C_in, J]`` block per pair.
    ``sign`` is NVIDIA's Clebsch-Gordan sign of each row's ``J``.
    """
    spec = conv.specs[g]
    F = sum(num_freq(di, do) for do, _ in spec.outs for di, _ in spec.ins)
    perm = torch.empty(spec.num_radial, dtype=torch.long)
    sign = torch.empty(spec.num_radial)
    f0 = 0
    for do, co in spec.outs:
        for di, ci in spec.ins:
            nf = num_freq(di, do)
            o = torch.arange(co).view(co, 1, 1)
            i = torch.arange(ci).view(1, ci, 1)
            j = torch.arange(nf).view(1, 1, nf)
            se = (spec.w_off[(di, do)] + (o * ci + i) * nf + j).flatten()
            perm[se] = (o * (ci * F) + i * F + f0 + j).flatten()
            js = torch.tensor([_cg_sign(abs(di - do) + q, di, do) for q in range(nf)])
            sign[se] = js.to(sign.dtype).expand(co, ci, nf).flatten()
            f0 += nf
    return perm, sign


def _nv_order(items) -> list[tuple[int, int]]:
    """The iteration order of NVIDIA's ``Fiber`` built from ``(degree, channels)`` items: a
    stable sort by channels (its ``__init__``). It orders NVIDIA's ModuleDicts and so its
    state-dict keys."""
    return sorted(((int(d), int(c)) for d, c in items), key=lambda t: t[1])


def _conv_entries(conv: ConvSE3, nv: str, se: str, ins: list, outs: list) -> dict[str, _Entry]:
    """Entries of one convolution; ``ins``/``outs``: NVIDIA's fiber orders (``_nv_order``)."""
    out: dict[str, _Entry] = {}
    layer_norm = not isinstance(conv.radial[0].net[1], nn.Identity)
    di_order, do_order = [d for d, _ in ins], [d for d, _ in outs]
    if conv.fusion is Fusion.PAIRWISE:
        keys = [(di, do) for di in di_order for do in do_order]
        group = {(s.ins[0][0], s.outs[0][0]): g for g, s in enumerate(conv.specs)}
        order = [(f"conv.{di},{do}", group[(di, do)]) for di, do in keys]
    elif conv.fusion is Fusion.PER_OUTPUT:
        group = {s.outs[0][0]: g for g, s in enumerate(conv.specs)}
        order = [(f"conv_out.{do}", group[do]) for do in do_order]
    elif conv.fusion is Fusion.PER_INPUT:
        group = {s.ins[0][0]: g for g, s in enumerate(conv.specs)}
        order = [(f"conv_in.{di}", group[di]) for di in di_order]
    else:
        order = [("conv", 0)]
    for name, g in order:
        p, s = f"{nv}{name}.radial_func.net.", f"{se}radial.{g}."
        # NVIDIA's Sequential drops the absent layer norms, shifting the indices
        layers = [(0, 0), (1, 1), (3, 3), (4, 4)] if layer_norm else [(0, 0), (2, 3)]
        for i_nv, i_se in layers:
            for w in ("weight", "bias"):
                out[f"{p}{i_nv}.{w}"] = _Entry(f"{s}net.{i_se}.{w}")
        last = 6 if layer_norm else 4
        perm, sign = _radial_rows(conv, g)
        out[f"{p}{last}.weight"] = _Entry(f"{s}last.weight", perm, sign)
    if conv.self_interaction:
        for d in do_order:
            if str(d) in conv.self_weights:
                out[f"{nv}to_kernel_self.{d}"] = _Entry(f"{se}self_weights.{d}")
    return out


def _entries(model: NvidiaSE3Transformer) -> dict[str, _Entry]:
    """NVIDIA state-dict key -> where the tensor lives in ``model``, in NVIDIA's order."""
    nv = "transformer.graph_modules." if model.pooled else "graph_modules."
    out: dict[str, _Entry] = {}
    t = model.transformer
    div = model.args["channels_div"]
    hidden = model.nv_hidden
    f_in = model.nv_in
    idx = 0
    for i, (att, norm) in enumerate(t.blocks):
        # the fibers of NVIDIA's AttentionBlockSE3, in its Fiber order
        value = _nv_order((d, c // div) for d, c in hidden)
        key = _nv_order((d, c) for d, c in value if d in dict(f_in))
        kv = _nv_order((d, c + dict(key).get(d, 0)) for d, c in value)
        se = f"transformer.blocks.{i}."
        out |= _conv_entries(
            att.to_key_value, f"{nv}{idx}.to_key_value.", f"{se}0.to_key_value.", f_in, kv
        )
        for part, fout in (("to_query", key), ("project", hidden)):
            for d, _ in fout:
                out[f"{nv}{idx}.{part}.weights.{d}"] = _Entry(f"{se}0.{part}.weights.{d}")
        idx += 1
        if not isinstance(norm, nn.Identity):
            for w in ("weight", "bias"):
                out[f"{nv}{idx}.group_norm.{w}"] = _Entry(f"{se}1.group_norm.{w}")
            idx += 1
        f_in = hidden
    out |= _conv_entries(t.conv_out, f"{nv}{idx}.", "transformer.conv_out.", f_in, model.nv_out)
    if model.pooled:
        for i in (0, 2):
            for w in ("weight", "bias"):
                out[f"mlp.{i}.{w}"] = _Entry(f"mlp.{i}.{w}")
    return out


def expected_shapes(**kwargs) -> dict[str, tuple[int, ...]]:
    """NVIDIA's state-dict keys and shapes for these arguments (no weights needed)."""
    model = nvidia_model(**kwargs)
    params = dict(model.named_parameters())
    return {k: tuple(params[e.se3t].shape) for k, e in _entries(model).items()}


def _unwrap(state_dict) -> Mapping[str, Tensor]:
    if not isinstance(state_dict, Mapping):
        raise NvidiaStateDictError(
            f"nvidia: expected a state dict (mapping), got {type(state_dict).__name__}"
        )
    # a DLE training checkpoint ({'state_dict', 'optimizer_state_dict', 'epoch', ...})
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DDP
    return state_dict


def from_state_dict(state_dict, **kwargs) -> NvidiaSE3Transformer:
    """se3t model computing NVIDIA's function, with every tensor of ``state_dict`` loaded.

    ``state_dict``: NVIDIA's ``model.state_dict()`` or a DLE training checkpoint holding it
    under ``'state_dict'``. ``kwargs``: NVIDIA's model arguments (see the module docstring);
    fibers as ``{degree: channels}``. The model takes the state dict's floating dtype.
    """
    model = nvidia_model(**kwargs)
    sd = _unwrap(state_dict)
    entries = _entries(model)
    params = dict(model.named_parameters())
    unknown = [k for k in sd if k not in entries]
    if unknown:
        raise NvidiaStateDictError(
            f"nvidia: unknown key {unknown[0]!r} (shape {list(sd[unknown[0]].shape)}) in the "
            f"state dict: NVIDIA's model for these arguments has no such parameter"
            + (f" ({len(unknown)} unknown keys in all)" if len(unknown) > 1 else "")
        )
    missing = [k for k in entries if k not in sd]
    if missing:
        k = missing[0]
        raise NvidiaStateDictError(
            f"nvidia: missing key {k!r}: NVIDIA's model expects shape "
            f"{list(params[entries[k].se3t].shape)}"
            + (f" ({len(missing)} missing keys in all)" if len(missing) > 1 else "")
        )
    for k, e in entries.items():
        want, got = tuple(params[e.se3t].shape), tuple(sd[k].shape)
        if want != got:
            raise NvidiaStateDictError(
                f"nvidia: key {k!r} has shape {list(got)}, NVIDIA's model expects {list(want)}"
            )
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, e in entries.items():
            v = sd[k]
            params[e.se3t].copy_(e.to_se3t(v))
    return model


def to_state_dict(model: NvidiaSE3Transformer, *, grad: bool = False) -> dict[str, Tensor]:
    """NVIDIA's state dict of ``model`` (detached copies, NVIDIA's keys and layouts).

    ``grad``: the parameters' gradients instead (zeros where a parameter has none), in the
    same keys and layouts: what NVIDIA's ``p.grad`` holds after the same backward pass.
    """
    if not isinstance(model, NvidiaSE3Transformer):
        raise TypeError(f"nvidia.to_state_dict: expected NvidiaSE3Transformer, got {type(model)}")
    params = dict(model.named_parameters())
    out = {}
    for k, e in _entries(model).items():
        v = params[e.se3t].detach()
        if grad:
            g = params[e.se3t].grad
            v = g.detach() if g is not None else torch.zeros_like(v)
        out[k] = e.to_nvidia(v).clone()
    return out


# the level of NVIDIA's ConvSE3FuseLevel that computes each se3t fusion, by its NVIDIA name
_LEVEL_NAMES = {
    Fusion.FULL: NvidiaFuseLevel.FULL.name,
    Fusion.PER_OUTPUT: NvidiaFuseLevel.PARTIAL.name,
    Fusion.PER_INPUT: NvidiaFuseLevel.PARTIAL.name,
    Fusion.PAIRWISE: NvidiaFuseLevel.NONE.name,
}


def fuse_levels(model: NvidiaSE3Transformer) -> dict[str, str]:
    """NVIDIA's module name of every convolution -> the fuse level it uses (``used_fuse_level``
    of NVIDIA's ``ConvSE3``: "FULL", "PARTIAL" or "NONE")."""
    nv = "transformer.graph_modules." if model.pooled else "graph_modules."
    out, idx = {}, 0
    for att, norm in model.transformer.blocks:
        out[f"{nv}{idx}.to_key_value"] = _LEVEL_NAMES[att.to_key_value.fusion]
        idx += 1 if isinstance(norm, nn.Identity) else 2
    out[f"{nv}{idx}"] = _LEVEL_NAMES[model.transformer.conv_out.fusion]
    return out


# --------------------------------------------------------------------------------------------
# NVIDIA DLE training checkpoints for se3t evaluate / predict

# NVIDIA's runtime/training.py builds SE3TransformerPooled with these fibers for QM9
_DLE_DEFAULTS = dict(
    num_degrees=4,
    num_channels=32,
    num_layers=7,
    num_heads=8,
    channels_div=2,
    pooling="max",
    norm=True,
    use_layer_norm=True,
    tensor_cores=True,
    low_memory=False,
)
_SIDECAR_KEYS = {"model", "target", "mean", "std"}


class DLEModel(nn.Module):
    """An NVIDIA QM9 model as se3t's evaluation expects it: ``model(batch) -> [B, 1]``
    standardized predictions (NVIDIA's ``[B]`` with the target axis restored)."""

    def __init__(self, model: NvidiaSE3Transformer):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch).reshape(batch.num_graphs, -1)


def sidecar_path(checkpoint: str | Path) -> Path:
    """The default sidecar of a DLE checkpoint: the same name with ``.yaml``."""
    return Path(checkpoint).with_suffix(".yaml")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar YAML of a DLE checkpoint (docs/model.md): NVIDIA's model arguments under
    ``model`` (defaults: its QM9 training script's), the ``target`` and NVIDIA's
    standardization ``mean``/``std`` in se3t's unit of that target. Errors name the file and
    field."""
    import yaml  # deferred: only the CLI's NVIDIA path reads YAML here

    from se3t.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"NVIDIA checkpoint sidecar {str(path)!r} does not exist (give --nvidia-config, "
            f"a YAML file with 'model', 'target', 'mean', 'std': docs/model.md)"
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{str(path)!r}: not valid YAML ({err})") from err
    if not isinstance(doc, dict):
        raise InputError(f"{str(path)!r}: expected a mapping with {sorted(_SIDECAR_KEYS)}")
    unknown = sorted(set(doc) - _SIDECAR_KEYS)
    if unknown:
        raise InputError(
            f"{str(path)!r}: unknown field(s) {unknown} (known {sorted(_SIDECAR_KEYS)})"
        )
    for key in ("target", "mean", "std"):
        if key not in doc:
            raise InputError(f"{str(path)!r}: field {key!r} is missing")
    if not isinstance(doc["target"], str):
        raise InputError(
            f"{str(path)!r}: field 'target' must be a target name, got {doc['target']!r}"
        )
    for key in ("mean", "std"):
        if isinstance(doc[key], bool) or not isinstance(doc[key], (int, float)):
            raise InputError(f"{str(path)!r}: field {key!r} must be a number, got {doc[key]!r}")
    if not doc["std"] > 0:
        raise InputError(f"{str(path)!r}: field 'std' must be > 0, got {doc['std']!r}")
    model = doc.get("model") or {}
    if not isinstance(model, dict):
        raise InputError(f"{str(path)!r}: field 'model' must be a mapping of NVIDIA's arguments")
    kwargs = {**_DLE_DEFAULTS, **model}
    kwargs.setdefault("fiber_in", {0: 6})
    kwargs.setdefault("fiber_edge", {0: 4})
    kwargs.setdefault("fiber_out", {0: kwargs["num_degrees"] * kwargs["num_channels"]})
    kwargs.setdefault("output_dim", 1)
    return {"kwargs": kwargs, "target": doc["target"], "mean": doc["mean"], "std": doc["std"]}


def load_dle_checkpoint(checkpoint: str | Path, sidecar: str | Path | None = None):
    """``(DLEModel, stats)`` from NVIDIA's training checkpoint (``torch.save`` of
    ``{'state_dict', 'optimizer_state_dict', 'epoch', ...}``), read with ``weights_only=True``;
    ``stats`` as in se3t checkpoints (``targets``, ``mean``, ``std``)."""
    from se3t.errors import InputError

    checkpoint = Path(checkpoint)
    side = read_sidecar(sidecar if sidecar is not None else sidecar_path(checkpoint))
    if not checkpoint.is_file():
        raise InputError(f"NVIDIA checkpoint {str(checkpoint)!r} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"NVIDIA checkpoint {str(checkpoint)!r} cannot be loaded safely (weights_only): {first}"
        ) from err
    try:
        model = from_state_dict(state, **side["kwargs"])
    except (NvidiaStateDictError, ValueError, NotImplementedError) as err:
        raise InputError(f"NVIDIA checkpoint {str(checkpoint)!r}: {err}") from err
    stats = {
        "targets": [side["target"]],
        "mean": torch.tensor([float(side["mean"])]),
        "std": torch.tensor([float(side["std"])]),
    }
    return DLEModel(model.float()).eval(), stats
