"""The basis store writer: :func:`precompute` fills a store's shards (resumable, shardable
across cluster jobs, safe under concurrent writers); :mod:`.manifest` then seals it."""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor

from se3t.data.basis_cache import CHECKSUMS_FILE, ensure_writable_cache, local_path, who
from se3t.data.basis_store.claims import _Claims
from se3t.data.basis_store.codec import _ShardCodec
from se3t.data.basis_store.geometry import _Geometry, _load_geometry
from se3t.data.basis_store.layout import (
    _create_skeleton,
    _iso,
    _open_group,
    _unit_exists,
    _unit_range,
    plan_chunks,
    store_meta,
)
from se3t.data.basis_store.settings import (
    _DTYPES,
    STORE_FORMAT,
    BasisBackend,
    BasisSettings,
    _key_fields,
    basis_key,
    default_backend,
    store_path,
)
from se3t.errors import InputError, Se3tError


def _keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MB instead of returning them to the
    kernel at once (process-wide; no effect elsewhere than glibc).

    Every chunk's compressed output (up to ``chunk_edges * S`` bytes, 17.9 MB for float32) is a
    fresh allocation; by default glibc serves it with a new ``mmap`` and unmaps it on free, so
    each chunk pays ~4,000 page faults: 1.6 GB of zeroed pages and ~1 s of system time for the
    20,000-molecule subset (BENCHMARKS.md). Raising the mmap and trim thresholds lets the same
    memory be reused; at most a few such blocks per thread stay mapped."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (32 MB: glibc's upper bound)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl): keep the defaults
        pass


def _compute_chunk(
    geom: _Geometry,
    meta: dict[str, Any],
    chunk_mols: np.ndarray,
    c: int,
    backend: BasisBackend,
    block: Tensor,
) -> int:
    """Fill ``block`` ([chunk_edges, S], a view of a unit buffer) with the padded rows of chunk
    ``c``; return its number of real edges.

    Within a chunk the molecules' rows are consecutive from the chunk's first row (padding only
    at its end), so the backend fills the chunk's rows in place (no copy, no new allocation) and
    only the padding is zeroed."""
    S = meta["basis_size"]
    out_dtype = _DTYPES[meta["dtype"]]
    compute_dtype = torch.float64 if meta["dtype"] == "float64" else torch.float32
    m0, m1 = int(chunk_mols[c]), int(chunk_mols[c + 1])
    n = int(geom.edge_offsets[m1] - geom.edge_offsets[m0])
    block[n:].zero_()  # padding rows
    if n == 0:
        return 0
    vec = geom.edge_vec(m0, m1, compute_dtype)  # [n, 3]
    rows = block[:n]  # [n, S] view, filled in place
    with torch.no_grad():
        values = backend.compute(vec, meta["max_degree"], dtype=out_dtype, out=rows)
    if values.shape != (n, S):
        raise Se3tError(f"basis backend returned shape {tuple(values.shape)}, expected {(n, S)}")
    if values.data_ptr() != rows.data_ptr():
        rows.copy_(values)
    return n


_KEY_CHECK = (
    "key",
    "dataset_fingerprint",
    "max_degree",
    "dtype",
    "basis_size",
    "layout_version",
    "code_version",
)


def _check_same_store(
    meta: dict[str, Any],
    existing: dict[str, Any],
    where: str,
    fields: Sequence[str] = (*_KEY_CHECK, "num_molecules", "num_edges"),
) -> None:
    for k in fields:
        if existing.get(k) != meta.get(k):
            raise InputError(
                f"basis store {where!r} exists but was built with {k}={existing.get(k)!r}, "
                f"not {meta.get(k)!r}; remove it (se3t basis gc) or use another cache"
            )


