"""The local read-through cache (``basis.local_cache``): a verified local copy of a store
published on an object store, so that training reads local files, not the network, every epoch.

The copy is ``LOCAL_CACHE/basis/KEY.zarr``, the same path a local cache would use, so a store
precomputed on this node for upload and its mirror are one folder. Filling it:

- runs under an exclusive ``flock`` on ``LOCAL_CACHE/basis/.KEY.zarr.lock``: several jobs on a
  node (or on nodes sharing the folder) download once; the others wait, then find it complete;
- holds a lease on the remote store (``gc`` leaves it alone meanwhile);
- keeps local files whose sha256 already matches the remote ``checksums.json`` (a shard this
  node computed itself, or one downloaded before a kill) and downloads the rest;
- checks every shard file's sha256 and every other object's MD5 before it renames the file
  into place, and refuses (InputError naming the object's URL) anything that differs;
- writes the remote ``checksums.json`` bytes last and makes the copy read-only. A local copy is
  complete, and used, only when its ``checksums.json`` equals the remote one byte for byte.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from se3t.basis.layout import CHECKSUMS_FILE, CLAIMS_DIR, STORE_SUFFIX, cache_of, is_temporary
from se3t.basis.remote import ObjectInfo, RemoteCache
from se3t.errors import InputError
from se3t.io import write_bytes
from se3t.location import Location

__all__ = ["mirror", "read_through"]

_WORKERS = 8


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _writable(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        for f in files:
            full = os.path.join(dirpath, f)
            os.chmod(full, os.stat(full).st_mode | stat.S_IWUSR)


def _read_only(path: Path) -> None:
    ro = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for f in files:
            full = os.path.join(dirpath, f)
            os.chmod(full, os.stat(full).st_mode & ro)
        os.chmod(dirpath, os.stat(dirpath).st_mode & ro)


def _key_of(store: Location) -> str:
    if not store.name.endswith(STORE_SUFFIX):
        raise InputError(f"{str(store)!r} is not a basis store URL (.../basis/KEY.zarr)")
    return store.name[: -len(STORE_SUFFIX)]


def mirror(
    store_url: str | Location,
    local_cache: str | os.PathLike | Location,
    remote: RemoteCache,
    *,
    progress: bool = False,
    workers: int = _WORKERS,
) -> Path:
    """The verified local copy of the published store ``store_url`` (downloaded if needed).

    InputError (naming the URL) when the store is not published (no ``checksums.json``: being
    uploaded, interrupted, or absent), or when a downloaded object does not match its checksum.
    """
    store_url = str(store_url)
    checks = remote.get(remote.join(store_url, CHECKSUMS_FILE))
    if checks is None:
        exists = remote.head(remote.join(store_url, "zarr.json")) is not None
        raise InputError(
            f"basis store {store_url!r} "
            + (
                "is not published yet (no checksums.json: an upload is under way or was "
                "interrupted; rerun se3t basis precompute and finalize)"
                if exists
                else "does not exist; run se3t basis precompute with this basis.cache"
            )
        )
    record = json.loads(checks)
    root = Location.parse(local_cache, "basis.local_cache").ensure_writable("basis", "basis cache")
    path = root / f"{_key_of(Location.parse(store_url))}{STORE_SUFFIX}"
    done = path / CHECKSUMS_FILE
    if done.is_file() and done.read_bytes() == checks:
        return path
    with _flock(root / f".{path.name}.lock"):
        if done.is_file() and done.read_bytes() == checks:
            return path  # another job filled it while we waited
        with remote.lease(store_url, "read"):
            _fill(remote, store_url, path, record, checks, progress=progress, workers=workers)
    return path


def _fill(
    remote: RemoteCache,
    store_url: str,
    path: Path,
    record: dict[str, Any],
    checks: bytes,
    *,
    progress: bool,
    workers: int,
) -> None:
    listing = remote.list(store_url)
    names = [n for n in listing if n != CHECKSUMS_FILE and not n.startswith(".")]
    missing = sorted(set(record["files"]) - set(names))
    if missing:
        raise InputError(
            f"basis store {store_url!r}: shard files listed in checksums.json are missing "
            f"({', '.join(missing[:5])}); the remote store is damaged, run se3t basis verify on it"
        )
    if path.exists():
        _writable(path)  # a sealed copy of an earlier version, or this node's own shards
        (path / CHECKSUMS_FILE).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)

    def fetch(name: str) -> int:
        return _fetch(remote, store_url, path, name, record["files"].get(name), listing[name])

    from tqdm.auto import tqdm

    bar = tqdm(total=len(names), unit="obj", desc="download", disable=not progress)
    with cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="s3-down") as pool:
        for _ in pool.map(fetch, names):
            bar.update(1)
    bar.close()
    shutil.rmtree(path / CLAIMS_DIR, ignore_errors=True)
    for leftover in path.rglob(".*"):  # se3t.io's temporaries of an interrupted download
        if leftover.is_file() and is_temporary(leftover.name):
            leftover.unlink(missing_ok=True)
    write_bytes(path / CHECKSUMS_FILE, checks)  # last: the copy is complete from here on
    _read_only(path)


def _have(dest: Path, want: dict[str, Any] | None, listed: ObjectInfo) -> bool:
    """Whether the local file already holds the object: a shard file by its sha256 in
    checksums.json, any other object by the MD5 its ETag records."""
    if not dest.is_file():
        return False
    if want is not None:
        return dest.stat().st_size == want["bytes"] and _sha256(dest) == want["sha256"]
    return _md5_file(dest) == listed.etag


def _fetch(
    remote: RemoteCache,
    store_url: str,
    path: Path,
    name: str,
    want: dict[str, Any] | None,
    listed: ObjectInfo,
) -> int:
    """Download one object unless the local copy already holds it, checked before it is
    renamed into place; returns the bytes downloaded."""
    dest = path / name
    if _have(dest, want, listed):
        return 0
    url = remote.join(store_url, name)
    data = remote.get(url)
    if data is None:
        raise InputError(f"basis store object {url!r} disappeared during the download")
    if want is not None:
        got = hashlib.sha256(data).hexdigest()
        if len(data) != want["bytes"] or got != want["sha256"]:
            raise InputError(
                f"basis store object {url!r}: sha256 {got[:12]}.. ({len(data)} bytes) "
                f"differs from checksums.json ({want['sha256'][:12]}.., {want['bytes']} "
                "bytes): the remote shard is damaged; it is not used (run se3t basis "
                "verify on the store, then gc it and precompute again)"
            )
    elif "-" not in listed.etag:  # single-part upload: the ETag is the MD5
        got = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if got != listed.etag:
            raise InputError(f"basis store object {url!r}: MD5 differs from its ETag")
    write_bytes(dest, data)  # atomic (se3t.io): a shard is absent or whole
    return len(data)


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_through(
    store: str | Location,
    local_cache: str | os.PathLike | Location | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    progress: bool = False,
) -> Path:
    """:func:`mirror` of an ``s3://`` store into its local copy (``basis.local_cache``, carried
    by the store's Location or given here) with its ``basis.storage_options``: what
    ``open_basis`` and the tools call for a store on an object store."""
    store = Location.parse(store, storage_options=storage_options, local_cache=local_cache or None)
    if store.local_cache is None:
        raise InputError(
            f"basis store {str(store)!r} is on an object store: set basis.local_cache to a local "
            "folder for its verified copy"
        )
    remote = RemoteCache(cache_of(store))
    try:
        return mirror(store, store.local_cache, remote, progress=progress)
    except InputError as err:
        if "does not exist" in str(err):
            remote.check_bucket()  # a missing bucket is named as such, not as a missing store
        raise


def write_remote_manifest(
    store_url: str | Location,
    manifest: str | os.PathLike,
    remote: RemoteCache,
    local_cache: str | os.PathLike | Location,
) -> dict[str, Any]:
    """The run-folder manifest of a published store: built from its verified local copy (whose
    ``checksums.json`` is the remote one, byte for byte) and pointing at ``store_url``."""
    from se3t.basis.manifest import write_manifest

    local = mirror(store_url, local_cache, remote)
    return write_manifest(local, manifest, store_url=str(store_url))
