"""Molecular graphs from 3D geometry: RDKit bond perception, or a radius graph.

**Bond graph.** RDKit's ``rdDetermineBonds.DetermineBonds(mol, charge=0)`` finds the
connectivity from covalent radii and then the bond orders (xyz2mol: the Kekulé structure whose
valences sum to total charge 0), after which sanitization marks aromatic rings. Some QM9
molecules are strained cages in which two non-bonded atoms lie close enough for the covalent
radius rule to bond them (a carbon with five bonds, an oxygen with three: about 5 % of QM9);
before perceiving orders we remove, atom by over-bonded atom, the bond longest relative to its
covalent radii (:func:`_prune_overbonded`). When orders still cannot be found (no neutral Kekulé
structure) we keep the connectivity with every bond single, and the caller counts the fallback.

**Radius graph.** Every ordered pair of distinct atoms closer than ``cutoff`` Å; pairs that are
also bonds keep their bond type, the others get ``-1`` (an all-zero edge feature).

Edges are directed, both directions present, sorted by (src, dst); indices are local to the
molecule.
"""

from __future__ import annotations

import numpy as np

from se3t.choices import Graph

__all__ = [
    "BOND_CODE",
    "BOND_TYPES",
    "MAX_DEGREE",
    "EdgeList",
    "bond_graph",
    "directed",
    "molecule_graph",
    "perceive",
    "radius_graph",
    "scaffold_of",
]

EdgeList = tuple[np.ndarray, np.ndarray, np.ndarray]  # src int32 [E], dst int32 [E], type int8 [E]

# The store's bond_type codes are the positions in BOND_TYPES (-1: a non-bonded pair of a radius
# graph); the edge features are their one-hot. BOND_CODE maps RDKit's bond type names to them.
BOND_TYPES = ("single", "double", "triple", "aromatic")
BOND_CODE = {name.upper(): code for code, name in enumerate(BOND_TYPES)}


def _rdkit_mol(species: np.ndarray, pos: np.ndarray):
    # deferred: RDKit is slow to import; only bond perception needs it
    from rdkit import Chem

    mol = Chem.RWMol()
    for z in species.tolist():
        mol.AddAtom(Chem.Atom(int(z)))
    conf = Chem.Conformer(len(species))
    for i, p in enumerate(pos.tolist()):
        conf.SetAtomPosition(i, p)
    mol.AddConformer(conf, assignId=True)
    return mol


def directed(pairs: list[tuple[int, int, int]]) -> EdgeList:
    """Both directions of every ``(i, j, code)`` bond, sorted by (src, dst)."""
    both = pairs + [(j, i, t) for i, j, t in pairs]
    both.sort()
    if not both:
        empty = np.empty(0, dtype=np.int32)
        return empty, empty.copy(), np.empty(0, dtype=np.int8)
    arr = np.asarray(both, dtype=np.int64)
    return arr[:, 0].astype(np.int32), arr[:, 1].astype(np.int32), arr[:, 2].astype(np.int8)


# the most bonds an atom of QM9 can have (N4 for a neutral molecule's ammonium-like centre)
MAX_DEGREE = {1: 1, 6: 4, 7: 4, 8: 2, 9: 1}


def _prune_overbonded(mol, pos: np.ndarray) -> int:
    """Remove spurious bonds from covalent-radius connectivity; returns how many.

    In strained cages (bicyclo[1.1.0]butanes, [1.1.1]propellane-like rings, oxetanes) two
    non-bonded atoms lie within 1.3 x the sum of their covalent radii, and the connectivity
    gives a carbon five bonds or an oxygen three. While some atom has more bonds than
    :data:`MAX_DEGREE` allows, drop the bond of such an atom that is longest relative to the
    sum of the covalent radii.
    """
    # deferred: RDKit is slow to import; only bond perception needs it
    from rdkit import Chem

    table = Chem.GetPeriodicTable()
    radius = [table.GetRcovalent(a.GetAtomicNum()) for a in mol.GetAtoms()]
    removed = 0
    while True:
        # elements beyond QM9's (users' own molecules) have no fixed bound and are not pruned
        over = [
            a
            for a in mol.GetAtoms()
            if a.GetDegree() > MAX_DEGREE.get(a.GetAtomicNum(), a.GetDegree())
        ]
        if not over:
            return removed
        stretch, i, j = max(
            (
                float(np.linalg.norm(pos[a.GetIdx()] - pos[b.GetOtherAtomIdx(a.GetIdx())]))
                / (radius[a.GetIdx()] + radius[b.GetOtherAtomIdx(a.GetIdx())]),
                a.GetIdx(),
                b.GetOtherAtomIdx(a.GetIdx()),
            )
            for a in over
            for b in a.GetBonds()
        )
        mol.RemoveBond(i, j)
        removed += 1


