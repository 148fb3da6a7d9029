"""A folder of XYZ files (one molecule each) plus a CSV that maps each file to its properties.

The CSV's id column (``data.id_column``, default ``id``) holds the file's name, its name
without ``.xyz``, or its path relative to the folder; every other column is a property. Every
row must name an existing file and every file must have a row: ids that do not match are an
InputError listing them (a mismatch is a mistake in the inputs, not one bad molecule).

The XYZ files are plain XYZ (:func:`se3t.data.parse.parse_xyz`: line 1 the atom count, line 2 a
comment, then ``El x y z`` lines, extra columns ignored; the element a symbol or an atomic
number). A file that breaks this is a MoleculeError naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from se3t.data.parse import MoleculeError, parse_xyz
from se3t.data.sources import Molecule
from se3t.data.sources.text import read_text
from se3t.errors import InputError

__all__ = ["iter_xyz_dir", "read_properties"]


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
            _, species, pos = parse_xyz(text, where)
        except MoleculeError as err:
            if err.reason == "not_a_number":  # a coordinate: properties come from the CSV
                err.reason = "bad_coordinates"
            yield err
            continue
        yield Molecule(k, key, species, pos, props, where)
