"""The graph of one molecule as the build stores it, for prediction on new molecules.

One rule for the build of users' data and for ``se3t predict``: a bond graph takes the input's
own bonds when the dataset's bonds came from files (SDF, SMILES) and the input has them, else
bonds perceived from 3D exactly as for QM9; a radius graph has no bond types (``-1``), except
QM9's, which keeps them (its encoding has bond-type edge features on radius graphs too).
"""

from __future__ import annotations

import numpy as np

from se3t.data.bonds import EdgeList, _directed, bond_graph, molecule_graph, radius_graph
from se3t.data.dataset import MoleculeSample
from se3t.data.elements import Encoding
from se3t.data.parse import FAR_FROM_ORIGIN, centered

__all__ = ["edges_for", "sample_for"]


def edges_for(
    species: np.ndarray,
    pos: np.ndarray,
    bonds: list[tuple[int, int, int]] | None,
    encoding: Encoding,
    graph: str,
    cutoff: float,
    max_neighbors: int | None = None,
) -> EdgeList:
    """Directed edges ``(src, dst, bond_type)`` of one molecule (see the module docstring)."""
    if graph == "radius" and encoding.edges == "bond_type":
        return molecule_graph(species, pos, "radius", cutoff)[0]
    if graph == "bond":
        if bonds is not None and encoding.bonds == "file":
            return _directed(list(bonds))
        return bond_graph(species, pos)[0]
    return radius_graph(pos, cutoff, None, max_neighbors)


def sample_for(species, pos, bonds, encoding: Encoding, data) -> MoleculeSample:
    """A :class:`MoleculeSample` for ``collate`` with the graph that ``data`` (the config's
    data section) and ``encoding`` prescribe."""
    src, dst, bt = edges_for(
        species, pos, bonds, encoding, data.graph, float(data.cutoff), data.max_neighbors
    )
    return MoleculeSample(
        centered(pos, FAR_FROM_ORIGIN),
        np.asarray(species, dtype=np.int8),
        src,
        dst,
        bt,
        encoding=encoding,
    )
