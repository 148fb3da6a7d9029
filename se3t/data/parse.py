"""What every reader shares: :class:`MoleculeError`, numbers, geometry checks, the one XYZ parser.

A problem with one molecule raises :class:`MoleculeError`, which names the file, the record and
the field; the build drops that molecule with a line in the build report (or stops, with
``strict``). A problem with a whole file (unreadable, truncated archive, missing column) raises
:class:`~se3t.errors.InputError`.

**XYZ** (:func:`parse_xyz`): line 1 the atom count n, line 2 a comment, then n lines ``El x y z``
(extra columns ignored; the element a symbol or an atomic number), then, in formats that have
them, a fixed number of trailing lines (QM9's frequencies, SMILES and InChI). Numbers may be
written as Mathematica writes them (``1.2*^-6``, ``0.``), which :func:`parse_number` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from se3t.data.elements import atomic_number
from se3t.errors import InputError

__all__ = [
    "FAR_FROM_ORIGIN",
    "MIN_DISTANCE",
    "MoleculeError",
    "Record",
    "centered",
    "check_geometry",
    "parse_number",
    "parse_xyz",
]

# Two atoms closer than this (Å) are the same point for the model: a zero-length edge makes the
# spherical-harmonic basis NaN. QM9's shortest bond (H-H, C-H) is ~0.74-1.1 Å.
MIN_DISTANCE = 0.1


class MoleculeError(InputError):
    """One molecule cannot be used. ``reason`` is the parse report's key for it."""

    def __init__(self, where: str, field: str, message: str, reason: str):
        super().__init__(f"{where}: field {field!r}: {message}")
        self.where = where
        self.field = field
        self.reason = reason


def parse_number(text: str, where: str, field: str) -> float:
    """A float from QM9's Mathematica text: ``1.2*^-6``, ``0.``, ``-3.5``, ``2.1E-6``."""
    try:
        return float(text.replace("*^", "e"))
    except ValueError:
        raise MoleculeError(where, field, f"{text!r} is not a number", "not_a_number") from None


# beyond this distance from the origin (Å) float32 keeps less than 1e-3 Å of a position
FAR_FROM_ORIGIN = 1e4


def centered(pos: np.ndarray, beyond: float = 0.0) -> np.ndarray:
    """``pos`` [n, 3] as float32, moved to its centroid in float64 first when some coordinate
    lies farther than ``beyond`` Å from the origin (0: always). The model sees only relative
    positions, and a molecule far from the origin (1e7 Å: float32's spacing there is 1 Å)
    keeps them only when it is centered before the cast."""
    pos64 = np.asarray(pos, dtype=np.float64)
    if len(pos64) == 0 or not np.abs(pos64).max() > beyond:
        return pos64.astype(np.float32)
    return (pos64 - pos64.mean(axis=0)).astype(np.float32)


def check_geometry(species: np.ndarray, pos: np.ndarray, where: str) -> None:
    """At least one atom, finite coordinates within float32's range (positions are stored and
    used as float32: 1e300 would become inf) and no two atoms closer than :data:`MIN_DISTANCE`
    Å."""
    if len(species) == 0:
        raise MoleculeError(where, "atom count", "the molecule has no atoms", "atom_count")
    bad = ~(np.abs(pos) <= np.finfo(np.float32).max)  # NaN, inf, and beyond float32
    if bad.any():
        atom = int(np.nonzero(bad.any(axis=1))[0][0])
        raise MoleculeError(
            where,
            f"atom {atom + 1} coordinates",
            f"{pos[atom].tolist()} is not finite in float32 (|x| <= 3.4e38 Å)",
            "non_finite_coordinate",
        )
    n = len(species)
    if n > 1:
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
        d[np.arange(n), np.arange(n)] = np.inf
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        if d[i, j] < MIN_DISTANCE:
            i, j = sorted((int(i), int(j)))
            raise MoleculeError(
                where,
                f"atoms {i + 1} and {j + 1} coordinates",
                f"the atoms lie {d[i, j]:.3g} Å apart (< {MIN_DISTANCE} Å): same position",
                "coincident_atoms",
            )


@dataclass
class Record:
    """One molecule parsed from a file that carries its targets in a fixed order.

    ``mol_id`` is the file's integer id (None when it has none); ``targets`` [T] float64 are in
    the stored units and the source's target order, or None for a molecule without them (read
    for prediction). ``where`` names the file and record it came from (for errors).
    """

    mol_id: int | None
    species: np.ndarray  # [n] int8 atomic numbers
    pos: np.ndarray  # [n, 3] float64 Å
    targets: np.ndarray | None  # [T] float64
    where: str


def _element(symbol: str, k: int, where: str, elements: Mapping[str, int] | None) -> int:
    if elements is not None:
        z = elements.get(symbol, 0)
        allowed = f"one of {', '.join(elements)}"
    else:
        z = int(symbol) if symbol.isdigit() else atomic_number(symbol)
        allowed = ""
    if not 0 < z <= 118:
        raise MoleculeError(
            where,
            f"atom {k + 1} element",
            f"{symbol!r} is not "
            + (f"an element of this input ({allowed})" if allowed else "a chemical element"),
            "unknown_element",
        )
    return z


def _atom_count(lines: list[str], where: str) -> int:
    if not lines:
        raise MoleculeError(where, "atom count", "the file is empty", "atom_count")
    try:
        n = int(lines[0].strip())
    except ValueError:
        raise MoleculeError(
            where, "atom count", f"line 1 {lines[0].strip()!r} is not an integer", "atom_count"
        ) from None
    if n <= 0:
        raise MoleculeError(where, "atom count", f"{n} atoms", "atom_count")
    return n


def parse_xyz(
    text: str,
    where: str,
    *,
    trailing: int = 0,
    elements: Mapping[str, int] | None = None,
    kind: str = "plain XYZ",
) -> tuple[str, np.ndarray, np.ndarray]:
    """``(comment line, species [n] int8, pos [n, 3] float64 Å)`` of one XYZ molecule.

    The file must have exactly n + 2 + ``trailing`` lines (trailing blank lines aside; ``kind``
    names the format in that message). ``elements`` (symbol -> Z) restricts the elements an
    input may hold; without it any symbol or atomic number is taken. The geometry is checked
    (:func:`check_geometry`).
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    n = _atom_count(lines, where)
    expected = n + 2 + trailing
    if len(lines) != expected:
        raise MoleculeError(
            where,
            "atom count",
            f"line 1 says {n} atoms but the file has {len(lines)} lines ({kind} needs {expected})",
            "atom_count",
        )
    atom_lines = [line.split() for line in lines[2 : 2 + n]]
    for k, parts in enumerate(atom_lines):
        if len(parts) < 4:
            raise MoleculeError(
                where,
                f"atom {k + 1}",
                f"line {k + 3} {lines[k + 2].strip()!r} needs an element and x, y, z",
                "atom_count",
            )
    species = np.empty(n, dtype=np.int8)
    pos = np.empty((n, 3), dtype=np.float64)
    for k, parts in enumerate(atom_lines):
        for c in range(3):
            pos[k, c] = parse_number(parts[1 + c], where, f"atom {k + 1} {'xyz'[c]}")
    for k, parts in enumerate(atom_lines):
        species[k] = _element(parts[0], k, where, elements)
    check_geometry(species, pos, where)
    return lines[1], species, pos
