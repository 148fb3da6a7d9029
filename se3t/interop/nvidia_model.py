"""The se3t model that computes NVIDIA's SE3Transformer function from NVIDIA's constructor
arguments (:class:`NvidiaSE3Transformer`; the whole story in :mod:`se3t.interop.nvidia`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from se3t.choices import NvidiaFuseLevel
from se3t.graph import Batch, Graph
from se3t.models.transformer import SE3Transformer
from se3t.nn.graph_ops import scatter_max, scatter_mean
from se3t.so3.basis import basis_size, compute_basis_flat
from se3t.so3.fiber import Fiber

__all__ = [
    "NVIDIA_COMMIT",
    "NvidiaSE3Transformer",
    "NvidiaStateDictError",
    "TIE_ULPS",
    "nv_order",
    "nvidia_model",
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
        self.nv_in = nv_order(a["fiber_in"].items())
        self.nv_out = nv_order(a["fiber_out"].items())
        if pooled:
            self.nv_hidden = nv_order((d, a["num_channels"]) for d in range(a["num_degrees"]))
            self.fiber_hidden = Fiber.create(a["num_degrees"], a["num_channels"])
            self.return_type = 0
            self.pool = a.get("pooling") or "max"
        else:
            self.fiber_hidden = _fiber(a["fiber_hidden"], "fiber_hidden")
            self.nv_hidden = nv_order(a["fiber_hidden"].items())
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


def nv_order(items) -> list[tuple[int, int]]:
    """The iteration order of NVIDIA's ``Fiber`` built from ``(degree, channels)`` items: a
    stable sort by channels (its ``__init__``). It orders NVIDIA's ModuleDicts and so its
    state-dict keys."""
    return sorted(((int(d), int(c)) for d, c in items), key=lambda t: t[1])


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
