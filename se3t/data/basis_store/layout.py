"""The basis store's layout on disk: the chunk plan, the codec chain, the empty skeleton, the
shard (unit) files and opening the Zarr group with its ``se3t_basis`` metadata."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from se3t.data.basis_cache import is_url, local_path
from se3t.data.basis_store.settings import STORE_FORMAT, BasisSettings
from se3t.errors import InputError

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


def _codecs(settings: BasisSettings, itemsize: int) -> list[Any]:
    level = settings.compression_level
    if settings.compressor == "none":
        comp: list[Any] = []
    elif settings.compressor == "zstd":
        # level 1: 3.4x faster to write than level 3 for 1.7 % more bytes (BENCHMARKS.md)
        comp = [ZstdCodec(level=1 if level is None else level)]
    elif settings.compressor == "blosc-lz4":
        comp = [
            BloscCodec(
                cname="lz4",
                clevel=5 if level is None else level,
                shuffle="shuffle",
                typesize=itemsize,
            )
        ]
    elif settings.compressor == "blosc-zstd":
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


def _open_group(path_or_url: str, *, read_only: bool = True) -> zarr.Group:
    try:
        if is_url(path_or_url):
            from zarr.storage import FsspecStore

            store = FsspecStore.from_url(path_or_url, read_only=read_only)
        else:
            from zarr.storage import LocalStore

            p = local_path(path_or_url)
            if not (p / "zarr.json").is_file():
                raise FileNotFoundError(str(p / "zarr.json"))
            store = LocalStore(p, read_only=read_only)
        return zarr.open_group(store=store, mode="r" if read_only else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, NotADirectoryError) as err:
        raise InputError(
            f"basis store {path_or_url!r} does not exist (or is not a Zarr group)"
        ) from err


def store_meta(group: zarr.Group, where: str) -> dict[str, Any]:
    meta = group.attrs.get("se3t_basis")
    if not isinstance(meta, dict) or meta.get("store_format") != STORE_FORMAT:
        raise InputError(f"basis store {where!r} is not a se3t basis store (format {STORE_FORMAT})")
    return dict(meta)


def _unit_file(u: int) -> str:
    return f"basis/c/{u}/0"  # the shard (or chunk) key of row block u in the 2-D chunk grid


def _unit_range(meta: dict[str, Any], u: int) -> tuple[int, int]:
    """Chunks ``c0 .. c1-1`` of unit (shard) ``u``."""
    c0 = u * meta["chunks_per_shard"]
    return c0, min(meta["num_chunks"], c0 + meta["chunks_per_shard"])


def _create_skeleton(
    path: Path,
    meta: dict[str, Any],
    chunk_mols: np.ndarray,
    row_start: np.ndarray,
    edge_count: np.ndarray,
    settings: BasisSettings,
) -> bool:
    """Create the empty store by building it in a temporary folder and renaming it into place.
    Returns False when another process created it first (the rename finds a full folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    dtype = np.dtype(meta["dtype"])
    ce, cps = meta["chunk_edges"], meta["chunks_per_shard"]
    try:
        group = zarr.open_group(str(tmp), mode="w", attributes={"se3t_basis": meta})
        group.create_array(
            "basis",
            shape=(meta["num_rows"], meta["basis_size"]),
            chunks=(ce, meta["basis_size"]),
            shards=None if cps == 1 else (ce * cps, meta["basis_size"]),
            dtype=dtype,
            compressors=_codecs(settings, dtype.itemsize),
            fill_value=0,
            dimension_names=("row", "basis"),
        )
        group.create_array("chunk_mols", data=chunk_mols, chunks=(max(1, len(chunk_mols)),))
        group.create_array("row_start", data=row_start, chunks=(max(1, len(row_start)),))
        group.create_array("edge_count", data=edge_count, chunks=(max(1, len(edge_count)),))
        os.makedirs(tmp / "basis" / "c", exist_ok=True)
        try:
            os.rename(tmp, path)
            return True
        except OSError as err:
            if path.is_dir():  # ENOTEMPTY/EEXIST: someone else created it first
                return False
            raise InputError(f"basis store {str(path)!r} cannot be created: {err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unit_exists(path: Path, u: int) -> bool:
    return (path / _unit_file(u)).is_file()


def _iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))
