"""Parse QM9 from its two published formats into :class:`~se3t.data.qm9.Record` s.

- **XYZ** (figshare ``dsgdb9nsd.xyz.tar.bz2``; one file per molecule): line 1 the atom count n;
  line 2 ``gdb ID A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``; n lines
  ``El x y z mulliken``; then harmonic frequencies, SMILES and InChI lines. Numbers are written by
  Mathematica: ``1.2*^-6`` for 1.2e-6 and ``0.``/``1.`` with a bare point, which
  :func:`parse_number` reads.
- **CSV** (qm9pack ``qm9_part{1,2,3}.csv``): one row per molecule with ``Elements`` and
  ``XYZ_Ang`` as bracketed lists and the properties in atomic units.

Both give identical records. A problem with one molecule raises :class:`MoleculeError`, which
names the file, the record and the field; the build drops that molecule with a line in the parse
report (or stops, with ``strict``). A problem with a whole file (unreadable, truncated archive,
missing column) raises :class:`~se3t.errors.InputError`.
"""

from __future__ import annotations

import csv
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.config import QM9_TARGETS
from se3t.data.qm9 import ELEMENTS, TARGET_SCALE, Record
from se3t.errors import InputError

__all__ = [
    "CSV_TARGET_COLUMNS",
    "MIN_DISTANCE",
    "MoleculeError",
    "check_geometry",
    "iter_csv",
    "iter_xyz_archive",
    "iter_xyz_dir",
    "parse_number",
    "parse_xyz",
    "read_uncharacterized",
]

# qm9pack's column of each target (its spelling, "Enthalphy", included)
CSV_TARGET_COLUMNS = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",
    "G": "GibbsFreeEnergy_298K_au",
    "Cv": "Heatcapacity_Cv_cal_mol_K",
}
CSV_REQUIRED = ("XYZ_file", "Index", "N_atoms", "Elements", "XYZ_Ang", *CSV_TARGET_COLUMNS.values())

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


def _species(symbols: list[str], where: str) -> np.ndarray:
    out = np.empty(len(symbols), dtype=np.int8)
    for k, s in enumerate(symbols):
        z = ELEMENTS.get(s)
        if z is None:
            raise MoleculeError(
                where,
                f"atom {k + 1} element",
                f"{s!r} is not a QM9 element (one of {', '.join(ELEMENTS)})",
                "unknown_element",
            )
        out[k] = z
    return out


# ----------------------------------------------------------------------------------------- XYZ


def parse_xyz(text: str, where: str, *, qm9: bool | None = None) -> Record:
    """One molecule from XYZ text: QM9's format (``gdb`` line with properties) or plain XYZ.

    ``qm9=None`` detects the format from line 2; QM9 records must have exactly n + 5 lines
    (atoms, frequencies, SMILES, InChI), plain ones n + 2 (trailing blank lines aside).
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
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
    header = lines[1].split() if len(lines) > 1 else []
    is_qm9 = (len(header) >= 17 and header[0] == "gdb") if qm9 is None else qm9
    expected = n + 5 if is_qm9 else n + 2
    atom_lines = lines[2 : 2 + n]
    if len(lines) != expected:
        raise MoleculeError(
            where,
            "atom count",
            f"line 1 says {n} atoms but the file has {len(lines)} lines "
            f"({'QM9' if is_qm9 else 'plain'} XYZ needs {expected})",
            "atom_count",
        )
    for k, line in enumerate(atom_lines):
        if len(line.split()) < 4:
            raise MoleculeError(
                where,
                f"atom {k + 1}",
                f"line {k + 3} {line.strip()!r} needs an element and x, y, z",
                "atom_count",
            )
    mol_id: int | None = None
    targets = None
    if is_qm9:
        if len(header) < 17 or header[0] != "gdb":
            raise MoleculeError(
                where,
                "properties",
                "line 2 must be 'gdb ID A B C' and the 12 properties",
                "properties",
            )
        try:
            mol_id = int(header[1])
        except ValueError:
            raise MoleculeError(
                where, "gdb id", f"{header[1]!r} is not an integer", "properties"
            ) from None
        values = [
            parse_number(v, where, name) for v, name in zip(header[5:17], QM9_TARGETS, strict=True)
        ]
        targets = np.asarray(values, dtype=np.float64) * TARGET_SCALE
        if not np.isfinite(targets).all():
            name = QM9_TARGETS[int(np.nonzero(~np.isfinite(targets))[0][0])]
            raise MoleculeError(where, name, "is not finite", "properties")
    symbols = []
    pos = np.empty((n, 3), dtype=np.float64)
    for k, line in enumerate(atom_lines):
        parts = line.split()
        symbols.append(parts[0])
        for c in range(3):
            pos[k, c] = parse_number(parts[1 + c], where, f"atom {k + 1} {'xyz'[c]}")
    species = _species(symbols, where)
    check_geometry(species, pos, where)
    return Record(mol_id=mol_id, species=species, pos=pos, targets=targets, where=where)


def _mol_id_from_name(name: str) -> int | None:
    stem = Path(name).name.rsplit(".", 1)[0]
    digits = stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else None


def iter_xyz_archive(path: str | Path) -> Iterator[Record | MoleculeError]:
    """Records of a tar archive (any compression) of QM9 XYZ files, in archive order.

    Yields a :class:`MoleculeError` (does not raise) for a bad molecule so the caller can count
    and go on; raises :class:`InputError` when the archive itself is corrupt or truncated.
    """
    path = Path(path)
    member = "(archive header)"
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                member = info.name
                if not info.isfile() or not info.name.endswith(".xyz"):
                    continue
                fh = tar.extractfile(info)
                assert fh is not None
                text = fh.read().decode("utf-8", errors="replace")
                where = f"{path.name}:{info.name}"
                yield _safe_parse(text, where, info.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise InputError(
            f"{path}: archive is corrupt or truncated (while reading member {member!r}): {err}"
        ) from err


def _safe_parse(text: str, where: str, name: str) -> Record | MoleculeError:
    try:
        rec = parse_xyz(text, where, qm9=True)
    except MoleculeError as err:
        return err
    from_name = _mol_id_from_name(name)
    if from_name is not None and rec.mol_id != from_name:
        return MoleculeError(
            where,
            "gdb id",
            f"{rec.mol_id} disagrees with the file name's {from_name}",
            "properties",
        )
    return rec


def iter_xyz_dir(path: str | Path) -> Iterator[Record | MoleculeError]:
    """Records of a directory of QM9 XYZ files (sorted by name)."""
    path = Path(path)
    for file in sorted(path.rglob("*.xyz")):
        try:
            text = file.read_text(errors="replace")
        except OSError as err:
            raise InputError(f"{file}: cannot read: {err}") from err
        yield _safe_parse(text, str(file), file.name)


def read_uncharacterized(path: str | Path) -> set[int]:
    """gdb ids listed in figshare's ``uncharacterized.txt``: the rows ``INDEX GDB17-SMILES
    B3LYP-SMILES CORINA-SMILES D_IJ`` between the ``=`` separators; the prose header, the
    ``#`` column header and the separators have no leading integer. A file with no row at all
    (say an error page saved under that name) is an error, not an empty list."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err}") from err
    ids: set[int] = set()
    for line in text.splitlines():
        tok = line.split()
        if tok and tok[0].isdigit():
            ids.add(int(tok[0]))
    if not ids:
        raise InputError(
            f"{path}: no molecule indices found (expected rows 'INDEX SMILES SMILES SMILES D_IJ' "
            "as in figshare's uncharacterized.txt)"
        )
    return ids


