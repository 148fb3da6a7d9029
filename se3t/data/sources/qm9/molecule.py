"""A new molecule for a model trained on QM9: one XYZ (QM9's format or plain) or SDF/MOL file ->
a :class:`~se3t.data.dataset.MoleculeSample`, its bonds perceived from the geometry exactly as
in the build (:func:`read_molecule`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from se3t.data.bonds import molecule_graph
from se3t.data.dataset import MoleculeSample
from se3t.data.parse import FAR_FROM_ORIGIN, MoleculeError, centered, check_geometry
from se3t.data.sources.qm9.vocabulary import ELEMENTS
from se3t.data.sources.qm9.xyz import parse_qm9_xyz
from se3t.errors import InputError

__all__ = ["read_molecule"]


def read_molecule(
    path: str | os.PathLike, *, graph: str = "bond", cutoff: float = 5.0
) -> MoleculeSample:
    """A new molecule from an XYZ (QM9 or plain) or SDF/MOL file, ready for ``collate``.

    Bonds are perceived from the 3D geometry as in ``se3t data build`` (the SDF's own bond
    block is ignored so that training and prediction see the same graphs). Raises InputError
    naming the file and field for anything unusable (QM9 elements H, C, N, O, F only).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".xyz":
            rec = parse_qm9_xyz(path.read_text(errors="replace"), str(path))
            species, pos, mol_id = rec.species, rec.pos, rec.mol_id
        elif suffix in (".sdf", ".mol", ".sd"):
            species, pos = _read_sdf(path)
            check_geometry(species, pos, str(path))
            mol_id = None
        else:
            raise InputError(f"{path}: unknown molecule format {suffix!r} (use .xyz, .sdf, .mol)")
    except MoleculeError as err:
        raise InputError(str(err)) from None
    (src, dst, bt), _ = molecule_graph(species, pos, graph, cutoff)
    return MoleculeSample(
        centered(pos, FAR_FROM_ORIGIN), species, src, dst, bt, None, mol_id, None, str(path)
    )


def _read_sdf(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # deferred: RDKit is slow to import; only reading new molecules needs it
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    mols = list(supplier)
    if not mols:
        raise InputError(f"{path}: no molecule record in the file")
    if len(mols) > 1:
        raise InputError(f"{path}: {len(mols)} molecule records; give one molecule per file")
    mol = mols[0]
    if mol is None:
        raise InputError(f"{path}: record 1: RDKit cannot read the molecule block")
    if mol.GetNumConformers() == 0:
        raise InputError(f"{path}: record 1: field 'coordinates': no 3D coordinates")
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    for k, s in enumerate(symbols):
        if s not in ELEMENTS:
            raise InputError(
                f"{path}: record 1: field 'atom {k + 1} element': {s!r} is not a QM9 element "
                f"(one of {', '.join(ELEMENTS)})"
            )
    species = np.array([ELEMENTS[s] for s in symbols], dtype=np.int8)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
    return species, pos
