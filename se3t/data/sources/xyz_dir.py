"""A folder of XYZ files (one molecule each) plus a CSV that maps each file to its properties.

The CSV's id column (``data.id_column``, default ``id``) holds the file's name, its name
without ``.xyz``, or its path relative to the folder; every other column is a property. Every
row must name an existing file and every file must have a row: ids that do not match are an
InputError listing them (a mismatch is a mistake in the inputs, not one bad molecule).

The XYZ files are plain XYZ (line 1 the atom count, line 2 a comment, then ``El x y z`` lines,
extra columns ignored; the element may be given as a symbol or an atomic number). A file that
breaks this is a MoleculeError naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.data.elements import atomic_number
from se3t.data.parse import MoleculeError, parse_number
from se3t.data.sources import Molecule
from se3t.data.sources.text import read_text
from se3t.errors import InputError

__all__ = ["iter_xyz_dir", "parse_plain_xyz", "read_properties"]


def parse_plain_xyz(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(species [n] atomic numbers, pos [n, 3] Å) of one plain XYZ molecule."""
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
    if len(lines) != n + 2:
        raise MoleculeError(
            where,
            "atom count",
            f"line 1 says {n} atoms but the file has {max(len(lines) - 2, 0)} atom lines",
            "atom_count",
        )
    species = np.empty(n, dtype=np.int64)
    pos = np.empty((n, 3), dtype=np.float64)
    for k, line in enumerate(lines[2:]):
        parts = line.split()
        if len(parts) < 4:
            raise MoleculeError(
                where,
                f"atom {k + 1} coordinates",
                f"line {k + 3} {line.strip()!r} is not 'El x y z'",
                "bad_coordinates",
            )
        el = parts[0]
        z = int(el) if el.isdigit() else atomic_number(el)
        if not 0 < z <= 118:
            raise MoleculeError(
                where,
                f"atom {k + 1} element",
                f"{el!r} is not a chemical element",
                "unknown_element",
            )
        species[k] = z
        for c in range(3):
            try:
                pos[k, c] = parse_number(parts[1 + c], where, f"atom {k + 1} {'xyz'[c]}")
            except MoleculeError as err:
                err.reason = "bad_coordinates"
                raise
    return species, pos


def read_properties(
    path: Path, id_column: str, key: str = "data.id_column", purpose: str = " to match the files"
) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows as dicts) of a properties CSV (UTF-8, UTF-16 or Latin-1: see
    :mod:`se3t.data.sources.text`); InputError for a bad file, or one without the column
    ``id_column`` (the config ``key`` that names it, and its ``purpose``, in the message)."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        rows = list(reader)
    except csv.Error as err:
        raise InputError(f"{path}: line {reader.line_num}: not CSV: {err}") from err
    header = list(reader.fieldnames or [])
    if not header:
        raise InputError(f"{path}: the CSV file is empty (no header)")
    if id_column not in header:
        raise InputError(
            f"{path}: no column {id_column!r} ({key}){purpose}; the header has {header}"
        )
    return header, rows


def iter_xyz_dir(
    folder: str | Path, properties: str | Path, id_column: str | None = None
) -> Iterator[Molecule | MoleculeError]:
    """Molecules of the XYZ files in ``folder``, in the CSV's row order."""
    folder, properties = Path(folder), Path(properties)
    id_column = id_column or "id"
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of XYZ files")
    files = sorted(p for p in folder.rglob("*.xyz") if not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no .xyz file")
    _, rows = read_properties(properties, id_column)
    by_key: dict[str, Path] = {}
    for f in files:
        for key in (f.name, f.stem, str(f.relative_to(folder))):
            by_key.setdefault(key, f)
    used: dict[Path, int] = {}
    unknown = []
    for line, row in enumerate(rows, start=2):
        key = (row.get(id_column) or "").strip()
        f = by_key.get(key)
        if f is None:
            unknown.append(f"line {line} ({id_column}={key!r})")
        else:
            used.setdefault(f, line)
    unused = [str(f.relative_to(folder)) for f in files if f not in used]
    if unknown or unused:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} row(s) name no file in {folder}: {unknown[:5]}")
        if unused:
            parts.append(f"{len(unused)} file(s) have no row: {unused[:5]}")
        raise InputError(f"{properties}: the CSV's ids do not match the files: " + "; ".join(parts))
    for k, row in enumerate(rows):
        key = row[id_column].strip()
        f = by_key[key]
        where = f"{properties.name}: record {k} (id {key}, file {f.name})"
        props = {c: v for c, v in row.items() if c != id_column and c is not None}
        try:
            text = f.read_text(errors="replace")
        except OSError as err:
            raise InputError(f"{f}: cannot read: {err}") from err
        try:
            species, pos = parse_plain_xyz(text, where)
        except MoleculeError as err:
            yield err
            continue
        yield Molecule(k, key, species, pos, props, where)
