"""``se3t basis ls|verify|gc`` on a cache in an object store (``s3://bucket/prefix``).

gc's rule for what is in use (docs/basis.md, "sharing across sites"):

- A process reading a remote store (filling a local copy) or writing one (precompute and
  upload, publish) holds a **lease**: ``KEY.zarr/.leases/HOST-PID-ID.json`` with an expiry an
  hour ahead, renewed every 20 minutes and removed when done. A store with an unexpired lease is
  never removed.
- An **incomplete** store (no ``checksums.json``) is removed only when none of its objects
  changed for ``older_than_s`` (default 24 h): an upload under way keeps touching it.
- A **complete** store is removed only with ``unreferenced`` (no manifest names it) and no
  lease, like local caches.
- Removal deletes ``checksums.json`` first, so readers stop seeing the store at once, then
  looks at the leases again: a reader that arrived meanwhile gets the store back (the manifest
  is restored) and nothing else is deleted.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import time
from typing import Any

from se3t.basis.cache import StoreInfo, referenced_keys
from se3t.basis.layout import CHECKSUMS_FILE, STORE_SUFFIX
from se3t.basis.remote import LEASE_DIR, RemoteCache
from se3t.basis.verification import VerifyReport
from se3t.errors import InputError

__all__ = ["gc_remote", "list_remote", "verify_remote"]


def _stores(remote: RemoteCache) -> list[str]:
    base = f"{remote.url}/basis"
    return [f"{base}/{n}" for n in sorted(remote.children(base)) if n.endswith(STORE_SUFFIX)]


def list_remote(remote: RemoteCache) -> list[StoreInfo]:
    """Every store of the remote cache with its settings, size and state (newest first)."""
    remote.check_bucket()
    out = []
    for url in _stores(remote):
        listing = remote.list(url)
        meta: dict[str, Any] = {}
        raw = remote.get(remote.join(url, "zarr.json"))
        if raw is not None:
            try:
                meta = json.loads(raw)["attributes"]["se3t_basis"]
            except (ValueError, KeyError, TypeError):
                meta = {}
        out.append(
            StoreInfo(
                key=url.rsplit("/", 1)[-1][: -len(STORE_SUFFIX)],
                path=url,
                complete=CHECKSUMS_FILE in listing,
                bytes_on_disk=sum(i.size for n, i in listing.items() if not n.startswith(".")),
                modified=max((i.modified for i in listing.values()), default=0.0),
                meta=meta,
                units_present=sum(1 for n in listing if n.startswith("basis/c/")),
            )
        )
    out.sort(key=lambda s: s.modified, reverse=True)
    return out


def verify_remote(
    store_url: str,
    remote: RemoteCache,
    *,
    sample: int = 1000,
    dataset: str | os.PathLike | None = None,
    local_cache: str | os.PathLike | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Every shard object against ``checksums.json`` (downloaded and hashed; a bad one is named
    by its URL); then, when all match and ``sample`` > 0, the sampled recomputation of
    :func:`~se3t.basis.verify` on the verified local copy in ``local_cache``."""
    from se3t.basis.local_cache import mirror
    from se3t.basis.verification import verify

    raw = remote.get(remote.join(store_url, "zarr.json"))
    if raw is None:
        raise InputError(f"basis store {store_url!r} does not exist (no zarr.json)")
    meta = json.loads(raw)["attributes"]["se3t_basis"]
    report = VerifyReport(store=store_url, key=meta["key"])
    checks = remote.get(remote.join(store_url, CHECKSUMS_FILE))
    if checks is None:
        report.complete = False
        return report
    record = json.loads(checks)
    from tqdm.auto import tqdm

    def check(item: tuple[str, dict[str, Any]]) -> str | None:
        name, info = item
        url = remote.join(store_url, name)
        data = remote.get(url)
        if data is None:
            return f"{url}: missing"
        if len(data) != info["bytes"]:
            return f"{url}: {len(data)} bytes, expected {info['bytes']}"
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            return f"{url}: sha256 differs from checksums.json"
        return None

    items = sorted(record["files"].items())
    with cf.ThreadPoolExecutor(8) as pool:
        for bad in tqdm(pool.map(check, items), total=len(items), disable=not progress):
            report.files_checked += 1
            if bad:
                report.bad_files.append(bad)
    if report.bad_files or sample <= 0:
        return report
    if not local_cache:
        raise InputError("verify of a remote store with --sample > 0 needs basis.local_cache")
    local = mirror(store_url, local_cache, remote, progress=progress)
    sub = verify(local, sample=sample, dataset=dataset, seed=seed, progress=progress)
    report.edges_sampled = sub.edges_sampled
    report.max_abs_error = sub.max_abs_error
    report.bad_chunks = [f"{store_url}: {b}" for b in sub.bad_chunks]
    report.bad_files += [f"{store_url} (local copy {local}): {b}" for b in sub.bad_files]
    return report


def gc_remote(
    remote: RemoteCache,
    *,
    older_than_s: float = 24 * 3600,
    unreferenced: bool = False,
    manifests: list[str | os.PathLike] | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """What ``gc`` removes (or, ``dry_run``, would remove) from a remote cache; see the module
    docstring for the rule that keeps stores in use. Returns one dict per store: ``path``,
    ``bytes_on_disk``, ``reason``; a store kept because a lease on it is live has ``kept: True``
    and the reason ``in progress (user, host, since ...)``."""
    if unreferenced and not manifests:
        raise InputError("gc --unreferenced needs --manifests PATH... (files or folders to search)")
    remote.check_bucket()
    now = time.time() if now is None else now
    keep = referenced_keys(list(manifests or [])) if unreferenced else set()
    removed = []
    for url in _stores(remote):
        listing = remote.list(url)
        leases = remote.live_leases(url, now)
        if leases:  # a reader or writer is at work on it
            size = sum(i.size for n, i in listing.items() if not n.startswith("."))
            reason = f"in progress ({_describe(leases[0])})"
            removed.append({"path": url, "bytes_on_disk": size, "reason": reason, "kept": True})
            continue
        key = url.rsplit("/", 1)[-1][: -len(STORE_SUFFIX)]
        complete = CHECKSUMS_FILE in listing
        age = now - max((i.modified for i in listing.values()), default=0.0)
        reason = None
        if not complete and age >= older_than_s:
            reason = f"incomplete, untouched for {age / 3600:.1f} h"
        elif complete and unreferenced and key not in keep:
            reason = "complete but referenced by no manifest"
        if not reason:
            continue
        size = sum(i.size for n, i in listing.items() if not n.startswith("."))
        if not dry_run and not _remove(remote, url, listing, now):
            continue  # a lease appeared while removing: the store stays
        removed.append({"path": url, "bytes_on_disk": size, "reason": reason})
    return removed


def _describe(lease: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(lease.get("since", 0))))
    what = f", {lease['what']}" if lease.get("what") else ""
    return f"{lease.get('user', '?')}, {lease.get('host', '?')}, since {since}{what}"


def _remove(remote: RemoteCache, url: str, listing: dict[str, Any], now: float) -> bool:
    checks_url = remote.join(url, CHECKSUMS_FILE)
    checks = remote.get(checks_url) if CHECKSUMS_FILE in listing else None
    if checks is not None:
        remote.delete([checks_url])  # invisible to readers from here on
    if remote.live_leases(url, time.time()):
        if checks is not None:
            remote.put(checks_url, checks, if_absent=True)
        return False
    names = [n for n in remote.list(url) if not n.startswith(f"{LEASE_DIR}/")]
    remote.delete([remote.join(url, n) for n in names])
    return True