def perceive(species: np.ndarray, pos: np.ndarray):
    """(RDKit molecule with the perceived bonds, how) — see :func:`bond_graph`."""
    # deferred: RDKit is slow to import; only bond perception needs it
    from rdkit import RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    # RDKit's perception is not translation-invariant far from the origin (1e7 Å): centered
    pos = np.asarray(pos, dtype=np.float64)
    pos = pos - pos.mean(axis=0) if len(pos) else pos
    mol = _rdkit_mol(species, pos)
    try:
        rdDetermineBonds.DetermineConnectivity(mol)
    except (ValueError, RuntimeError):
        # an element without a covalent radius in RDKit's table: no bonds can be perceived
        return _rdkit_mol(species, pos), "fallback"
    how = "pruned" if _prune_overbonded(mol, pos) else "ok"
    pairs = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=0)
    except (ValueError, RuntimeError):
        single = _rdkit_mol(species, pos)  # the connectivity, every bond single
        for i, j in pairs:
            single.AddBond(i, j)
        return single, "fallback"
    return mol, how


def bond_graph(species: np.ndarray, pos: np.ndarray) -> tuple[EdgeList, str]:
    """Bonds perceived from geometry with total charge 0; returns (edges, how).

    ``how`` is ``"ok"`` (connectivity and orders as RDKit's ``DetermineBonds``), ``"pruned"``
    (spurious long bonds of over-bonded atoms removed first, then orders perceived) or
    ``"fallback"`` (orders could not be perceived: connectivity kept, every bond single).
    """
    mol, how = perceive(species, pos)
    pairs = [
        (b.GetBeginAtomIdx(), b.GetEndAtomIdx(), BOND_CODE.get(str(b.GetBondType()), 0))
        for b in mol.GetBonds()
    ]
    return directed(pairs), how


def radius_graph(
    pos: np.ndarray,
    cutoff: float,
    bonds: EdgeList | None = None,
    max_neighbors: int | None = None,
) -> EdgeList:
    """All ordered pairs i != j with |pos_j - pos_i| < cutoff; bond types from ``bonds``.

    ``max_neighbors``: keep only the nearest ``max_neighbors`` sources of each destination atom
    (ties by index), so the messages an atom receives are bounded in large molecules.
    """
    n = len(pos)
    d = np.linalg.norm(pos[None, :, :] - pos[:, None, :], axis=-1)
    mask = d < cutoff
    mask[np.arange(n), np.arange(n)] = False
    if max_neighbors is not None and n - 1 > max_neighbors:
        # per destination column j, rank the sources by distance (stable: ties by index)
        dd = np.where(mask, d, np.inf)
        rank = np.argsort(np.argsort(dd, axis=0, kind="stable"), axis=0, kind="stable")
        mask &= rank < max_neighbors
    src, dst = np.nonzero(mask)  # row-major: sorted by (src, dst)
    types = np.full(len(src), -1, dtype=np.int8)
    if bonds is not None and len(bonds[0]):
        table = np.full((n, n), -1, dtype=np.int8)
        table[bonds[0], bonds[1]] = bonds[2]
        types = table[src, dst]
    return src.astype(np.int32), dst.astype(np.int32), types


def molecule_graph(
    species: np.ndarray, pos: np.ndarray, graph: str = "bond", cutoff: float = 5.0
) -> tuple[EdgeList, str]:
    """The graph the build stores: ``graph="bond"`` or ``"radius"`` (with bond types), and how
    the bonds were perceived (see :func:`bond_graph`)."""
    bonds, how = bond_graph(species, pos)
    if graph == Graph.BOND:
        return bonds, how
    if graph == Graph.RADIUS:
        return radius_graph(pos, cutoff, bonds), how
    raise ValueError(f"graph must be one of {[g.value for g in Graph]}, got {graph!r}")


def scaffold_of(species: np.ndarray, bonds: list[tuple[int, int, int]]) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule given by its atoms and bonds (RDKit's
    ``MurckoScaffold``); empty for a molecule without a ring."""
    # deferred: RDKit is slow to import; only scaffold splits need it
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    aromatic = BOND_CODE["AROMATIC"]
    mol = Chem.RWMol()
    for z in np.asarray(species).tolist():
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j, t in bonds:
        mol.AddBond(int(i), int(j), getattr(Chem.BondType, BOND_TYPES[int(t)].upper()))
        if t == aromatic:
            mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    core = MurckoScaffold.GetScaffoldForMol(mol.GetMol())
    return Chem.MolToSmiles(core, canonical=True) if core.GetNumAtoms() else ""
