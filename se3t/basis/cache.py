"""The shared basis cache: resolving ``KEY|PATH`` arguments, listing stores and cleanup.

A cache is a folder (or an fsspec URL, for reading) holding ``basis/KEY.zarr`` stores. Stores are
content-addressed: ``KEY`` hashes everything their values depend on (see
:func:`se3t.basis.key.basis_key`), so runs, users and teams that point at one cache share one
store per dataset and setting. This module lists stores (``se3t basis ls``) and removes stale or
unreferenced ones (``se3t basis gc``); what a store looks like on disk is asked of
:mod:`se3t.basis.layout`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from se3t.basis.claims import describe, live_claims, owner_of
from se3t.basis.layout import (
    STORE_SUFFIX,
    is_complete,
    read_store_meta,
    store_path,
    units_present,
)
from se3t.basis.manifest import MANIFEST_KIND
from se3t.errors import InputError
from se3t.location import Location

__all__ = [
    "StoreInfo",
    "gc",
    "list_stores",
    "referenced_keys",
    "remove_store",
    "resolve_store",
]

_KEY_RE = re.compile(r"^[0-9a-f]{8,64}$")


def resolve_store(key_or_path: str, cache: str | os.PathLike | None) -> str:
    """A store path or URL from ``KEY`` (looked up in ``CACHE/basis``) or ``PATH``.

    A bare hexadecimal key needs a cache; anything with a slash, a ``.zarr`` suffix or an
    existing path is taken as the store itself.
    """
    text = str(key_or_path)
    if _KEY_RE.match(text) and not Path(text).exists():
        if cache is None:
            raise InputError(f"basis key {text!r}: give --cache (or basis.cache) to find it")
        return store_path(cache, text)
    return text


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _disk_usage(path: Path) -> tuple[int, float]:
    """Bytes on disk and the newest modification time below ``path``."""
    total = 0
    newest = path.stat().st_mtime if path.exists() else 0.0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


@dataclass
class StoreInfo:
    """One row of ``se3t basis ls``."""

    key: str
    path: str
    complete: bool
    bytes_on_disk: int
    modified: float
    meta: dict[str, Any]
    units_present: int | None = None

    def as_dict(self) -> dict[str, Any]:
        m = self.meta
        return {
            "key": self.key,
            "path": self.path,
            "complete": self.complete,
            "bytes_on_disk": self.bytes_on_disk,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.modified)),
            "dataset_fingerprint": m.get("dataset_fingerprint"),
            "dataset_path": m.get("dataset_path"),
            "max_degree": m.get("max_degree"),
            "dtype": m.get("dtype"),
            "compressor": m.get("compressor"),
            "num_molecules": m.get("num_molecules"),
            "num_edges": m.get("num_edges"),
            "units_present": self.units_present,
            "num_units": m.get("num_units"),
            "created": m.get("created"),
            "created_by": m.get("created_by"),
        }


def list_stores(cache: str | os.PathLike) -> list[StoreInfo]:
    """Every basis store in ``CACHE/basis`` with its settings, size and state (newest first)."""
    root = Location.parse(cache, "basis.cache").path / "basis"
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if not entry.name.endswith(STORE_SUFFIX) or entry.name.startswith("."):
            continue
        meta = read_store_meta(entry) or {}
        size, newest = _disk_usage(entry)
        complete = is_complete(entry)
        out.append(
            StoreInfo(
                key=entry.name[: -len(STORE_SUFFIX)],
                path=str(entry),
                complete=complete,
                bytes_on_disk=size,
                modified=newest,
                meta=meta,
                units_present=units_present(entry),
            )
        )
    out.sort(key=lambda s: s.modified, reverse=True)
    return out


def referenced_keys(manifests: list[str | os.PathLike]) -> set[str]:
    """Keys named by basis manifests: files, or folders searched recursively for ``*.json``."""
    keys: set[str] = set()
    for item in manifests:
        p = Path(item)
        if not p.exists():
            raise InputError(f"manifest path {str(p)!r} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("*.json"))
        for f in files:
            data = _read_json(f)
            if isinstance(data, dict) and data.get("kind") == MANIFEST_KIND:
                keys.add(str(data.get("key")))
    return keys


def _make_writable(path: Path) -> None:
    me = os.geteuid()
    for dirpath, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            # another user's file (a group-shared cache) keeps its mode: only its owner may
            # change it, and deleting it needs only its folder to be writable
            if not stat.S_ISLNK(st.st_mode) and me in (0, st.st_uid):
                os.chmod(full, st.st_mode | stat.S_IWUSR | stat.S_IXUSR * stat.S_ISDIR(st.st_mode))


def _removable(path: Path) -> bool:
    """Whether this user can delete every folder of ``path`` (a finalized store's folders are
    read-only: deleting needs their owner, who can make them writable, or root)."""
    me = os.geteuid()
    for dirpath, _dirs, _files in os.walk(path):
        if me != 0 and os.stat(dirpath).st_uid != me and not os.access(dirpath, os.W_OK):
            return False
    return True


def remove_store(path: Path) -> None:
    """Remove a store: first renamed out of the way (so no reader or writer sees a half-deleted
    store under its key), then deleted, read-only bits included."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    _make_writable(trash)
    shutil.rmtree(trash)


