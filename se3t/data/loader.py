"""``collate``: molecules -> one :class:`~se3t.graph.Batch`, and a DataLoader built on it.

Nodes and edges are laid out molecule by molecule in batch order; each molecule's edges keep
the store's order (``src/dst[edge_offsets[r]:edge_offsets[r+1]]``), so the precomputed bases of
a batch are ``concat(basis[edge_offsets[r]:edge_offsets[r+1]] for r in batch.index)``. Local
atom indices become global by adding the molecule's first node index.

Features follow the samples' :class:`~se3t.data.elements.Encoding` (QM9's when they carry
none): ``node_feats [N, len(elements) + 1]`` = one-hot over the dataset's elements and the atomic
number Z (QM9: H, C, N, O, F, Z); ``edge_feats [E, 4]`` = one-hot of the bond type
(:data:`se3t.data.bonds.BOND_TYPES`), all zero for a non-bonded pair of a radius graph, or
``[E, 0]`` for a dataset whose radius graph has no bond types.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from se3t.data.dataset import MoleculeSample
from se3t.data.elements import QM9_ENCODING
from se3t.graph import Batch, Graph

__all__ = ["collate", "make_loader"]


def collate(samples: Sequence[MoleculeSample]) -> Batch:
    """Batch molecules into one disconnected graph (see the module docstring for the layout).

    ``y`` is [B, T] when every sample has targets, else None; ``index`` (store rows) and
    ``mol_ids`` likewise.
    """
    b = len(samples)
    if b == 0:
        raise ValueError("collate: empty batch")
    n_atoms = np.fromiter((len(s.species) for s in samples), np.int64, b)
    n_edges = np.fromiter((len(s.src) for s in samples), np.int64, b)
    species = np.concatenate([s.species for s in samples])  # [N]
    pos = np.concatenate([s.pos for s in samples])  # [N, 3]
    bond_type = np.concatenate([s.bond_type for s in samples])  # [E]
    first = np.cumsum(n_atoms) - n_atoms  # [B] global index of each molecule's first node
    shift = np.repeat(first, n_edges)  # [E]
    src = np.concatenate([s.src for s in samples]).astype(np.int64) + shift
    dst = np.concatenate([s.dst for s in samples]).astype(np.int64) + shift
    node_graph = np.repeat(np.arange(b, dtype=np.int64), n_atoms)
    num_nodes = int(first[-1] + n_atoms[-1])

    enc = samples[0].encoding or QM9_ENCODING
    if any((s.encoding or QM9_ENCODING) != enc for s in samples[1:]):
        raise ValueError("collate: the samples come from datasets with different encodings")
    y = index = mol_ids = None
    if all(s.y is not None for s in samples):
        y = torch.from_numpy(np.stack([s.y for s in samples]).astype(np.float32, copy=False))
    if all(s.index is not None for s in samples):
        index = torch.tensor([s.index for s in samples], dtype=torch.long)
    if all(s.mol_id is not None for s in samples):
        mol_ids = torch.tensor([s.mol_id for s in samples], dtype=torch.long)
    graph = Graph(
        src=torch.from_numpy(src),
        dst=torch.from_numpy(dst),
        node_graph=torch.from_numpy(node_graph),
        num_nodes=num_nodes,
        num_graphs=b,
    )
    return Batch(
        graph=graph,
        pos=torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float32)),
        node_feats=torch.from_numpy(enc.node_features_of(species)),
        edge_feats=torch.from_numpy(enc.edge_features_of(bond_type)),
        y=y,
        mol_ids=mol_ids,
        index=index,
    )


def make_loader(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    sampler=None,
    seed: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` with :func:`collate` (pass a DistributedSampler for DDP)."""
    generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
