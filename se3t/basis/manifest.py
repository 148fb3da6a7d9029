"""Sealing a basis store (:func:`finalize`: ``checksums.json``, read-only) and the run-folder
manifests that point at a complete store (:func:`write_manifest`, :func:`read_manifest`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from se3t.basis.claims import who
from se3t.basis.layout import (
    CHECKSUMS_FILE,
    CLAIMS_DIR,
    STORE_FORMAT,
    is_temporary,
    iso_time,
    open_group,
    read_checksums_bytes,
    store_files,
    store_meta,
    unit_exists,
    unit_file,
)
from se3t.basis.verification import index_problems, shard_problems
from se3t.errors import InputError
from se3t.io import write_bytes, write_text
from se3t.location import Location

MANIFEST_KIND = "se3t-basis-manifest"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _make_read_only(path: Path) -> None:
    # in a group-shared cache, files and folders written by another user's precompute keep
    # their mode (only their owner may change it); checksums.json still covers their content
    me = os.geteuid()
    write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for dirpath, dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            if me in (0, st.st_uid):
                os.chmod(full, st.st_mode & ~write)
        del dirs
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        st = os.stat(dirpath)
        if me in (0, st.st_uid):
            os.chmod(dirpath, st.st_mode & ~write)


def _refuse_damage(path: Path, group: Any, meta: dict[str, Any], progress: bool) -> None:
    bad = [
        f"{unit_file(u)}: {what}"
        for u, what in shard_problems(
            path, meta, range(meta["num_units"]), progress=progress
        ).items()
    ]
    bad += index_problems(str(path), group, meta)
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise InputError(
            f"basis store {str(path)!r} fails verification and is not finalized: {shown}. "
            "Rerun se3t basis precompute: it recomputes damaged shards"
        )


def finalize(store: str | os.PathLike, *, progress: bool = False) -> dict[str, Any]:
    """Seal a store: check every shard is present and intact (CRC32C of every chunk) and the
    index arrays agree with the chunk plan, write ``checksums.json`` (size and sha256 of every
    file: metadata, index arrays, shards), remove claims and temporary files, and make the store
    read-only. A damaged store is refused (InputError naming the files; rerun precompute, which
    recomputes damaged shards). Idempotent: a complete store is left as it is. Returns the
    checksums record."""
    path = Location.parse(store).path
    group = open_group(str(path))
    meta = store_meta(group, str(path))
    done = path / CHECKSUMS_FILE
    if done.is_file():
        return json.loads(done.read_text())
    missing = [u for u in range(meta["num_units"]) if not unit_exists(path, u)]
    if missing:
        names = ", ".join(unit_file(u) for u in missing[:5])
        raise InputError(
            f"basis store {str(path)!r} is incomplete: {len(missing)} of {meta['num_units']} "
            f"shards missing ({names}{', ...' if len(missing) > 5 else ''}); run "
            "se3t basis precompute (all --shard slices) before finalize"
        )
    _refuse_damage(path, group, meta, progress)
    shutil.rmtree(path / CLAIMS_DIR, ignore_errors=True)
    for leftover in (path / "basis").rglob(".*"):
        if leftover.is_file() and is_temporary(leftover.name):
            leftover.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    files = {}
    for name in tqdm(store_files(path), desc="checksums", disable=not progress):
        f = path / name
        files[name] = {"bytes": f.stat().st_size, "sha256": _sha256_file(f)}
    record = {
        "key": meta["key"],
        "algorithm": "sha256",
        "files": files,
        "total_bytes": sum(v["bytes"] for v in files.values()),
        "finalized": iso_time(),
        "finalized_by": who(),
    }
    # exclusive: when two finalizers race, the first record stays (manifests point at its hash)
    with contextlib.suppress(FileExistsError):
        write_bytes(
            done, json.dumps(record, indent=1, sort_keys=True).encode(), exclusive=True, fsync=True
        )
    _make_read_only(path)
    return json.loads(done.read_text())


def _canonical_sha(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(
    store: str | os.PathLike, manifest: str | os.PathLike, *, store_url: str | None = None
) -> dict[str, Any]:
    """Write the run-folder manifest that points at a complete store (what the workflow's basis
    rule outputs): key, store path or URL, dataset fingerprint, settings, sizes, created, and
    ``checksums_sha256`` (hash of the store's checksums file) plus ``manifest_sha256`` (hash of
    this record), so readers notice a store or manifest changed since. Atomic write.

    ``store_url``: the manifest points at this object-store URL; ``store`` is its verified local
    copy (same ``checksums.json`` byte for byte), from which the record is read."""
    loc = Location.parse(store)
    where = str(loc) if loc.remote else os.path.abspath(loc.path)
    group = open_group(where)
    meta = store_meta(group, where)
    checks = read_checksums_bytes(where)
    if checks is None:
        raise InputError(
            f"basis store {where!r} is not finalized (no {CHECKSUMS_FILE}); run se3t basis "
            "finalize on it first"
        )
    sizes = json.loads(checks)
    record = {
        "kind": MANIFEST_KIND,
        "store_format": STORE_FORMAT,
        "key": meta["key"],
        "store": store_url or where,
        "dataset_fingerprint": meta["dataset_fingerprint"],
        "dataset_path": meta.get("dataset_path"),
        "settings": {
            k: meta[k]
            for k in (
                "max_degree",
                "dtype",
                "basis_size",
                "layout_version",
                "code_version",
                "compressor",
                "compression_level",
                "chunk_edges",
                "chunks_per_shard",
            )
        },
        "num_molecules": meta["num_molecules"],
        "num_edges": meta["num_edges"],
        "store_bytes": sizes.get("total_bytes"),
        "store_created": meta.get("created"),
        "created": iso_time(),
        "created_by": who(),
        "checksums_sha256": hashlib.sha256(checks).hexdigest(),
    }
    record["manifest_sha256"] = _canonical_sha(record)
    out = Path(manifest)
    # fsync: the workflow's DAG points at this file; it must survive a power loss once renamed
    write_text(out, json.dumps(record, indent=2) + "\n", fsync=True)
    return record


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A run-folder manifest, checked for its kind and its own checksum."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
    except FileNotFoundError as err:
        raise InputError(f"basis manifest {str(p)!r} does not exist") from err
    except (OSError, ValueError) as err:
        raise InputError(f"basis manifest {str(p)!r} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("kind") != MANIFEST_KIND:
        raise InputError(f"basis manifest {str(p)!r} is not a se3t basis manifest")
    if record.get("manifest_sha256") != _canonical_sha(record):
        raise InputError(
            f"basis manifest {str(p)!r}: field 'manifest_sha256' does not match its "
            "contents (edited or damaged); rerun se3t basis finalize --manifest"
        )
    return record
