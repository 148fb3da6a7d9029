"""The basis store writer: :func:`precompute` fills a store's shards (resumable, shardable
across cluster jobs, safe under concurrent writers); :mod:`.manifest` then seals it.

``precompute`` is a pipeline of named steps: read and verify the dataset, find the key from its
fingerprint,
return at once for a complete store, otherwise open (or create) the store's skeleton, pick this
slice's shards, and fill the missing ones (:class:`se3t.basis.compute.ShardFiller`), sharing the
work with concurrent writers through claim files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from se3t.basis.claims import Claims, WriterLease, describe, live_claims, owner_of, who
from se3t.basis.compute import ShardFiller
from se3t.basis.geometry import Geometry, load_geometry
from se3t.basis.key import (
    KEY_CHECK,
    BasisBackend,
    BasisSettings,
    basis_key,
    default_backend,
    key_fields,
)
from se3t.basis.layout import (
    CLAIMS_DIR,
    STORE_FORMAT,
    create_skeleton,
    is_complete,
    iso_time,
    open_group,
    plan_chunks,
    store_location,
    store_meta,
    unit_exists,
    unit_file,
    unit_range,
)
from se3t.basis.verification import shard_problems
from se3t.errors import InputError
from se3t.location import Location

log = logging.getLogger("se3t.basis")


def check_same_store(
    meta: dict[str, Any],
    existing: dict[str, Any],
    where: str,
    fields: Sequence[str] = (*KEY_CHECK, "num_molecules", "num_edges"),
) -> None:
    """Refuse an existing store whose recorded ``fields`` differ from ``meta``'s."""
    for k in fields:
        if existing.get(k) != meta.get(k):
            raise InputError(
                f"basis store {where!r} exists but was built with {k}={existing.get(k)!r}, "
                f"not {meta.get(k)!r}; remove it (se3t basis gc) or use another cache"
            )


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``, or None for all) -> ``(I, N)``, checked."""
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


def _units_of_slice(meta: dict[str, Any], i: int, n: int) -> range:
    """The shards (units) of slice ``i`` of ``n``: contiguous, about equal in number."""
    return range(meta["num_units"] * i // n, meta["num_units"] * (i + 1) // n)


def _num_chunks(meta: dict[str, Any], u: int) -> int:
    c0, c1 = unit_range(meta, u)
    return c1 - c0


def _edges_of_units(
    geom: Geometry, meta: dict[str, Any], chunk_mols: np.ndarray, units: list[int]
) -> int:
    """How many real edges (no padding) the shards ``units`` hold."""
    total = 0
    for u in units:
        c0, c1 = unit_range(meta, u)
        total += int(geom.edge_offsets[chunk_mols[c1]] - geom.edge_offsets[chunk_mols[c0]])
    return total


def _verified_geometry(dataset: str | os.PathLike, cache: Location) -> Geometry:
    """The dataset's geometry, its content verified against its fingerprint on open, so the key
    computed from that fingerprint always describes the values computed from this content (a
    damaged dataset never gets a clean dataset's key). An unusable cache is reported before a
    missing dataset."""
    try:
        return load_geometry(dataset)
    except InputError:
        _writable_cache(cache)
        raise


def _writable_cache(cache: Location) -> Path:
    return cache.ensure_writable("basis", "basis cache")


def _new_meta(
    dataset: str | os.PathLike,
    geom: Geometry,
    key: str,
    settings: BasisSettings,
    backend: BasisBackend,
    num_chunks: int,
) -> dict[str, Any]:
    """The ``se3t_basis`` metadata of a new store."""
    return {
        "store_format": STORE_FORMAT,
        **key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
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
        "created": iso_time(),
        "created_by": who(),
    }


def _open_or_create(
    path: Path,
    dataset: str | os.PathLike,
    geom: Geometry,
    key: str,
    settings: BasisSettings,
    backend: BasisBackend,
) -> dict[str, Any]:
    """The store's metadata, creating its empty skeleton first when absent; an existing store
    built from other values is refused."""
    if not path.is_dir():
        edge_count = np.diff(geom.edge_offsets).astype(np.int32)
        chunk_mols, row_start = plan_chunks(edge_count, settings.chunk_edges)
        meta = _new_meta(dataset, geom, key, settings, backend, len(chunk_mols) - 1)
        create_skeleton(path, meta, chunk_mols, row_start, edge_count)
    meta = store_meta(open_group(str(path)), str(path))
    check_same_store(
        {
            **key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
            "key": key,
            "num_molecules": geom.num_molecules,
            "num_edges": geom.num_edges,
        },
        meta,
        str(path),
    )
    return meta


def _remove_damaged_shards(path: Path, meta: dict[str, Any], units: range) -> None:
    """A shard is reused only once it checks out (CRC32C of its index and every chunk): a
    truncated or altered one, left by a crash or a bad disk, is removed and so recomputed."""
    for u, what in shard_problems(path, meta, units).items():
        log.warning("basis store %s: %s is damaged (%s); recomputing it", path, unit_file(u), what)
        (path / unit_file(u)).unlink(missing_ok=True)


def _fill(filler: ShardFiller, path: Path, todo: list[int], claims: Claims, poll_s: float) -> None:
    """Compute every shard of ``todo`` that no other process computes; wait for those another
    live process holds (or take them over when it dies)."""
    receipt, meta = filler.receipt, filler.meta
    deferred = []
    for u in todo:
        if unit_exists(path, u):
            receipt["chunks_by_others"] += _num_chunks(meta, u)
        elif claims.take(u):
            filler.submit(u)
        else:
            deferred.append(u)
    while deferred:
        still = []
        for u in deferred:
            if unit_exists(path, u):
                receipt["chunks_by_others"] += _num_chunks(meta, u)
            elif claims.take(u):
                if unit_exists(path, u):  # finished between the check and the claim
                    claims.release(u)
                    receipt["chunks_by_others"] += _num_chunks(meta, u)
                else:
                    filler.submit(u)
            else:
                still.append(u)
        deferred = still
        if deferred:
            filler.flush()  # ours first: others may be waiting for it
            time.sleep(poll_s)
    filler.flush()


def _can_write(path: Path) -> bool:
    """Whether this user can add shards and claims to the store at ``path``: a probe file really
    created (permission bits alone are not trusted: root ignores them)."""
    for folder in (path / CLAIMS_DIR, path / "basis" / "c"):
        try:
            folder.mkdir(exist_ok=True)
            probe = folder / f".probe-{os.getpid()}-{time.monotonic_ns()}"
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            probe.unlink()
        except OSError:
            return False
    return True


def _wait_or_refuse(path: Path, claim_timeout_s: float, poll_s: float) -> None:
    """A store this user cannot write: wait while others write it (it is finalized meanwhile,
    or they stop), then refuse an incomplete one in one line naming its owner."""
    while not is_complete(path):
        live = live_claims(path, claim_timeout_s)
        if not live:
            owner = owner_of(path)
            raise InputError(
                f"basis store {str(path)!r} was left incomplete by user {owner} (no process is "
                f"writing it) and you cannot write it: ask {owner} to run se3t basis precompute "
                "again (it continues where it stopped) or se3t basis gc, or make the cache "
                "group-writable (docs/integrity.md, sharing a cache between users)"
            )
        log.info("basis store %s is being written by %s: waiting", path, describe(live[0]))
        time.sleep(poll_s)


def _vanished(path: Path) -> InputError:
    return InputError(
        f"basis store {str(path)!r} was removed while this precompute wrote it (se3t basis gc "
        "or by hand); run the command again"
    )


def _done(receipt: dict[str, Any], t_start: float, *, complete: bool) -> dict[str, Any]:
    seconds = time.perf_counter() - t_start
    receipt["seconds"] = seconds
    if complete:
        receipt.update(chunks_reused=receipt["chunks_total"], complete=True, edges_per_s=0.0)
    else:
        receipt["edges_per_s"] = receipt["edges_computed"] / seconds if seconds > 0 else 0.0
    return receipt


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
    rerun after a crash computes only what is missing (or damaged), and a complete store costs
    only the dataset's verification.
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
    i, n = parse_shard(shard)
    t_start = time.perf_counter()
    cache = Location.parse(cache, "basis.cache")
    geom = _verified_geometry(dataset, cache)
    key = basis_key(geom.fingerprint, settings.max_degree, settings.dtype, backend=backend)
    path = store_location(cache, key).path
    receipt = _new_receipt(key, path, i, n)
    if is_complete(path):  # nothing to write: a complete store in a read-only cache is fine
        meta = store_meta(open_group(str(path)), str(path))
        want = key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend)
        check_same_store({**want, "key": key}, meta, str(path), fields=KEY_CHECK)
        receipt["chunks_total"] = sum(_num_chunks(meta, u) for u in _units_of_slice(meta, i, n))
        return _done(receipt, t_start, complete=True)

    _writable_cache(cache)  # before any work: a cache we cannot write fails now
    meta = _open_or_create(path, dataset, geom, key, settings, backend)
    units = _units_of_slice(meta, i, n)
    receipt["chunks_total"] = sum(_num_chunks(meta, u) for u in units)
    if not is_complete(path) and not _can_write(path):  # another user's store
        _wait_or_refuse(path, claim_timeout_s, poll_s)
    if is_complete(path):  # finalized meanwhile by another process
        return _done(receipt, t_start, complete=True)
    waits = dict(claim_timeout_s=claim_timeout_s, poll_s=poll_s)
    runs = dict(num_workers=num_workers, progress=progress)
    _fill_store(_Fill(path, meta, geom, backend, units, receipt, **waits, **runs))
    return _done(receipt, t_start, complete=False)


def _new_receipt(key: str, path: Path, i: int, n: int) -> dict[str, Any]:
    return {
        "key": key,
        "store": str(path),
        "shard": f"{i}/{n}",
        "chunks_computed": 0,
        "chunks_reused": 0,
        "chunks_by_others": 0,
        "edges_computed": 0,
        "complete": False,
    }


@dataclass(frozen=True)
class _Fill:
    """What one writer fills: ``units`` (shards) of the store at ``path`` with ``backend``,
    counting into ``receipt``, and how it waits for other writers."""

    path: Path
    meta: dict[str, Any]
    geom: Geometry
    backend: BasisBackend
    units: range
    receipt: dict[str, Any]
    claim_timeout_s: float
    poll_s: float
    num_workers: int | None
    progress: bool


def _fill_store(job: _Fill) -> None:
    """Fill the missing (or damaged) shards of ``job.units``, sharing them with other writers,
    under the writer's lease (taken before any shard: gc skips the store while it is held)."""
    path = job.path
    try:
        with WriterLease(path, job.claim_timeout_s):
            _fill_units(job)
    except FileNotFoundError as err:
        if not path.is_dir():  # removed under us: one line instead of a traceback
            raise _vanished(path) from err
        raise
    if not path.is_dir():
        raise _vanished(path)


def _fill_units(job: _Fill) -> None:
    path, meta, geom, units = job.path, job.meta, job.geom, job.units
    chunk_mols = np.asarray(open_group(str(path))["chunk_mols"][:])
    _remove_damaged_shards(path, meta, units)
    todo = [u for u in units if not unit_exists(path, u)]
    reused = set(units) - set(todo)
    job.receipt["chunks_reused"] = sum(_num_chunks(meta, u) for u in reused)
    claims = Claims(path, job.claim_timeout_s)
    with ShardFiller(
        path,
        meta,
        geom,
        chunk_mols,
        job.backend,
        claims,
        job.receipt,
        total_edges=_edges_of_units(geom, meta, chunk_mols, todo),
        num_workers=job.num_workers,
        progress=job.progress,
    ) as filler:
        _fill(filler, path, todo, claims, job.poll_s)
