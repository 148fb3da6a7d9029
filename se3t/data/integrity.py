"""Dataset store integrity: every reader refuses a store whose content is not what was written.

Zarr reads a missing chunk as its fill value (zeros) and decodes a chunk whose bytes were
altered in a way the codec accepts, so a damaged store would otherwise train to wrong numbers
with exit 0. :func:`verify_dataset` runs on every :func:`se3t.data.store.open_dataset`, once per
open, on the arrays the store has just read into memory:

1. every chunk file of every array is present (a missing chunk is an error, never zeros), and
   each chunk's sha256 equals the one recorded at write time (``chunk_sha256``; stores built
   before it have none), so the error names the array and chunk (:func:`check_chunks`);
2. the content hash of the arrays (what ``fingerprint`` records, and what the basis cache's key
   hashes) is recomputed and compared: so a store's key and its content cannot disagree
   (:func:`verify_dataset`).

The cost is two sha256 passes over the arrays per open (docs/data.md has the figure for full
QM9), next to reading and decompressing them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from se3t.errors import InputError
from se3t.location import Location

__all__ = [
    "CHUNK_SUMS_ATTR",
    "check_chunks",
    "chunk_checksums",
    "unreadable_array",
    "verify_dataset",
]

CHUNK_SUMS_ATTR = "chunk_sha256"  # {array: [sha256 of each row chunk's bytes]}, at write time


def _row_chunks(n: int, rows: int) -> list[tuple[int, int]]:
    return [(r0, min(n, r0 + rows)) for r0 in range(0, n, rows)]


def _chunk_sha(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def chunk_checksums(arrays: dict[str, np.ndarray], chunk_rows: dict[str, int]) -> dict[str, Any]:
    """Per array, the sha256 of each chunk's rows (chunks of ``chunk_rows[name]`` rows, as
    stored), recorded beside the fingerprint so that verification can name the chunk."""
    return {
        name: [_chunk_sha(a[r0:r1]) for r0, r1 in _row_chunks(len(a), chunk_rows[name])]
        for name, a in arrays.items()
    }


def _chunk_file(arr: Any, name: str, c: int) -> str:
    coords = (c,) + (0,) * (len(arr.shape) - 1)
    return f"{name}/{arr.metadata.encode_chunk_key(coords)}"


def _missing_chunks(path: str, group: Any, names: list[str]) -> list[str]:
    """``array chunk C (file F)`` for every chunk file absent from a local store."""
    where = Location.parse(path)
    if where.remote:
        return []  # object stores: the content hash below still catches the zeros
    root = str(where)
    missing = []
    for name in names:
        arr = group[name]
        rows = arr.chunks[0]
        for c in range(-(-arr.shape[0] // rows) if arr.shape[0] else 0):
            f = _chunk_file(arr, name, c)
            if not os.path.isfile(os.path.join(root, f)):
                missing.append(f"array {name!r} chunk {c} (file {f}) is missing")
    return missing


def unreadable_array(path: str, group: Any, name: str, err: Exception) -> InputError:
    """The error for an array Zarr cannot decode, naming the first chunk that fails."""
    try:
        arr = group[name]
    except Exception:  # the array's own zarr.json is missing or damaged
        return InputError(
            f"dataset store {path}: array {name!r} is missing or unreadable ({type(err).__name__}"
            f": {err}); rebuild it with se3t data build --force"
        )
    rows = arr.chunks[0]
    for c, (r0, r1) in enumerate(_row_chunks(arr.shape[0], rows)):
        try:
            arr[r0:r1]
        except Exception as chunk_err:
            return InputError(
                f"dataset store {path}: array {name!r} chunk {c} (file "
                f"{_chunk_file(arr, name, c)}) cannot be decoded ({type(chunk_err).__name__}: "
                f"{chunk_err}); the store is corrupt: rebuild it with se3t data build --force"
            )
    return InputError(
        f"dataset store {path}: array {name!r} is missing or unreadable ({type(err).__name__}: "
        f"{err}); rebuild it with se3t data build --force"
    )


def _changed_chunks(attrs: dict[str, Any], arrays: dict[str, np.ndarray], group: Any) -> list[str]:
    """Chunks whose bytes differ from the recorded ``chunk_sha256`` (none when not recorded)."""
    recorded = attrs.get(CHUNK_SUMS_ATTR)
    if not isinstance(recorded, dict):
        return []
    bad = []
    for name, a in arrays.items():
        sums = recorded.get(name)
        chunks = _row_chunks(len(a), group[name].chunks[0])
        if not isinstance(sums, list) or len(sums) != len(chunks):
            bad.append(f"array {name!r}: {len(chunks)} chunks, not as many as recorded")
            continue
        for c, ((r0, r1), want) in enumerate(zip(chunks, sums, strict=True)):
            if _chunk_sha(a[r0:r1]) != want:
                f = _chunk_file(group[name], name, c)
                bad.append(f"array {name!r} chunk {c} (file {f}) differs from its checksum")
    return bad


def _refuse(path: str, problems: list[str]) -> InputError:
    shown = "; ".join(problems[:5])
    if len(problems) > 5:
        shown += f"; and {len(problems) - 5} more"
    return InputError(
        f"dataset store {path} is damaged: {shown}. The store was modified or is corrupt; "
        "rebuild it with se3t data build (a rerun detects the damage and rebuilds)"
    )


def check_chunks(
    path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray], group: Any
) -> None:
    """Refuse arrays just read from a store when a chunk file is absent (Zarr gave zeros) or,
    where the store records them, a chunk's sha256 differs. Runs before anything looks at the
    values, so the error names the chunk rather than a symptom."""
    problems = _missing_chunks(path, group, list(arrays)) or _changed_chunks(attrs, arrays, group)
    if problems:
        raise _refuse(path, problems)


def verify_dataset(store: Any) -> None:
    """Refuse ``store`` (a :class:`se3t.data.store.DatasetStore`) unless its content hash equals
    the recorded fingerprint, the value the basis cache's key is made of."""
    try:
        store.verify()
    except InputError as err:
        raise _refuse(store.path, [str(err)]) from None
