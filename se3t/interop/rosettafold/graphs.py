"""The RF family's residue graphs: their ``make_full_graph`` / ``make_topk_graph`` on se3t's
:class:`Graph`, and the graph a wrapper call accepts (a :class:`ResidueGraph` or a DGLGraph)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from se3t.graph import Graph


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


def graph_and_positions(G) -> tuple[Graph, Tensor]:
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
