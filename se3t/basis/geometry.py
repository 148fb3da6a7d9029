"""The dataset geometry the bases depend on: positions and edges of a dataset store, in memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Geometry:
    """The arrays of a dataset store that the bases depend on, read once into memory."""

    path: str
    fingerprint: str
    pos: np.ndarray  # [A, 3] float32
    atom_offsets: np.ndarray  # [M+1] int64
    edge_offsets: np.ndarray  # [M+1] int64
    src: np.ndarray  # [E] int32 (local)
    dst: np.ndarray  # [E] int32 (local)

    @property
    def num_molecules(self) -> int:
        return len(self.edge_offsets) - 1

    @property
    def num_edges(self) -> int:
        return int(self.edge_offsets[-1])

    def edge_vec(self, m0: int, m1: int, dtype: torch.dtype) -> Tensor:
        """[E', 3] ``pos[dst] - pos[src]`` of molecules ``m0 .. m1-1``, in store order, computed
        as ``collate`` does (positions cast to ``dtype``, then subtracted)."""
        e0, e1 = int(self.edge_offsets[m0]), int(self.edge_offsets[m1])
        counts = np.diff(self.edge_offsets[m0 : m1 + 1])
        base = np.repeat(self.atom_offsets[m0:m1], counts)
        s = torch.from_numpy(base + self.src[e0:e1].astype(np.int64))
        d = torch.from_numpy(base + self.dst[e0:e1].astype(np.int64))
        pos = torch.from_numpy(self.pos)
        return pos[d].to(dtype) - pos[s].to(dtype)

    def edge_vec_of(self, edges: np.ndarray, dtype: torch.dtype) -> Tensor:
        """[K, 3] edge vectors of the given global edge indices."""
        mol = np.searchsorted(self.edge_offsets, edges, side="right") - 1
        base = self.atom_offsets[mol]
        pos = torch.from_numpy(self.pos)
        s = torch.from_numpy(base + self.src[edges].astype(np.int64))
        d = torch.from_numpy(base + self.dst[edges].astype(np.int64))
        return pos[d].to(dtype) - pos[s].to(dtype)


def load_geometry(path: str | os.PathLike) -> Geometry:
    """The dataset store's geometry (``se3t.data.store.open_dataset``, read-only)."""
    from se3t.data.store import open_dataset

    ds = open_dataset(path)
    return Geometry(
        path=str(path),
        fingerprint=ds.fingerprint,
        pos=np.array(ds.pos, dtype=np.float32, copy=True),  # writable: torch.from_numpy
        atom_offsets=np.asarray(ds.atom_offsets, dtype=np.int64),
        edge_offsets=np.asarray(ds.edge_offsets, dtype=np.int64),
        src=np.asarray(ds.src),
        dst=np.asarray(ds.dst),
    )
