"""Batched molecular graphs on plain torch tensors (no DGL).

A :class:`Graph` holds the directed edges of a batch of molecules with global node indices;
a :class:`Batch` adds positions, features and targets. Edges point ``src -> dst``; the edge
vector is ``pos[dst] - pos[src]`` (the convention of the SE(3)-Transformer, where messages flow
from source to destination and the basis is evaluated on the relative position).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["Batch", "Graph"]


@dataclass
class Graph:
    src: Tensor  # [E] long, global node index of each edge's source
    dst: Tensor  # [E] long, global node index of each edge's destination
    node_graph: Tensor  # [N] long, molecule (graph) index of each node within the batch
    num_nodes: int
    num_graphs: int

    def __post_init__(self) -> None:
        if self.src.shape != self.dst.shape or self.src.dim() != 1:
            raise ValueError(
                f"Graph: src and dst must be 1-D of equal length, got {tuple(self.src.shape)} "
                f"and {tuple(self.dst.shape)}"
            )
        if self.node_graph.shape != (self.num_nodes,):
            raise ValueError(
                f"Graph: node_graph must have shape ({self.num_nodes},), "
                f"got {tuple(self.node_graph.shape)}"
            )

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    @property
    def edge_graph(self) -> Tensor:
        """[E] molecule index of each edge."""
        return self.node_graph[self.dst]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Graph:
        return replace(
            self,
            src=self.src.to(device, non_blocking=non_blocking),
            dst=self.dst.to(device, non_blocking=non_blocking),
            node_graph=self.node_graph.to(device, non_blocking=non_blocking),
        )


@dataclass
class Batch:
    graph: Graph
    pos: Tensor  # [N, 3] Å
    node_feats: Tensor  # [N, F_node]
    edge_feats: Tensor  # [E, F_edge] (bond one-hot; the model appends the edge length)
    y: Tensor | None = None  # [B, T] standardized targets
    mol_ids: Tensor | None = None  # [B] QM9 molecule ids (gdb index)
    # [B] rows of the molecules in the dataset store: the basis store is indexed by these
    # rows' edge ranges, so a batch can fetch its precomputed bases
    index: Tensor | None = None

    @property
    def edge_vec(self) -> Tensor:
        """[E, 3] relative positions pos[dst] - pos[src]."""
        return self.pos[self.graph.dst] - self.pos[self.graph.src]

    @property
    def num_graphs(self) -> int:
        return self.graph.num_graphs

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Graph)):
                value = value.to(device, non_blocking=non_blocking)
            moved[f.name] = value
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        pinned = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.pin_memory()
            elif isinstance(value, Graph):
                value = replace(
                    value,
                    src=value.src.pin_memory(),
                    dst=value.dst.pin_memory(),
                    node_graph=value.node_graph.pin_memory(),
                )
            pinned[f.name] = value
        return Batch(**pinned)
