"""The cache tools behind ``se3t basis precompute|finalize|verify|ls|gc|publish``, one set per
kind of cache: :func:`cache_tools` looks at the cache's :class:`~se3t.location.Location` once
and returns the set that fits (a folder, or an object store), so the command line calls the
same methods whichever kind it was given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from se3t.basis.cache import gc, list_stores, resolve_store
from se3t.basis.layout import CHECKSUMS_FILE, cache_of, store_location
from se3t.basis.manifest import finalize, write_manifest
from se3t.basis.verification import verify
from se3t.basis.writer import precompute
from se3t.errors import InputError
from se3t.location import Location

__all__ = ["FolderTools", "ObjectStoreTools", "cache_tools", "publish_store", "store_tools"]


class FolderTools:
    """The tools of a cache in a (local or shared POSIX) folder."""

    confirms_deletion = False  # gc removes at once (--dry-run shows first)

    def __init__(self, cache: Location) -> None:
        self.cache = cache

    def precompute(self, dataset: str, settings: Any, **kw: Any) -> dict[str, Any]:
        return precompute(dataset, self.cache, settings, **kw)

    def finalize(self, store: Location, *, progress: bool) -> tuple[dict[str, Any], str]:
        """Seal the store; returns its checksums record and its state in words."""
        return finalize(store, progress=progress), "complete, read-only"

    def write_manifest(self, store: Location, manifest: str | os.PathLike) -> None:
        write_manifest(store, manifest)

    def verify(self, store: Location, **kw: Any):
        return verify(store, **kw)

    def list(self) -> list:
        return list_stores(self.cache)

    def gc(self, **kw: Any) -> list[dict[str, Any]]:
        return gc(self.cache, **kw)


class ObjectStoreTools:
    """The tools of a cache on an S3-compatible object store: work is done on the verified
    local copy (``basis.local_cache``) and published; gc asks before it deletes."""

    confirms_deletion = True

    def __init__(self, cache: Location) -> None:
        from se3t.basis.remote import RemoteCache  # deferred: s3fs is an optional dependency

        self.cache = cache
        self.remote = RemoteCache(cache)

    def precompute(self, dataset: str, settings: Any, **kw: Any) -> dict[str, Any]:
        from se3t.basis.publisher import precompute_remote

        return precompute_remote(dataset, self.cache, settings, **kw)

    def finalize(self, store: Location, *, progress: bool) -> tuple[dict[str, Any], str]:
        """``checksums.json`` written last, conditionally; returns the record and whether this
        call published it, in words."""
        from se3t.basis.publisher import finalize_remote

        self.remote.check_bucket()
        record, won = finalize_remote(self.remote, str(store))
        return record, "published" if won else "already published (reused)"

    def write_manifest(self, store: Location, manifest: str | os.PathLike) -> None:
        """The run manifest, written from the verified local copy and pointing at the URL."""
        from se3t.basis.local_cache import write_remote_manifest

        write_remote_manifest(store, manifest, self.remote, self.cache.local_copy())

    def verify(self, store: Location, **kw: Any):
        from se3t.basis.remote_cache import verify_remote

        return verify_remote(str(store), self.remote, local_cache=self.cache.local_cache, **kw)

    def list(self) -> list:
        from se3t.basis.remote_cache import list_remote

        return list_remote(self.remote)

    def gc(self, **kw: Any) -> list[dict[str, Any]]:
        from se3t.basis.remote_cache import gc_remote

        return gc_remote(self.remote, **kw)


def cache_tools(cache: Location) -> FolderTools | ObjectStoreTools:
    """The tools for ``cache``: the one place that asks what kind of cache it is."""
    return ObjectStoreTools(cache) if cache.object_store else FolderTools(cache)


def store_tools(
    key_or_path: str, cache: Location
) -> tuple[Location, FolderTools | ObjectStoreTools]:
    """The store ``KEY|PATH|URL`` names (a key is looked up in ``cache``) and the tools of the
    cache it is in (a store URL carries ``cache``'s storage options and local copy)."""
    store = Location.parse(
        resolve_store(key_or_path, cache),
        "KEY|PATH",
        storage_options=cache.storage_options,
        local_cache=cache.local_cache,
    )
    # chosen by the store: a local store given by path is a folder's, whatever basis.cache is
    return store, ObjectStoreTools(cache_of(store)) if store.object_store else FolderTools(cache)


def publish_store(
    key_or_path: str, local_cache: Location, target: Location, *, progress: bool
) -> tuple[str, dict[str, Any]]:
    """Upload the finalized store ``KEY|PATH`` (a key is looked up in ``local_cache``) to the
    object-store cache ``target``; returns the key and the receipt."""
    from se3t.basis.publisher import publish

    if not target.object_store:
        raise InputError(
            f"{target.origin} {str(target)!r}: give an s3://bucket/prefix cache to publish to"
        )
    local = Path(resolve_store(key_or_path, local_cache))
    if not (local / CHECKSUMS_FILE).is_file():
        raise InputError(f"basis store {str(local)!r} is not finalized; run se3t basis finalize")
    key = local.name.removesuffix(".zarr")
    tools = ObjectStoreTools(target)
    tools.remote.check_bucket()
    store = str(store_location(target, key))
    return key, publish(tools.remote, local, store, progress=progress)
