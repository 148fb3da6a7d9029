"""Publishing basis stores to an object store: upload, verify, and the manifest written last.

An object store has no rename, so a store cannot appear at once the way a folder does. Instead
``checksums.json`` is the one object that makes a store visible (readers refuse a store
without it), and it is written only after every other object is uploaded and verified:

1. ``zarr.json`` first: when another publisher already started this key, its storage settings
   (compressor, chunking) must equal ours, else InputError naming the field.
2. Every other object, each checked with ``HEAD`` first. An absent object is uploaded with
   ``Content-MD5`` (the server refuses a body damaged in transit), a ``sha256`` metadata entry
   and ``If-None-Match: *``; an object already there with our bytes is skipped (a rerun after
   a kill uploads only what is missing); an object there with other bytes is another
   publisher's when its content matches its own ``sha256`` metadata (it is kept: first writer
   wins, we adopt it), else it is damaged and replaced.
3. Verify: one listing; every object's ETag must be the MD5 we uploaded or adopted (a
   concurrent overwrite is caught here and the object redone).
4. ``checksums.json`` (:func:`finalize_remote`): sha256 and size of every object (metadata,
   index arrays, shard files) from their metadata, written with ``If-None-Match: *``. Its
   content is a pure function of the objects (no timestamps: those go in the object's
   metadata), so two finalizers racing on a server that ignores the condition write identical
   bytes. A loser reads the winner's.

The receipts say what was uploaded, skipped, adopted and repaired.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from se3t.basis.claims import who
from se3t.basis.layout import CHECKSUMS_FILE, iso_time, unit_file
from se3t.basis.remote import RemoteCache
from se3t.errors import InputError
from se3t.location import Location

__all__ = [
    "STORAGE_FIELDS",
    "check_compatible",
    "finalize_remote",
    "precompute_remote",
    "publish",
    "store_objects",
    "upload",
]

# fields of ``se3t_basis`` that two publishers of one key must agree on: the key's own fields,
# and the storage settings (not in the key) that decide the shard files' bytes and names
STORAGE_FIELDS = (
    "key",
    "store_format",
    "dataset_fingerprint",
    "max_degree",
    "dtype",
    "basis_size",
    "layout_version",
    "code_version",
    "num_molecules",
    "num_edges",
    "compressor",
    "compression_level",
    "chunk_edges",
    "chunks_per_shard",
    "num_chunks",
    "num_units",
    "num_rows",
)
_WORKERS = 8  # objects in flight at once: enough to fill a 10 Gb/s link with ~20 MB shards


def store_objects(local: Path, units: range | None = None) -> list[str]:
    """The objects of a local store to upload, ``zarr.json`` first, shard files last (only
    ``units`` of them when given). Claims, temporary files and ``checksums.json`` are not."""
    meta_names, shards = [], []
    for dirpath, dirs, files in os.walk(local):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith(".") or f.endswith(".partial") or f == CHECKSUMS_FILE:
                continue
            rel = Path(dirpath, f).relative_to(local).as_posix()
            (shards if rel.startswith("basis/c/") else meta_names).append(rel)
    if units is not None:
        wanted = {unit_file(u) for u in units}
        shards = [s for s in shards if s in wanted]
    meta_names.sort(key=lambda n: (n != "zarr.json", n))
    return meta_names + sorted(shards, key=lambda n: int(n.split("/")[2]))


def _meta_of(group_json: bytes | None, where: str) -> dict[str, Any] | None:
    if group_json is None:
        return None
    try:
        meta = json.loads(group_json)["attributes"]["se3t_basis"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{where!r} is not a se3t basis store (zarr.json: {err})") from None
    return dict(meta)


def check_compatible(remote_meta: dict[str, Any], ours: dict[str, Any], store_url: str) -> None:
    """InputError naming the first field in which a store another publisher started differs
    from ours (the storage settings too: mixed shard encodings would be a corrupt store)."""
    for k in STORAGE_FIELDS:
        if k in ours and remote_meta.get(k) != ours.get(k):
            raise InputError(
                f"basis store {store_url!r} already exists (published or being published) with "
                f"{k}={remote_meta.get(k)!r}, not {ours.get(k)!r}; use basis.{k}="
                f"{remote_meta.get(k)!r} to share it, or another basis.cache"
            )


def _upload_one(
    remote: RemoteCache, local: Path, store_url: str, name: str, *, overwrite_damaged: bool = True
) -> tuple[str, int, str]:
    """Make object ``name`` hold our bytes or another publisher's valid ones.
    Returns (what, bytes sent, the ETag now expected)."""
    data = (local / name).read_bytes()
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    url = remote.join(store_url, name)
    info = remote.head(url)
    if info is None:
        if remote.put(url, data, if_absent=True):
            return "uploaded", len(data), md5
        info = remote.head(url)  # another publisher wrote it between our HEAD and PUT
        if info is None:  # and it was removed again (gc): write ours
            remote.put(url, data, if_absent=False)
            return "uploaded", len(data), md5
    if info.size == len(data) and info.etag == md5:
        return "present", 0, md5
    if name == "zarr.json":
        theirs = _meta_of(remote.get(url), store_url)
        check_compatible(theirs or {}, _meta_of(data, str(local)) or {}, store_url)
        return "adopted", 0, info.etag
    body = remote.get(url)
    if body is not None and info.sha256 and hashlib.sha256(body).hexdigest() == info.sha256:
        # a complete upload by another publisher (its Content-MD5 was checked on receipt and
        # its bytes still match its own sha256): first writer wins, keep it
        return "adopted", 0, info.etag
    if not overwrite_damaged:
        raise InputError(f"basis store object {url!r} is damaged")
    remote.put(url, data, if_absent=False)
    return "repaired", len(data), md5


def upload(
    remote: RemoteCache,
    local: str | os.PathLike,
    store_url: str,
    *,
    units: range | None = None,
    progress: bool = False,
    workers: int = _WORKERS,
) -> dict[str, Any]:
    """Upload a local store's objects (``units``' shard files only, when given) to
    ``store_url``, then verify them with one listing. Never writes ``checksums.json``.
    Returns counts: ``uploaded``, ``present``, ``adopted``, ``repaired``, ``bytes_uploaded``,
    ``seconds``."""
    path = Location.parse(local).path
    names = store_objects(path, units)
    counts: dict[str, Any] = {"uploaded": 0, "present": 0, "adopted": 0, "repaired": 0}
    counts["bytes_uploaded"] = 0
    expect: dict[str, str] = {}
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    def account(name: str, res: tuple[str, int, str]) -> None:
        counts[res[0]] += 1
        counts["bytes_uploaded"] += res[1]
        expect[name] = res[2]

    # the group's zarr.json alone first: an incompatible store fails before any upload
    if names and names[0] == "zarr.json":
        account("zarr.json", _upload_one(remote, path, store_url, "zarr.json"))
        names = names[1:]
    bar = tqdm(total=len(names), unit="obj", desc="upload", disable=not progress)
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3-up") as pool:
        futs = {pool.submit(_upload_one, remote, path, store_url, n): n for n in names}
        for f in cf.as_completed(futs):
            account(futs[f], f.result())
            bar.update(1)
    bar.close()
    # verify: what the server lists is what we uploaded or adopted; redo what changed since
    for _round in range(3):
        listing = remote.list(store_url)
        changed = [
            n
            for n, etag in expect.items()
            if n not in listing or (listing[n].etag and listing[n].etag != etag)
        ]
        if not changed:
            break
        for n in changed:
            account(n, _upload_one(remote, path, store_url, n))
    else:
        raise InputError(
            f"basis store {store_url!r}: objects keep changing under the upload ({changed[:3]}); "
            "another process is rewriting them"
        )
    counts["seconds"] = time.perf_counter() - t0
    return counts


def _remote_meta(remote: RemoteCache, store_url: str) -> dict[str, Any] | None:
    return _meta_of(remote.get(remote.join(store_url, "zarr.json")), store_url)


def finalize_remote(remote: RemoteCache, store_url: str) -> tuple[dict[str, Any], bool]:
    """Write the remote store's ``checksums.json`` once every shard file is there; returns the
    record and whether this call wrote it (False: it existed, or a concurrent finalizer won).

    The record lists ``sha256`` and ``bytes`` of every object of the store (metadata, index
    arrays, shard files), taken from the objects' metadata (each uploader computed it from the
    bytes whose MD5 the server checked)."""
    checks_url = remote.join(store_url, CHECKSUMS_FILE)
    existing = remote.get(checks_url)
    if existing is not None:
        return json.loads(existing), False
    meta = _remote_meta(remote, store_url)
    if meta is None:
        raise InputError(f"basis store {store_url!r} does not exist (no zarr.json)")
    shards = [unit_file(u) for u in range(int(meta["num_units"]))]
    # every object, not only the shards: a reader checks the metadata and index arrays too
    listed = [n for n in remote.list(store_url) if n != CHECKSUMS_FILE and not n.startswith(".")]
    names = sorted(set(listed) | set(shards))
    with cf.ThreadPoolExecutor(_WORKERS) as pool:
        heads = list(pool.map(lambda n: remote.head(remote.join(store_url, n)), names))
    missing = [n for n, i in zip(names, heads, strict=True) if i is None and n in shards]
    if missing:
        raise InputError(
            f"basis store {store_url!r} is incomplete: {len(missing)} of {len(shards)} shard "
            f"files missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            "run se3t basis precompute (all --shard slices) before finalize"
        )
    infos = {n: i for n, i in zip(names, heads, strict=True) if i is not None}
    unsigned = [n for n, i in infos.items() if not i.sha256]
    if unsigned:
        raise InputError(
            f"basis store {store_url!r}: {unsigned[0]} has no sha256 metadata (uploaded by "
            "another tool); publish the store with se3t basis publish"
        )
    files = {n: {"bytes": i.size, "sha256": i.sha256} for n, i in infos.items()}
    record = {
        "key": meta["key"],
        "algorithm": "sha256",
        "files": files,
        "total_bytes": sum(v["bytes"] for v in files.values()),
    }
    body = json.dumps(record, indent=1, sort_keys=True).encode()
    won = remote.put(
        checks_url, body, if_absent=True, metadata={"finalized": iso_time(), "finalized-by": who()}
    )
    final = remote.get(checks_url)
    return (json.loads(final) if final is not None else record), won


def publish(
    remote: RemoteCache,
    local: str | os.PathLike,
    store_url: str,
    *,
    progress: bool = False,
    workers: int = _WORKERS,
) -> dict[str, Any]:
    """Publish a complete local store at ``store_url``: upload (resuming), verify, then the
    manifest. A store already published is left alone (``reused``: the first publisher's store
    stands, ours is not needed). Returns a receipt."""
    path = Location.parse(local).path
    checks_url = remote.join(store_url, CHECKSUMS_FILE)
    if remote.head(checks_url) is not None:
        return {"store": store_url, "published": False, "reused": True}
    with remote.lease(store_url, "publish"):
        counts = upload(remote, path, store_url, progress=progress, workers=workers)
        t0 = time.perf_counter()
        record, won = finalize_remote(remote, store_url)
        counts["manifest_seconds"] = time.perf_counter() - t0
    return {"store": store_url, "published": won, "reused": not won, **counts, "key": record["key"]}


def precompute_remote(
    dataset: str | os.PathLike,
    cache: str | Location,
    settings: Any,
    *,
    local_cache: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
    shard: str | tuple[int, int] | None = None,
    backend: Any = None,
    progress: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """``precompute`` for an ``s3://`` cache: download a published store (0 chunks computed),
    else compute this slice into the local cache (``basis.local_cache``, resumable as ever) and
    upload its shard files; ``finalize_remote`` then seals the remote store. ``local_cache``
    and ``storage_options`` may come with the cache's Location instead."""
    from se3t.basis.key import basis_key, default_backend
    from se3t.basis.layout import store_path
    from se3t.basis.writer import parse_shard, precompute
    from se3t.data.store import fingerprint

    t0 = time.perf_counter()
    backend = backend or default_backend()
    cache = Location.parse(
        cache, "basis.cache", storage_options=storage_options, local_cache=local_cache
    )
    local_copy = cache.local_copy()
    remote = RemoteCache(cache)
    remote.check_bucket()
    key = basis_key(fingerprint(dataset), settings.max_degree, settings.dtype, backend=backend)
    url = store_path(cache, key)
    i, n = parse_shard(shard)
    if remote.head(remote.join(url, CHECKSUMS_FILE)) is not None:
        return _downloaded(remote, url, local_copy, key, (i, n), t0, progress)
    theirs = _remote_meta(remote, url)
    if theirs is not None:  # another site started this key: fail before computing if unlike
        ours = {name: getattr(settings, name) for name in _SETTINGS_COMPARED}
        check_compatible(theirs, {"key": key, **ours}, url)
    with remote.lease(url, "precompute"):  # gc leaves the store alone while we work on it
        receipt = precompute(
            dataset, local_copy, settings, shard=shard, backend=backend, progress=progress, **kw
        )
        local = Path(receipt["store"])
        meta = json.loads((local / "zarr.json").read_text())["attributes"]["se3t_basis"]
        nu = meta["num_units"]
        counts = upload(remote, local, url, units=range(nu * i // n, nu * (i + 1) // n))
    receipt.update(
        store=url,
        local_store=str(local),
        downloaded=False,
        upload={k: counts[k] for k in ("uploaded", "present", "adopted", "repaired")},
        bytes_uploaded=counts["bytes_uploaded"],
        seconds=time.perf_counter() - t0,
    )
    return receipt


# the settings a store started at another site must share with ours (besides the key)
_SETTINGS_COMPARED = ("compressor", "compression_level", "chunk_edges", "chunks_per_shard")


def _downloaded(
    remote: RemoteCache,
    url: str,
    local_cache: Location,
    key: str,
    shard: tuple[int, int],
    t0: float,
    progress: bool,
) -> dict[str, Any]:
    """The receipt of a slice whose store is already published: its verified local copy."""
    from se3t.basis.local_cache import mirror

    local = mirror(url, local_cache, remote, progress=progress)
    meta = _remote_meta(remote, url) or {}
    (i, n), nu = shard, meta["num_units"]
    cps, nc = meta["chunks_per_shard"], meta["num_chunks"]
    total = min(nc, nu * (i + 1) // n * cps) - min(nc, nu * i // n * cps)
    return {
        "key": key,
        "store": url,
        "local_store": str(local),
        "shard": f"{i}/{n}",
        "chunks_total": total,
        "chunks_computed": 0,
        "chunks_reused": total,
        "chunks_by_others": 0,
        "edges_computed": 0,
        "complete": True,
        "downloaded": True,
        "seconds": time.perf_counter() - t0,
        "edges_per_s": 0.0,
    }
