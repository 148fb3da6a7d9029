"""The graph of one molecule, one rule for the build (:func:`graph_of`, run in worker processes
by :class:`GraphWork`) and for prediction on new molecules (:func:`edges_for`,
:func:`sample_for`).

A bond graph takes the input's own bonds when the dataset's bonds came from files (SDF, SMILES)
and the input has them, else bonds perceived from 3D (:func:`se3t.data.bonds.bond_graph`); a
radius graph has no bond types (``-1``), except where the dataset's encoding has bond-type edge
features on radius graphs too (QM9's), which keeps the perceived types of its bonded pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from se3t.data.bonds import EdgeList, bond_graph, directed, radius_graph, scaffold_of
from se3t.data.dataset import MoleculeSample
from se3t.data.elements import Encoding
from se3t.data.parse import FAR_FROM_ORIGIN, centered
from se3t.data.workers import fork_pool

__all__ = ["GraphSpec", "GraphWork", "edges_for", "graph_of", "sample_for"]


@dataclass(frozen=True)
class GraphSpec:
    """How the build makes each molecule's graph: ``graph`` bond | radius (``cutoff`` Å, at most
    ``max_neighbors`` sources per atom); ``scaffold``: also the Bemis-Murcko scaffold;
    ``typed_radius``: a radius graph keeps the perceived bond types of its bonded pairs."""

    graph: str
    cutoff: float
    max_neighbors: int | None = None
    scaffold: bool = False
    typed_radius: bool = False


def graph_of(
    species: np.ndarray, pos: np.ndarray, bonds, spec: GraphSpec
) -> tuple[EdgeList, str, str | None]:
    """(directed edges, how the bonds were found, scaffold SMILES or None) of one molecule.

    ``bonds``: the file's ``(i, j, code)`` bonds, or None to perceive them from 3D; ``how`` is
    ``"file"`` or :func:`~se3t.data.bonds.bond_graph`'s ok | pruned | fallback.
    """
    how, perceived = "file", None
    if bonds is None and (spec.graph == "bond" or spec.scaffold or spec.typed_radius):
        perceived, how = bond_graph(species, pos)
    if spec.graph == "bond":
        edges = perceived if perceived is not None else directed(list(bonds or []))
    else:
        typed = perceived if spec.typed_radius else None
        edges = radius_graph(pos, spec.cutoff, typed, spec.max_neighbors)
    if not spec.scaffold:
        return edges, how, None
    if bonds is None:
        src, dst, bt = perceived
        bonds = [(int(i), int(j), int(t)) for i, j, t in zip(src, dst, bt, strict=True) if i < j]
    return edges, how, scaffold_of(species, bonds)


def _graph_chunk(task):
    mols, spec = task
    return [graph_of(s, p, b, spec) for s, p, b in mols]


class GraphWork:
    """The build's graph-building tasks, ``chunk`` molecules each. With ``overlap`` the worker
    pool starts at the first full chunk and works while the records are still being read; a
    build of one chunk runs in this process. ``spec`` is set before the first :meth:`add`."""

    def __init__(self, chunk: int, processes: int, overlap: bool):
        self.size, self.processes, self.overlap = chunk, processes, overlap
        self.spec: GraphSpec | None = None
        self._chunk: list = []
        self._pending: list = []
        self._pool = None

    def add(self, mol) -> None:
        self._chunk.append((mol.species, mol.pos, mol.bonds))
        if len(self._chunk) == self.size:
            self._flush(last=False)

    def _flush(self, last: bool) -> None:
        if not self._chunk:
            return
        task, self._chunk = (self._chunk, self.spec), []
        if self._pool is None and self.overlap and self.processes > 1 and not last:
            self._pool = fork_pool(self.processes)
        self._pending.append(self._pool.apply_async(_graph_chunk, (task,)) if self._pool else task)

    def results(self, total: int, progress: bool) -> list:
        """``graph_of``'s result for every molecule added, in order."""
        self._flush(last=True)
        jobs = self._pending
        if self._pool is None and self.processes > 1 and len(jobs) > 1:
            self._pool = fork_pool(self.processes)
            jobs = [self._pool.apply_async(_graph_chunk, (t,)) for t in jobs]
        out: list = []
        with tqdm(total=total, desc="graphs", unit="mol", disable=not progress) as bar:
            for job in jobs:
                res = _graph_chunk(job) if isinstance(job, tuple) else job.get()
                out.extend(res)
                bar.update(len(res))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


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
    typed = graph == "radius" and encoding.edges == "bond_type"
    spec = GraphSpec(graph, cutoff, None if typed else max_neighbors, typed_radius=typed)
    return graph_of(species, pos, bonds if encoding.bonds == "file" else None, spec)[0]


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