def _remove_unless_claimed(path: Path, claim_ttl_s: float) -> list[dict]:
    """Remove a store nobody holds a claim on; returns the claims that kept it. Renamed aside
    first, then checked again: a writer that claimed it between the check and the rename gets
    it back under its name."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    live = live_claims(trash, claim_ttl_s)
    if live:
        os.rename(trash, path)
        return live
    _make_writable(trash)
    shutil.rmtree(trash)
    return []


# a temporary folder has no claim that tells whether its writer still runs (it is being
# renamed into place within seconds): it counts as abandoned only after this long
TMP_GRACE_S = 600.0


def gc(
    cache: str | os.PathLike,
    *,
    older_than_s: float = 24 * 3600,
    unreferenced: bool = False,
    manifests: list[str | os.PathLike] | None = None,
    dry_run: bool = False,
    now: float | None = None,
    claim_ttl_s: float = 600.0,
) -> list[dict[str, Any]]:
    """Remove abandoned incomplete stores (and leftover temporary folders) untouched for
    ``older_than_s`` seconds; with ``unreferenced``, also complete stores that none of
    ``manifests`` (files or folders searched for basis manifests) names.

    Live work is never removed: an incomplete store with a live claim (its writer runs on this
    host, or its lease from another host is younger than ``claim_ttl_s``) is kept, whatever
    its age. Returns one dict per store removed (or, dry run, to be removed): ``path``,
    ``bytes_on_disk``, ``reason``; and per store kept: the same with ``kept: True`` and the
    reason (``in progress (user, host, since ...)``, or whose store it is).
    """
    if unreferenced and not manifests:
        raise InputError("gc --unreferenced needs --manifests PATH... (files or folders to search)")
    now = time.time() if now is None else now
    root = Location.parse(cache, "basis.cache").path / "basis"
    if not root.is_dir():
        return []
    keep = referenced_keys(list(manifests or [])) if unreferenced else None
    out = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        try:
            size, newest = _disk_usage(entry)
        except FileNotFoundError:
            continue  # renamed or removed meanwhile (a finalize, another gc)
        reason, kept = _verdict(entry, now - newest, older_than_s, keep, claim_ttl_s, now)
        if kept:
            out.append(_kept(entry, size, kept))
        elif reason:
            out.append(_remove_entry(entry, size, reason, dry_run, claim_ttl_s))
    return out


def _verdict(
    entry: Path,
    age: float,
    older_than_s: float,
    keep: set[str] | None,
    claim_ttl_s: float,
    now: float,
) -> tuple[str | None, str | None]:
    """``(why gc removes the entry, why it keeps it)``; both None: not gc's business. Live
    work is kept whatever its age; ``keep`` (with --unreferenced) holds the referenced keys."""
    if entry.name.startswith("."):  # .KEY.zarr.tmp-*, .trash-* left by a crash
        if age >= max(older_than_s, TMP_GRACE_S):
            return "temporary folder left by an interrupted process", None
        return None, None
    if not entry.name.endswith(STORE_SUFFIX):
        return None, None
    if not is_complete(entry):
        live = live_claims(entry, claim_ttl_s, now)
        if live:
            return None, f"in progress ({describe(live[0])})"
        if age >= older_than_s:
            return f"incomplete, abandoned, untouched for {age / 3600:.1f} h", None
        return None, None
    if keep is not None and entry.name[: -len(STORE_SUFFIX)] not in keep:
        return "complete but referenced by no manifest", None
    return None, None


def _remove_entry(
    entry: Path, size: int, reason: str, dry_run: bool, claim_ttl_s: float
) -> dict[str, Any]:
    """Remove (unless ``dry_run``) what gc chose; another user's entry, or a store claimed
    meanwhile, is kept and said so."""
    if not _removable(entry):
        owner = owner_of(entry)
        return _kept(entry, size, f"{reason}, but owned by {owner}: {owner} can remove it")
    if not dry_run:
        if entry.name.startswith("."):
            _rm_tmp(entry)
        elif is_complete(entry):
            remove_store(entry)
        else:
            live = _remove_unless_claimed(entry, claim_ttl_s)
            if live:
                return _kept(entry, size, f"in progress ({describe(live[0])})")
    return {"path": str(entry), "bytes_on_disk": size, "reason": reason}


def _kept(entry: Path, size: int, reason: str) -> dict[str, Any]:
    return {"path": str(entry), "bytes_on_disk": size, "reason": reason, "kept": True}


def _rm_tmp(path: Path) -> None:
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)
