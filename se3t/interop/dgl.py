"""Convert a DGL graph (NVIDIA's SE3Transformer QM9 layout) to se3t's :class:`Batch`.

dgl is optional (``pip install se3t[dgl]``) and imported by nobody else in se3t; this module
only reads the graph's tensors, so it works with any dgl version that has ``batch_num_nodes``.
"""

from __future__ import annotations

import torch

from se3t.graph import Batch, Graph

__all__ = ["from_dgl", "graph_of"]


def graph_of(g) -> Graph:
    """The topology of a ``DGLGraph`` (possibly batched) as se3t's :class:`Graph`: its edges
    in DGL's order, its nodes, and the graph of every node."""
    src, dst = g.edges()
    counts = g.batch_num_nodes()
    node_graph = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    return Graph(src.long(), dst.long(), node_graph.long(), int(g.num_nodes()), len(counts))


def from_dgl(
    g,
    pos_key: str = "pos",
    node_key: str = "attr",
    edge_key: str = "edge_attr",
    y: torch.Tensor | None = None,
) -> Batch:
    """``DGLGraph`` (possibly batched) -> :class:`Batch`.

    Node positions from ``g.ndata[pos_key]`` ``[N, 3]``, node features from
    ``g.ndata[node_key]`` ``[N, F]`` (a trailing singleton axis is dropped), edge features from
    ``g.edata[edge_key]`` ``[E, F]``. Raises ``ValueError`` naming a missing key.
    """
    for store, key, what in (
        (g.ndata, pos_key, "ndata"),
        (g.ndata, node_key, "ndata"),
        (g.edata, edge_key, "edata"),
    ):
        if key not in store:
            raise ValueError(f"from_dgl: graph.{what} has no {key!r} (has {sorted(store.keys())})")
    nf = g.ndata[node_key]
    ef = g.edata[edge_key]
    graph = graph_of(g)
    return Batch(
        graph=graph,
        pos=g.ndata[pos_key],
        node_feats=nf.squeeze(-1) if nf.dim() == 3 else nf,
        edge_feats=ef.squeeze(-1) if ef.dim() == 3 else ef,
        y=y,
    )
