"""SDF (V2000 and V3000) with 3D coordinates and SD properties, read with RDKit.

``Chem.SDMolSupplier(path, removeHs=False, sanitize=True)``: hydrogens stay as the file has
them, and sanitization marks aromatic bonds, so bond types are those QM9's perceived bonds get.
Bonds come from the file's bond block. The id is the SD property ``data.id_column`` when given,
else the record's title line, else its index. A record RDKit cannot parse or sanitize, or one
whose coordinates are 2D (RDKit's reading of the header) or absent, is a MoleculeError naming
the record.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.data.parse import MoleculeError
from se3t.data.sources import Molecule, bonds_of
from se3t.data.sources.text import decode
from se3t.errors import InputError

__all__ = ["iter_sdf"]


def _title(text: str) -> str:
    """The record's first line, shortened and quoted when it is not plain text (so a message
    naming the record stays one readable line)."""
    title = text.split("\n", 1)[0].strip() if text else ""
    if title.isprintable() and len(title) <= 80:
        return title
    return repr(title[:40]) + ("..." if len(title) > 40 else "")


def iter_sdf(path: str | Path, id_key: str | None = None) -> Iterator[Molecule | MoleculeError]:
    """Molecules of an SDF file, in file order. A file that is not UTF-8 (a Latin-1 title,
    UTF-16) is read through a UTF-8 copy (:mod:`se3t.data.sources.text`): RDKit hands its
    text to Python as UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    text, _ = decode(data, path, record_mark=b"$$$$")
    if text.encode("utf-8") == data:
        yield from _iter_sdf(path, path, id_key)
        return
    with tempfile.TemporaryDirectory(prefix="se3t-sdf-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(text, encoding="utf-8")
        yield from _iter_sdf(copy, path, id_key)


def _iter_sdf(readable: Path, path: Path, id_key: str | None) -> Iterator[Molecule | MoleculeError]:
    """The records of ``readable`` (UTF-8), named after ``path`` (the user's file)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        supplier = Chem.SDMolSupplier(str(readable), removeHs=False, sanitize=True)
        count = len(supplier)
    except (OSError, RuntimeError) as err:
        raise InputError(f"{path}: not readable as SDF: {err}") from None
    if count == 0:
        raise InputError(f"{path}: no molecule record (an empty SDF file)")
    for k in range(count):
        mol = supplier[k]
        if mol is None:
            title = _title(supplier.GetItemText(k))
            yield MoleculeError(
                f"{path.name}: record {k} (id {title or k})",
                "molecule block",
                "RDKit cannot parse or sanitize the record (bad atom/bond block, unknown "
                "element or impossible valence)",
                "unparsable_record",
            )
            continue
        props = {name: mol.GetProp(name) for name in mol.GetPropNames()}
        title = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        own = str(props.pop(id_key)).strip() if id_key and id_key in props else ""
        mol_id = own or title or str(k)
        where = f"{path.name}: record {k} (id {mol_id})"
        species = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        if (species <= 0).any():
            a = int(np.nonzero(species <= 0)[0][0])
            yield MoleculeError(
                where,
                f"atom {a + 1} element",
                f"{mol.GetAtomWithIdx(a).GetSymbol()!r} is a query or dummy atom, not an element",
                "unknown_element",
            )
            continue
        if mol.GetNumConformers() == 0:
            yield MoleculeError(where, "coordinates", "the record has none", "no_coordinates")
            continue
        conf = mol.GetConformer()
        pos = np.asarray(conf.GetPositions(), dtype=np.float64)
        # RDKit's flag: the header's 2D/3D code, or "2D" when a file without one has every z
        # zero (a planar molecule with 3D coordinates in a file marked 3D is fine)
        if not conf.Is3D():
            yield MoleculeError(where, "coordinates", "2D: 3D coordinates needed", "not_3d")
            continue
        yield Molecule(k, mol_id, species, pos, props, where, bonds_of(mol))
