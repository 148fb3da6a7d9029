"""The basis store's layout on disk, its one owner: where a store sits in a cache, the chunk
plan, the codec chain, the empty skeleton, the shard (unit) files, ``checksums.json`` and
opening the Zarr group with its ``se3t_basis`` metadata. Every other module (the cache listing
included) asks this one instead of walking the folder itself."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from se3t.errors import InputError
from se3t.io import atomic_dir
from se3t.location import Location

STORE_FORMAT = 1  # bump when the basis store's on-disk layout changes
STORE_SUFFIX = ".zarr"
CHECKSUMS_FILE = "checksums.json"  # written by finalize: its presence marks a complete store
CLAIMS_DIR = ".claims"


def store_location(cache: str | os.PathLike | Location, key: str) -> Location:
    """``CACHE/basis/KEY.zarr``: where the store of ``key`` lives (a path or a URL, with the
    cache's storage options and local copy)."""
    return Location.parse(cache, "basis.cache").join("basis", f"{key}{STORE_SUFFIX}")


def store_path(cache: str | os.PathLike | Location, key: str) -> str:
    """:func:`store_location` as a string."""
    return str(store_location(cache, key))


def cache_of(store: Location) -> Location:
    """The cache a store ``CACHE/basis/KEY.zarr`` belongs to."""
    return store.parent_of("basis")


# --------------------------------------------------------------------------------------------
# chunk plan


def plan_chunks(edge_counts: np.ndarray, chunk_edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack molecules in order into chunks of at most ``chunk_edges`` rows, never splitting one.

    Returns ``chunk_mols [C+1]`` (first molecule of each chunk, then M) and ``row_start [M]``
    (the first row of each molecule in the padded ``[C * chunk_edges, S]`` array). Raises
    InputError when a molecule alone has more edges than a chunk holds.
    """
    counts = np.asarray(edge_counts, dtype=np.int64)
    if counts.size and counts.max() > chunk_edges:
        m = int(counts.argmax())
        raise InputError(
            f"molecule row {m} has {int(counts[m])} edges, more than basis.chunk_edges="
            f"{chunk_edges}; raise basis.chunk_edges"
        )
    starts = [0]
    row_start = np.empty(len(counts), dtype=np.int64)
    fill = 0
    chunk = 0
    for m, n in enumerate(counts.tolist()):
        if fill + n > chunk_edges:
            chunk += 1
            fill = 0
            starts.append(m)
        row_start[m] = chunk * chunk_edges + fill
        fill += n
    starts.append(len(counts))
    if len(counts) == 0:
        starts = [0, 0]
    return np.asarray(starts, dtype=np.int64), row_start


# --------------------------------------------------------------------------------------------
# the store on disk


def _codecs(compressor: str, level: int | None, itemsize: int) -> list[Any]:
    if compressor == "none":
        comp: list[Any] = []
    elif compressor == "zstd":
        # level 1: 3.4x faster to write than level 3 for 1.7 % more bytes (BENCHMARKS.md)
        comp = [ZstdCodec(level=1 if level is None else level)]
    elif compressor == "blosc-lz4":
        comp = [
            BloscCodec(
                cname="lz4",
                clevel=5 if level is None else level,
                shuffle="shuffle",
                typesize=itemsize,
            )
        ]
    elif compressor == "blosc-zstd":
        comp = [
            BloscCodec(
                cname="zstd",
                clevel=3 if level is None else level,
                shuffle="shuffle",
                typesize=itemsize,
            )
        ]
    else:
        comp = [GzipCodec(level=5 if level is None else level)]
    return comp + [Crc32cCodec()]  # every chunk checksummed: a flipped byte fails on read


def open_group(path_or_url: str | Location, *, read_only: bool = True) -> zarr.Group:
    where = Location.parse(path_or_url)
    try:
        if where.remote:
            from zarr.storage import FsspecStore

            store = FsspecStore.from_url(str(where), read_only=read_only)
        else:
            from zarr.storage import LocalStore

            p = where.path
            if not (p / "zarr.json").is_file():
                raise FileNotFoundError(str(p / "zarr.json"))
            store = LocalStore(p, read_only=read_only)
        return zarr.open_group(store=store, mode="r" if read_only else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, NotADirectoryError) as err:
        raise InputError(
            f"basis store {path_or_url!r} does not exist (no readable zarr.json: not a Zarr group)"
        ) from err
    except (ValueError, KeyError, TypeError) as err:  # zarr.json present but damaged
        raise InputError(
            f"basis store {path_or_url!r}: zarr.json cannot be read ({type(err).__name__}: "
            f"{err}); the store is corrupt, remove it (se3t basis gc) and rebuild"
        ) from None


def store_meta(group: zarr.Group, where: str) -> dict[str, Any]:
    meta = group.attrs.get("se3t_basis")
    if not isinstance(meta, dict) or meta.get("store_format") != STORE_FORMAT:
        raise InputError(f"basis store {where!r} is not a se3t basis store (format {STORE_FORMAT})")
    return dict(meta)


def unit_file(u: int) -> str:
    return f"basis/c/{u}/0"  # the shard (or chunk) key of row block u in the 2-D chunk grid


def unit_range(meta: dict[str, Any], u: int) -> tuple[int, int]:
    """Chunks ``c0 .. c1-1`` of unit (shard) ``u``."""
    c0 = u * meta["chunks_per_shard"]
    return c0, min(meta["num_chunks"], c0 + meta["chunks_per_shard"])


def create_skeleton(
    path: Path,
    meta: dict[str, Any],
    chunk_mols: np.ndarray,
    row_start: np.ndarray,
    edge_count: np.ndarray,
) -> bool:
    """Create the empty store by building it in a temporary folder and renaming it into place
    (:func:`se3t.io.atomic_dir`). Returns False when another process created it first."""
    dtype = np.dtype(meta["dtype"])
    ce, cps = meta["chunk_edges"], meta["chunks_per_shard"]

    def build(tmp: Path) -> None:
        group = zarr.open_group(str(tmp), mode="w", attributes={"se3t_basis": meta})
        group.create_array(
            "basis",
            shape=(meta["num_rows"], meta["basis_size"]),
            chunks=(ce, meta["basis_size"]),
            shards=None if cps == 1 else (ce * cps, meta["basis_size"]),
            dtype=dtype,
            compressors=_codecs(meta["compressor"], meta["compression_level"], dtype.itemsize),
            fill_value=0,
            dimension_names=("row", "basis"),
        )
        group.create_array("chunk_mols", data=chunk_mols, chunks=(max(1, len(chunk_mols)),))
        group.create_array("row_start", data=row_start, chunks=(max(1, len(row_start)),))
        group.create_array("edge_count", data=edge_count, chunks=(max(1, len(edge_count)),))
        os.makedirs(tmp / "basis" / "c", exist_ok=True)

    try:
        atomic_dir(path, build, exclusive=True)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise InputError(f"basis store {str(path)!r} cannot be created: {err}") from err


def is_temporary(name: str) -> bool:
    """True for the hidden name of a file or folder still being written (``se3t.io`` names
    its temporaries ``.NAME.*``); a killed writer may leave one behind."""
    return name.startswith(".")


def unit_exists(path: Path, u: int) -> bool:
    return (path / unit_file(u)).is_file()


def is_complete(path: Path) -> bool:
    """True when the local store at ``path`` was finalized (``checksums.json`` present)."""
    return (path / CHECKSUMS_FILE).is_file()


def store_files(path: Path) -> list[str]:
    """Every file of the local store at ``path`` that ``checksums.json`` covers (metadata,
    index arrays and shards; not the checksums file itself, claims or temporaries), as sorted
    paths relative to the store."""
    out = []
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not is_temporary(d)]  # .claims and unfinished folders
        rel = os.path.relpath(dirpath, path)
        for name in files:
            if is_temporary(name) or (rel == "." and name == CHECKSUMS_FILE):
                continue
            out.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(out)


def units_present(path: Path) -> int:
    """How many shard files of the local store at ``path`` are complete (temporaries, hidden
    names left by a killed writer, are not counted)."""
    count = 0
    for _dirpath, _dirs, files in os.walk(path / "basis" / "c"):
        count += sum(1 for f in files if not is_temporary(f))
    return count


def read_store_meta(path: Path) -> dict[str, Any] | None:
    """The ``se3t_basis`` attributes of the local store at ``path`` straight from its
    ``zarr.json`` (no Zarr import: listing a cache of many stores stays fast); None when the
    folder holds no readable store."""
    try:
        group = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(group, dict):
        return None
    meta = (group.get("attributes") or {}).get("se3t_basis")
    return meta if isinstance(meta, dict) else None


def read_checksums_bytes(where: str | Location) -> bytes | None:
    """The raw ``checksums.json`` of the store at ``where`` (path or URL); None when absent."""
    where = Location.parse(where)
    try:
        if where.remote:
            import fsspec  # deferred: only URL stores need it

            with fsspec.open(str(where.join(CHECKSUMS_FILE)), "rb") as fh:
                return fh.read()
        return (where.path / CHECKSUMS_FILE).read_bytes()
    except (FileNotFoundError, OSError):
        return None


def iso_time(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))
