"""The sources of the dataset build (:mod:`se3t.data.build`): QM9 (:mod:`se3t.data.sources.qm9`)
and users' own molecules (:mod:`se3t.data.sources.own`), read by the readers for extended XYZ
(ASE), SDF (RDKit), a folder of XYZ files with a CSV of properties, and a CSV of SMILES
(conformers by ETKDG + MMFF).

Every reader yields, per input record, a :class:`Molecule` or a
:class:`~se3t.data.parse.MoleculeError` (a record that cannot be used: the build drops it with
a reason in the build report, or stops with ``data.strict``); a problem with a whole file is an
:class:`~se3t.errors.InputError` naming it. Properties are kept as the text or number the file
has; the build decides which become targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from se3t.data.bonds import BOND_CODE
from se3t.data.parse import MoleculeError

__all__ = ["FORMATS", "Molecule", "bonds_of", "parse_value"]

FORMATS = ("extxyz", "sdf", "xyz_dir", "smiles")


@dataclass
class Molecule:
    """One record of an input, as every source gives it to the build.

    ``index``: the record's position in the input (0-based); ``id``: its id as text (the id
    column / property / info key, else the index); ``species`` [n] atomic numbers; ``pos``
    [n, 3] Å; ``props``: property name -> value as read (str, number or None); ``bonds``:
    ``(i, j, code)`` from the file's bond block or SMILES graph (codes of
    :data:`se3t.data.bonds.BOND_CODE`), None when the input has none.
    """

    index: int
    id: str
    species: np.ndarray
    pos: np.ndarray
    props: dict[str, Any]
    where: str
    bonds: list[tuple[int, int, int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def bonds_of(mol) -> list[tuple[int, int, int]]:
    """The bonds of an RDKit molecule as ``(i, j, code)`` (dative and other kinds: single)."""
    return [
        (b.GetBeginAtomIdx(), b.GetEndAtomIdx(), BOND_CODE.get(str(b.GetBondType()), 0))
        for b in mol.GetBonds()
    ]


def parse_value(value: Any, where: str, name: str) -> float:
    """A property value as float: numbers as they are, text parsed, ``None``/empty/``nan`` give
    NaN (a missing value, masked in training); other text is a MoleculeError naming the field."""
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        raise MoleculeError(where, name, f"{value!r} is not a number", "not_a_number")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "na", "n/a", "none", "null"):
        return float("nan")
    try:
        return float(text.replace("*^", "e"))
    except ValueError:
        raise MoleculeError(where, name, f"{text!r} is not a number", "not_a_number") from None