# ----------------------------------------------------------------------------------------- CSV


def _split_list(text: str) -> list[str]:
    return text.replace("[", "").replace("]", "").replace("'", "").replace('"', "").split(",")


def iter_csv(path: str | Path) -> Iterator[Record | MoleculeError]:
    """Records of one qm9pack CSV file (``qm9_partK.csv``), in row order."""
    path = Path(path)
    csv.field_size_limit(1 << 26)
    try:
        # QM9 is ASCII: a byte that is not UTF-8 makes its record unparsable, not the file
        fh = open(path, newline="", encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err}") from err
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: the CSV file is empty (no header)") from None
        except csv.Error as err:
            raise InputError(f"{path}: line 1: not CSV: {err}") from err
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                f"(qm9pack's header has {', '.join(CSV_REQUIRED)})"
            )
        col = {c: header.index(c) for c in CSV_REQUIRED}
        tcols = [col[CSV_TARGET_COLUMNS[t]] for t in QM9_TARGETS]
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise InputError(f"{path}: line {reader.line_num}: not CSV: {err}") from err
            line = reader.line_num
            if not row:
                continue
            name = row[col["XYZ_file"]] if len(row) > col["XYZ_file"] else "?"
            where = f"{path.name}: line {line} ({name})"
            if len(row) != len(header):
                yield MoleculeError(
                    where, "row", f"{len(row)} fields, the header has {len(header)}", "row_length"
                )
                continue
            try:
                yield _csv_record(row, col, tcols, where)
            except MoleculeError as err:
                yield err


def _csv_record(row: list[str], col: dict[str, int], tcols: list[int], where: str) -> Record:
    try:
        mol_id = int(row[col["Index"]])
    except ValueError:
        raise MoleculeError(
            where, "Index", f"{row[col['Index']]!r} is not an integer", "properties"
        ) from None
    try:
        n = int(row[col["N_atoms"]])
    except ValueError:
        raise MoleculeError(
            where, "N_atoms", f"{row[col['N_atoms']]!r} is not an integer", "atom_count"
        ) from None
    symbols = [s.strip() for s in _split_list(row[col["Elements"]])]
    coords = _split_list(row[col["XYZ_Ang"]])
    if len(symbols) != n or len(coords) != 3 * n:
        raise MoleculeError(
            where,
            "N_atoms",
            f"says {n} atoms but Elements has {len(symbols)} and XYZ_Ang {len(coords)} numbers",
            "atom_count",
        )
    species = _species(symbols, where)
    flat = np.empty(3 * n, dtype=np.float64)
    for k, c in enumerate(coords):
        flat[k] = parse_number(c.strip(), where, f"XYZ_Ang atom {k // 3 + 1} {'xyz'[k % 3]}")
    pos = flat.reshape(n, 3)
    check_geometry(species, pos, where)
    values = [
        parse_number(row[c].strip(), where, header_name(t))
        for c, t in zip(tcols, QM9_TARGETS, strict=True)
    ]
    targets = np.asarray(values, dtype=np.float64) * TARGET_SCALE
    if not np.isfinite(targets).all():
        t = QM9_TARGETS[int(np.nonzero(~np.isfinite(targets))[0][0])]
        raise MoleculeError(where, header_name(t), "is not finite", "properties")
    return Record(mol_id=mol_id, species=species, pos=pos, targets=targets, where=where)


def header_name(target: str) -> str:
    return CSV_TARGET_COLUMNS[target]
