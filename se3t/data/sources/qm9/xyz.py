"""QM9's XYZ format (figshare's ``dsgdb9nsd.xyz.tar.bz2``, one file per molecule) and figshare's
list of uncharacterized molecules.

Each file is XYZ (:func:`se3t.data.parse.parse_xyz`) whose line 2 is
``gdb ID A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``, whose atom lines carry a Mulliken
charge after x, y, z, and which ends with three lines: harmonic frequencies, SMILES and InChI.
Numbers are written by Mathematica (``1.2*^-6``, ``0.``).
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from se3t.data.parse import MoleculeError, Record, parse_number, parse_xyz
from se3t.data.sources.qm9.vocabulary import ELEMENTS, QM9_TARGETS, TARGET_SCALE
from se3t.errors import InputError

__all__ = ["iter_xyz_archive", "iter_xyz_dir", "parse_qm9_xyz", "read_uncharacterized"]

TRAILING_LINES = 3  # frequencies, SMILES, InChI


def _is_qm9(text: str) -> bool:
    lines = text.splitlines()
    header = lines[1].split() if len(lines) > 1 else []
    return len(header) >= 17 and header[0] == "gdb"


def parse_qm9_xyz(text: str, where: str, *, qm9: bool | None = None) -> Record:
    """One molecule from XYZ text in QM9's format (``gdb`` line with properties) or plain XYZ,
    its elements QM9's.

    ``qm9=None`` detects the format from line 2; QM9 records must have exactly n + 5 lines,
    plain ones n + 2 (trailing blank lines aside).
    """
    is_qm9 = _is_qm9(text) if qm9 is None else qm9
    comment, species, pos = parse_xyz(
        text,
        where,
        trailing=TRAILING_LINES if is_qm9 else 0,
        elements=ELEMENTS,
        kind="QM9 XYZ" if is_qm9 else "plain XYZ",
    )
    if not is_qm9:
        return Record(mol_id=None, species=species, pos=pos, targets=None, where=where)
    mol_id, targets = _properties(comment.split(), where)
    return Record(mol_id=mol_id, species=species, pos=pos, targets=targets, where=where)


def _properties(header: list[str], where: str) -> tuple[int, np.ndarray]:
    """(gdb id, the 12 targets in stored units) of QM9's line 2."""
    if len(header) < 17 or header[0] != "gdb":
        raise MoleculeError(
            where, "properties", "line 2 must be 'gdb ID A B C' and the 12 properties", "properties"
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
    return mol_id, targets


def _mol_id_from_name(name: str) -> int | None:
    stem = Path(name).name.rsplit(".", 1)[0]
    digits = stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else None


def _safe_parse(text: str, where: str, name: str) -> Record | MoleculeError:
    try:
        rec = parse_qm9_xyz(text, where, qm9=True)
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
