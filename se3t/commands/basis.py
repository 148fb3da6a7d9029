"""``se3t basis key|precompute|finalize|publish|verify|ls|gc``: the shared basis store
(docs/basis.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from se3t.commands.common import Alias, add_config_arguments, load_config
from se3t.errors import InputError
from se3t.io import write_json

_EXAMPLE = "basis.max_degree=3 basis.dtype=float16 basis.compressor=zstd basis.chunk_edges=4096"
_CACHE = Alias(
    "--cache",
    "basis.cache",
    metavar="CACHE",
    help="cache folder holding basis/KEY.zarr, or s3://bucket/prefix",
)
_DATASET = Alias("--dataset", "data.path", metavar="PATH", help="dataset store")


def _common(p: argparse.ArgumentParser, *aliases: Alias) -> None:
    add_config_arguments(p, example=_EXAMPLE, aliases=(_CACHE, *aliases))


def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    top = subparsers.add_parser(
        "basis",
        help="precompute the equivariant bases into a shared, content-addressed Zarr cache",
        description=(
            "Precompute the per-edge SE(3) bases of a dataset store once into "
            "CACHE/basis/KEY.zarr, where KEY hashes everything the values depend on (dataset "
            "fingerprint, max degree, dtype, basis layout and code version). Runs, users and "
            "teams pointing at one cache share the store. See docs/basis.md."
        ),
    )
    sub = top.add_subparsers(dest="basis_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "key",
        help="print the store key for a dataset and settings",
        description="Print the content-addressed key of the basis store that "
        "precompute would write for this dataset and settings.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--path",
        action="store_true",
        help="print the store path CACHE/basis/KEY.zarr instead of the key",
    )
    _common(p, _DATASET)
    p.set_defaults(func=_key)

    p = sub.add_parser(
        "precompute",
        help="compute the bases of a dataset into the cache (resumable)",
        description=(
            "Compute the bases of every edge of the dataset into CACHE/basis/KEY.zarr. Shards "
            "already present are reused: a rerun after a crash computes only the missing ones, "
            "and a complete store costs nothing. --shard I/N computes the I-th of N contiguous "
            "slices, so N cluster jobs fill one store; concurrent processes on one key split "
            "the work and all succeed. The cache is checked writable before any work."
        ),
        formatter_class=fmt,
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="compute only slice I of N (0-based) of the store's shards",
    )
    p.add_argument(
        "--receipt",
        metavar="FILE",
        default=None,
        help="write a JSON receipt: key, store, shard, chunks computed and reused, edges/s",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p, _DATASET)
    p.set_defaults(func=_precompute)

    p = sub.add_parser(
        "finalize",
        help="check completeness, write checksums, seal read-only, write a manifest",
        description=(
            "Check that every shard of the store is present, write checksums.json (sha256 per "
            "shard file; its presence marks the store complete), remove claim and temporary "
            "files and make the store read-only. Idempotent. With --manifest, also write the "
            "run-folder manifest (JSON: key, store path, dataset fingerprint, settings, created, "
            "checksum) that training reads through basis.manifest."
        ),
        formatter_class=fmt,
    )
    p.add_argument("store", metavar="KEY|PATH", help="store key (looked up in the cache) or path")
    p.add_argument(
        "--manifest",
        metavar="FILE",
        default=None,
        help="write the run-folder manifest pointing at the store here",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=_finalize)

    p = sub.add_parser(
        "verify",
        help="check checksums and recompute a random sample of edges",
        description=(
            "Check every shard file against checksums.json and recompute --sample random edges "
            "from the dataset, comparing them with the stored values. Names every bad file or "
            "chunk; exits 1 when any is found or the store is incomplete."
        ),
        formatter_class=fmt,
    )
    p.add_argument(
        "store", metavar="KEY|PATH", help="store key (looked up in the cache), path or fsspec URL"
    )
    p.add_argument(
        "--sample",
        metavar="N",
        type=int,
        default=1000,
        help="random edges to recompute (0: checksums only)",
    )
    p.add_argument(
        "--dataset",
        metavar="PATH",
        default=None,
        help="dataset store to recompute from (default: the one the store records)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of the edge sample")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _common(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser(
        "ls",
        help="list the stores of a cache",
        description="List the basis stores of a cache: key, dataset, degree, dtype, compressor, "
        "size on disk, complete or shards present, created when and by whom.",
        formatter_class=fmt,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(func=_ls)

    p = sub.add_parser(
        "gc",
        help="remove stale incomplete stores and, on request, unreferenced ones",
        description=(
            "Remove abandoned incomplete stores (and temporary folders of interrupted "
            "processes) not modified for --older-than. A store being written (a live claim: "
            "its writer runs on this host, or its lease from another host has not expired) is "
            "never removed, whatever its age: it is listed as 'in progress (user, host, since)'. "
            "With --unreferenced, also remove complete stores that "
            "no basis manifest under --manifests names. Use --dry-run first."
        ),
        formatter_class=fmt,
    )
    p.add_argument(
        "--older-than",
        metavar="AGE",
        default="24h",
        help="age of abandoned incomplete stores to remove: seconds or 30m, 24h, 7d",
    )
    p.add_argument(
        "--unreferenced",
        action="store_true",
        help="also remove complete stores that no manifest references",
    )
    p.add_argument(
        "--manifests",
        metavar="PATH",
        nargs="+",
        default=None,
        help="manifest files, or folders searched recursively for them",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument(
        "--yes",
        action="store_true",
        help="on an s3:// cache, remove without asking (gc asks before deleting there)",
    )
    _common(p)
    p.set_defaults(func=_gc)

    p = sub.add_parser(
        "publish",
        help="upload a finalized local store to an s3:// cache (resumable, safe to race)",
        description=(
            "Upload a finalized store of basis.local_cache to an S3-compatible cache: shard "
            "files first (each with Content-MD5 and its sha256), verified, then checksums.json, "
            "the object that makes the store visible, written only if absent. A rerun uploads "
            "only what is missing or damaged; when another publisher wins, its store is reused. "
            "See docs/basis.md, 'sharing across sites'."
        ),
        formatter_class=fmt,
    )
    p.add_argument(
        "store", metavar="KEY|PATH", help="store key (looked up in basis.local_cache) or path"
    )
    p.add_argument(
        "--to", metavar="S3_URL", default=None, help="s3://bucket/prefix (default: basis.cache)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=_publish)


def is_s3(where: str) -> bool:
    """An object-store cache or store; the rest of se3t's import is deferred."""
    return str(where).startswith(("s3://", "s3a://"))