def _parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError as err:
            raise InputError(f"--shard {shard!r} is not of the form I/N (e.g. 0/4)") from err
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def precompute(
    dataset: str | os.PathLike,
    cache: str | os.PathLike,
    settings: BasisSettings | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    backend: BasisBackend | None = None,
    progress: bool = True,
    claim_timeout_s: float = 600.0,
    poll_s: float = 0.5,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Compute the bases of ``dataset``'s edges into ``CACHE/basis/KEY.zarr``; return a receipt.

    With ``shard="I/N"`` only the I-th of N contiguous slices of shards is computed (N cluster
    jobs fill one store; ``finalize`` then seals it). Shards already present are reused, so a
    rerun after a crash computes only what is missing, and a complete store costs nothing.
    Concurrent processes on one key split the shards through claim files and all succeed.

    ``num_workers`` threads (default: ``torch.get_num_threads()``, i.e. the cores torch would
    use) each compute and compress whole chunks with one torch thread; torch's thread count is
    restored on return.

    Receipt: ``key``, ``store``, ``shard``, ``chunks_computed``, ``chunks_reused``,
    ``chunks_by_others`` (computed meanwhile by a concurrent process), ``edges_computed``,
    ``seconds``, ``edges_per_s``, ``complete`` (the store was already finalized).
    """
    settings = settings or BasisSettings()
    backend = backend or default_backend()
    i, n = _parse_shard(shard)
    t_start = time.perf_counter()
    from se3t.data.store import fingerprint

    try:
        fp = fingerprint(dataset)  # the attributes only: a complete store needs nothing more
    except InputError:
        ensure_writable_cache(cache)  # an unusable cache is reported first
        raise
    key = basis_key(fp, settings.max_degree, settings.dtype, backend=backend)
    path = local_path(store_path(cache, key))
    receipt: dict[str, Any] = {
        "key": key,
        "store": str(path),
        "shard": f"{i}/{n}",
        "chunks_computed": 0,
        "chunks_reused": 0,
        "chunks_by_others": 0,
        "edges_computed": 0,
        "complete": False,
    }
    if (path / CHECKSUMS_FILE).is_file():
        meta = store_meta(_open_group(str(path)), str(path))
        _check_same_store(
            {**_key_fields(fp, settings.max_degree, settings.dtype, backend), "key": key},
            meta,
            str(path),
            fields=_KEY_CHECK,
        )
        units = range(meta["num_units"] * i // n, meta["num_units"] * (i + 1) // n)
        total = sum(_unit_range(meta, u)[1] - _unit_range(meta, u)[0] for u in units)
        receipt.update(
            chunks_total=total,
            chunks_reused=total,
            complete=True,
            seconds=time.perf_counter() - t_start,
            edges_per_s=0.0,
        )
        return receipt  # nothing to write: a complete store in a read-only cache is fine

    ensure_writable_cache(cache)  # before any work: a cache we cannot write fails now
    geom = _load_geometry(dataset)
    if not path.is_dir():
        edge_count = np.diff(geom.edge_offsets).astype(np.int32)
        chunk_mols, row_start = plan_chunks(edge_count, settings.chunk_edges)
        num_chunks = len(chunk_mols) - 1
        meta = {
            "store_format": STORE_FORMAT,
            **_key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
            "key": key,
            "dataset_path": os.path.abspath(str(dataset)),
            "num_molecules": geom.num_molecules,
            "num_edges": geom.num_edges,
            "compressor": settings.compressor,
            "compression_level": settings.compression_level,
            "chunk_edges": settings.chunk_edges,
            "chunks_per_shard": settings.chunks_per_shard,
            "num_chunks": num_chunks,
            "num_units": -(-num_chunks // settings.chunks_per_shard),
            "num_rows": num_chunks * settings.chunk_edges,
            "created": _iso(),
            "created_by": who(),
        }
        _create_skeleton(path, meta, chunk_mols, row_start, edge_count, settings)
    group = _open_group(str(path))
    meta = store_meta(group, str(path))
    _check_same_store(
        {
            **_key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
            "key": key,
            "num_molecules": geom.num_molecules,
            "num_edges": geom.num_edges,
        },
        meta,
        str(path),
    )
    num_units = meta["num_units"]
    u_lo, u_hi = num_units * i // n, num_units * (i + 1) // n
    receipt["chunks_total"] = sum(
        _unit_range(meta, u)[1] - _unit_range(meta, u)[0] for u in range(u_lo, u_hi)
    )
    nchunks = lambda u: _unit_range(meta, u)[1] - _unit_range(meta, u)[0]  # noqa: E731

    if (path / CHECKSUMS_FILE).is_file():  # finalized meanwhile by another process
        receipt.update(
            chunks_reused=receipt["chunks_total"],
            complete=True,
            seconds=time.perf_counter() - t_start,
            edges_per_s=0.0,
        )
        return receipt

    chunk_mols = np.asarray(group["chunk_mols"][:])
    arr = zarr.open_array(str(path / "basis"), mode="r+")
    claims = _Claims(path, claim_timeout_s)
    todo = [u for u in range(u_lo, u_hi) if not _unit_exists(path, u)]
    todo_set = set(todo)
    receipt["chunks_reused"] = sum(nchunks(u) for u in range(u_lo, u_hi) if u not in todo_set)
    total_edges = sum(
        int(
            geom.edge_offsets[chunk_mols[_unit_range(meta, u)[1]]]
            - geom.edge_offsets[chunk_mols[_unit_range(meta, u)[0]]]
        )
        for u in todo
    )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_edges,
        unit="edge",
        unit_scale=True,
        disable=not progress,
        desc=f"basis {key[:8]} shard {i}/{n}",
        mininterval=1.0,
    )
    unit_writer = _ShardCodec(arr, path, meta)
    # Chunk-level parallelism: each worker computes a chunk with one torch thread and encodes
    # it (torch, blosc, zstd and crc32c release the GIL). Independent chunks never wait on each
    # other, unlike torch's intra-op threads, whose barriers crawl when a shared machine
    # deschedules one of them. Up to two units are in flight: the workers fill one unit's
    # buffer while the main thread writes the previous unit (one writev + rename).
    workers = max(1, int(num_workers or torch.get_num_threads()))
    torch_threads = torch.get_num_threads()
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="basis")
    ce, S = meta["chunk_edges"], meta["basis_size"]
    buffers = [
        torch.empty((meta["chunks_per_shard"] * ce, S), dtype=_DTYPES[meta["dtype"]])
        for _ in range(2)
    ]
    turn = 0
    inflight: list[tuple[int, list[cf.Future], np.ndarray]] = []  # at most one unit waits

    def chunk_job(c: int, block: Tensor) -> tuple[int, list[Any] | None]:
        ne = _compute_chunk(geom, meta, chunk_mols, c, backend, block)
        return ne, unit_writer.encode(block.numpy()) if unit_writer.supported else None

    def flush() -> None:
        """Wait for the unit in flight, write it and release its claim."""
        if not inflight:
            return
        u, futures, data = inflight.pop()
        results = [f.result() for f in futures]
        if unit_writer.supported:
            unit_writer.write(u, [enc for _, enc in results])  # type: ignore[misc]
        else:  # a codec chain the fast writer does not know: Zarr's own (slower) path
            c0, c1 = _unit_range(meta, u)
            with zarr.config.set({"array.write_empty_chunks": True}):
                arr[c0 * ce : c1 * ce] = data
        claims.release(u)
        ne = sum(e for e, _ in results)
        receipt["chunks_computed"] += len(futures)
        receipt["edges_computed"] += ne
        bar.update(ne)

    def run_unit(u: int) -> None:
        nonlocal turn
        c0, c1 = _unit_range(meta, u)
        buf = buffers[turn]  # free: the unit that last used it was written by flush()
        turn = 1 - turn
        futures = [
            pool.submit(chunk_job, c, buf[(c - c0) * ce : (c - c0 + 1) * ce]) for c in range(c0, c1)
        ]
        flush()  # the previous unit, while the workers compute this one
        inflight.append((u, futures, buf[: (c1 - c0) * ce].numpy()))

    _keep_freed_memory()
    torch.set_num_threads(1)
    try:
        deferred = []
        for u in todo:
            if _unit_exists(path, u):
                receipt["chunks_by_others"] += nchunks(u)
            elif claims.take(u):
                run_unit(u)
            else:
                deferred.append(u)
        # shards another live process holds: wait for them, or take them over when it dies
        while deferred:
            still = []
            for u in deferred:
                if _unit_exists(path, u):
                    receipt["chunks_by_others"] += nchunks(u)
                elif claims.take(u):
                    if _unit_exists(path, u):  # finished between the check and the claim
                        claims.release(u)
                        receipt["chunks_by_others"] += nchunks(u)
                    else:
                        run_unit(u)
                else:
                    still.append(u)
            deferred = still
            if deferred:
                flush()  # ours first: others may be waiting for it
                time.sleep(poll_s)
        flush()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(torch_threads)
        bar.close()
    seconds = time.perf_counter() - t_start
    receipt["seconds"] = seconds
    receipt["edges_per_s"] = receipt["edges_computed"] / seconds if seconds > 0 else 0.0
    return receipt
