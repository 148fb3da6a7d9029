"""QM9's CSV format (the PyPI package qm9pack's ``qm9_part{1,2,3}.csv``): one row per molecule
with ``Elements`` and ``XYZ_Ang`` as bracketed lists and the properties in atomic units. Gives
the same records as the figshare XYZ files (:mod:`se3t.data.sources.qm9`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.data.parse import MoleculeError, Record, check_geometry, parse_number
from se3t.data.sources.qm9.vocabulary import ELEMENTS, QM9_TARGETS, TARGET_SCALE
from se3t.errors import InputError

__all__ = ["CSV_REQUIRED", "CSV_TARGET_COLUMNS", "iter_csv"]

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


def _int_field(row: list[str], col: dict[str, int], name: str, where: str, kind: str) -> int:
    """Column ``name`` of ``row`` as an int; a MoleculeError of ``kind`` naming it otherwise."""
    try:
        return int(row[col[name]])
    except ValueError:
        raise MoleculeError(where, name, f"{row[col[name]]!r} is not an integer", kind) from None


def _csv_record(row: list[str], col: dict[str, int], tcols: list[int], where: str) -> Record:
    mol_id = _int_field(row, col, "Index", where, "properties")
    n = _int_field(row, col, "N_atoms", where, "atom_count")
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