def _key(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import BasisSettings, basis_key, store_path
    from se3t.data.store import fingerprint

    cfg = load_config(args)
    s = BasisSettings.from_config(cfg.basis)
    key = basis_key(fingerprint(cfg.data.path), s.max_degree, s.dtype)
    print(store_path(cfg.basis.cache, key) if args.path else key)
    return 0


def _precompute(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import BasisSettings, precompute

    cfg = load_config(args)
    if is_s3(cfg.basis.cache):  # object-store cache: compute locally, upload (or download)
        from se3t.basis.publisher import precompute_remote

        receipt = precompute_remote(
            cfg.data.path,
            cfg.basis.cache,
            BasisSettings.from_config(cfg.basis),
            local_cache=cfg.basis.local_cache,
            storage_options=cfg.basis.storage_options,
            shard=args.shard,
            progress=not args.quiet,
        )
    else:
        receipt = precompute(
            cfg.data.path,
            cfg.basis.cache,
            BasisSettings.from_config(cfg.basis),
            shard=args.shard,
            progress=not args.quiet,
        )
    if args.receipt:
        write_json(args.receipt, receipt)
    state = (
        "published store downloaded"
        if receipt.get("downloaded")
        else "complete store reused"
        if receipt["complete"]
        else (
            f"{receipt['chunks_computed']} chunks computed, {receipt['chunks_reused']} reused, "
            f"{receipt['chunks_by_others']} by other processes"
        )
    )
    print(
        f"{receipt['key']} shard {receipt['shard']}: {state}; "
        f"{receipt['edges_per_s']:,.0f} edges/s -> {receipt['store']}"
    )
    return 0


def _finalize(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import finalize, resolve_store, write_manifest

    cfg = load_config(args)
    where = resolve_store(args.store, cfg.basis.cache)
    if is_s3(where):
        return _finalize_remote(args, cfg, where)
    record = finalize(where, progress=not args.quiet)
    print(
        f"{record['key']}: complete, {len(record['files'])} shard files, "
        f"{record['total_bytes'] / 1e6:,.1f} MB, read-only -> {where}"
    )
    if args.manifest:
        write_manifest(where, args.manifest)
        print(f"manifest -> {args.manifest}")
    return 0


def _finalize_remote(args: argparse.Namespace, cfg, where: str) -> int:
    """finalize on an object store: checksums.json written last, conditionally; the run
    manifest is written from the verified local copy and points at the URL."""
    from se3t.basis.local_cache import write_remote_manifest
    from se3t.basis.publisher import finalize_remote
    from se3t.basis.remote import RemoteCache

    remote = RemoteCache(_cache_of(where), cfg.basis.storage_options)
    remote.check_bucket()
    record, won = finalize_remote(remote, where)
    how = "published" if won else "already published (reused)"
    print(
        f"{record['key']}: {how}, {len(record['files'])} files, "
        f"{record['total_bytes'] / 1e6:,.1f} MB -> {where}"
    )
    if args.manifest:
        write_remote_manifest(where, args.manifest, remote, cfg.basis.local_cache)
        print(f"manifest -> {args.manifest}")
    return 0


def _cache_of(store_url: str) -> str:
    return store_url.rstrip("/").rsplit("/basis/", 1)[0]


def _publish(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, s3fs) loads only when the command runs
    from pathlib import Path

    from se3t.basis import resolve_store, store_path
    from se3t.basis.publisher import publish
    from se3t.basis.remote import RemoteCache

    cfg = load_config(args)
    target = args.to or cfg.basis.cache
    if not is_s3(target):
        raise InputError(f"--to {target!r}: give an s3://bucket/prefix cache to publish to")
    local = Path(resolve_store(args.store, cfg.basis.local_cache))
    if not (local / "checksums.json").is_file():
        raise InputError(f"basis store {str(local)!r} is not finalized; run se3t basis finalize")
    key = local.name.removesuffix(".zarr")
    remote = RemoteCache(target, cfg.basis.storage_options)
    remote.check_bucket()
    receipt = publish(remote, local, store_path(target, key), progress=not args.quiet)
    if receipt.get("reused") and "uploaded" not in receipt:
        print(f"{key}: already published at {receipt['store']} (nothing uploaded)")
    else:
        print(
            f"{key}: {'published' if receipt['published'] else 'another publisher won; reused'}"
            f": {receipt['uploaded']} objects uploaded, {receipt['present']} already there, "
            f"{receipt['adopted']} adopted, {receipt['bytes_uploaded'] / 1e6:,.1f} MB "
            f"-> {receipt['store']}"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import resolve_store, verify

    cfg = load_config(args)
    where = resolve_store(args.store, cfg.basis.cache)
    if is_s3(where):
        from se3t.basis.remote import RemoteCache
        from se3t.basis.remote_cache import verify_remote

        report = verify_remote(
            where,
            RemoteCache(_cache_of(where), cfg.basis.storage_options),
            sample=args.sample,
            dataset=args.dataset,
            local_cache=cfg.basis.local_cache,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    else:
        report = verify(
            where,
            sample=args.sample,
            dataset=args.dataset,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        if not report.complete:
            print(f"{where}: INCOMPLETE (not finalized)")
        for line in report.bad_files + report.bad_chunks:
            print(f"BAD {line}")
        print(
            f"{report.key}: {'OK' if report.ok else 'FAILED'}: {report.files_checked} files "
            f"checked, {report.edges_sampled} edges recomputed (max |error| "
            f"{report.max_abs_error:.2e})"
        )
    return 0 if report.ok else 1


def _ls(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import list_stores

    cfg = load_config(args)
    if is_s3(cfg.basis.cache):
        from se3t.basis.remote import RemoteCache
        from se3t.basis.remote_cache import list_remote

        stores = list_remote(RemoteCache(cfg.basis.cache, cfg.basis.storage_options))
    else:
        stores = list_stores(cfg.basis.cache)
    rows = [s.as_dict() for s in stores]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no basis stores in {cfg.basis.cache}/basis")
        return 0
    print(
        f"{'KEY':24}  {'DATASET':12}  {'DEG':>3}  {'DTYPE':7}  {'COMPRESSOR':10}  "
        f"{'SIZE':>9}  {'STATE':14}  CREATED               BY"
    )
    for r in rows:
        state = "complete" if r["complete"] else f"{r['units_present']}/{r['num_units']} shards"
        print(
            f"{r['key']:24}  {str(r['dataset_fingerprint'])[:12]:12}  {r['max_degree']!s:>3}  "
            f"{r['dtype']!s:7}  {r['compressor']!s:10}  {r['bytes_on_disk'] / 1e6:>7.1f}MB  "
            f"{state:14}  {r['created']!s:20}  {r['created_by']}"
        )
    return 0


def _age(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smhd]?)\s*", text)
    if not m:
        raise InputError(f"--older-than {text!r}: give seconds or a number with s, m, h or d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _gc(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import gc

    cfg = load_config(args)
    if is_s3(cfg.basis.cache):
        return _gc_remote(args, cfg, cfg.basis.cache)
    removed = gc(
        cfg.basis.cache,
        older_than_s=_age(args.older_than),
        unreferenced=args.unreferenced,
        manifests=args.manifests,
        dry_run=args.dry_run,
    )
    verb = "would remove" if args.dry_run else "removed"
    for r in removed:
        what = "kept" if r.get("kept") else verb
        print(f"{what} {r['path']} ({r['bytes_on_disk'] / 1e6:.1f} MB): {r['reason']}")
    gone = [r for r in removed if not r.get("kept")]
    print(f"{verb} {len(gone)} store(s), {sum(r['bytes_on_disk'] for r in gone) / 1e6:.1f} MB")
    return 0


def _gc_remote(args: argparse.Namespace, cfg, cache: str) -> int:
    """gc on an object store: shows what it would remove and asks first, unless --yes."""
    from se3t.basis.remote import RemoteCache
    from se3t.basis.remote_cache import gc_remote

    remote = RemoteCache(cache, cfg.basis.storage_options)
    kw = {
        "older_than_s": _age(args.older_than),
        "unreferenced": args.unreferenced,
        "manifests": args.manifests,
    }
    listed = gc_remote(remote, dry_run=True, **kw)
    for r in listed:
        what = "kept" if r.get("kept") else "would remove"
        print(f"{what} {r['path']} ({r['bytes_on_disk'] / 1e6:.1f} MB): {r['reason']}")
    plan = [r for r in listed if not r.get("kept")]
    if args.dry_run:
        print(f"would remove {len(plan)} store(s) from {cache}")
        return 0
    if not plan:
        print(f"removed 0 store(s), 0.0 MB from {cache}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise InputError(
                f"gc on the remote cache {cache!r} deletes {len(plan)} store(s): pass --yes "
                "to confirm (no terminal to ask on)"
            )
        answer = input(f"remove {len(plan)} store(s) from {cache}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing removed")
            return 1
    removed = [r for r in gc_remote(remote, **kw) if not r.get("kept")]
    for r in removed:
        print(f"removed {r['path']} ({r['bytes_on_disk'] / 1e6:.1f} MB): {r['reason']}")
    print(
        f"removed {len(removed)} store(s), {sum(r['bytes_on_disk'] for r in removed) / 1e6:.1f} MB"
    )
    return 0
