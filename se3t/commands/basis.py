"""``se3t basis key|precompute|finalize|publish|verify|ls|gc``: the shared basis store
(docs/basis.md). Each action is declared in :data:`_ACTIONS` (its parser) and done by one
function here; whether the cache is a folder or an object store is decided once, by
:func:`se3t.basis.tools.cache_tools`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from se3t.commands.common import Alias, add_config_arguments, load_config
from se3t.errors import InputError
from se3t.io import write_json
from se3t.location import Location

_EXAMPLE = "basis.max_degree=3 basis.dtype=float16 basis.compressor=zstd basis.chunk_edges=4096"
_CACHE = Alias(
    "--cache",
    "basis.cache",
    metavar="CACHE",
    help="cache folder holding basis/KEY.zarr, or s3://bucket/prefix",
)
_DATASET = Alias("--dataset", "data.path", metavar="PATH", help="dataset store")
_QUIET = ("--quiet", {"action": "store_true", "help": "no progress bar"})


def _store(where: str) -> tuple[str, dict[str, Any]]:
    return "store", {"metavar": "KEY|PATH", "help": f"store key (looked up in {where}) or path"}


@dataclass(frozen=True)
class _Action:
    """One ``se3t basis ACTION``: its parser's texts and arguments, and what runs it."""

    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], int]
    arguments: tuple[tuple[str, dict[str, Any]], ...] = ()
    aliases: tuple[Alias, ...] = ()


def register(subparsers) -> None:
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
    for action in _ACTIONS:
        p = sub.add_parser(
            action.name,
            help=action.help,
            description=action.description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        for flag, options in action.arguments:
            p.add_argument(flag, **options)
        add_config_arguments(p, example=_EXAMPLE, aliases=(_CACHE, *action.aliases))
        p.set_defaults(func=action.run)


def _cache(cfg) -> Location:
    """``basis.cache`` as a Location carrying the storage options and the local copy's folder."""
    return Location.from_config(cfg, "basis.cache")


def _key(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import BasisSettings, basis_key, store_path
    from se3t.data.store import fingerprint

    cfg = load_config(args)
    s = BasisSettings.from_config(cfg.basis)
    key = basis_key(fingerprint(cfg.data.path), s.max_degree, s.dtype)
    print(store_path(_cache(cfg), key) if args.path else key)
    return 0


def _precompute(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.basis import BasisSettings
    from se3t.basis.tools import cache_tools

    cfg = load_config(args)
    receipt = cache_tools(_cache(cfg)).precompute(
        cfg.data.path,
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
    from se3t.basis.tools import store_tools

    cfg = load_config(args)
    store, tools = store_tools(args.store, _cache(cfg))
    record, state = tools.finalize(store, progress=not args.quiet)
    print(
        f"{record['key']}: {state}, {len(record['files'])} files, "
        f"{record['total_bytes'] / 1e6:,.1f} MB -> {store}"
    )
    if args.manifest:
        tools.write_manifest(store, args.manifest)
        print(f"manifest -> {args.manifest}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, s3fs) loads only when the command runs
    from se3t.basis.tools import publish_store

    cfg = load_config(args)
    target = _cache(cfg)
    if args.to:
        target = Location.parse(args.to, "--to", storage_options=cfg.basis.storage_options)
    local = Location.from_config(cfg, "basis.local_cache")
    key, receipt = publish_store(args.store, local, target, progress=not args.quiet)
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
    from se3t.basis.tools import store_tools

    cfg = load_config(args)
    store, tools = store_tools(args.store, _cache(cfg))
    report = tools.verify(
        store,
        sample=args.sample,
        dataset=args.dataset,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        if not report.complete:
            print(f"{store}: INCOMPLETE (not finalized)")
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
    from se3t.basis.tools import cache_tools

    cache = _cache(load_config(args))
    rows = [s.as_dict() for s in cache_tools(cache).list()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no basis stores in {cache}/basis")
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
    from se3t.basis.tools import cache_tools

    tools = cache_tools(_cache(load_config(args)))
    kw = {
        "older_than_s": _age(args.older_than),
        "unreferenced": args.unreferenced,
        "manifests": args.manifests,
    }
    if tools.confirms_deletion:
        return _gc_confirmed(args, tools, kw)
    removed = tools.gc(dry_run=args.dry_run, **kw)
    verb = "would remove" if args.dry_run else "removed"
    _print_gc(removed, verb)
    gone = [r for r in removed if not r.get("kept")]
    print(f"{verb} {len(gone)} store(s), {sum(r['bytes_on_disk'] for r in gone) / 1e6:.1f} MB")
    return 0


def _print_gc(rows: list[dict[str, Any]], verb: str) -> None:
    for r in rows:
        what = "kept" if r.get("kept") else verb
        print(f"{what} {r['path']} ({r['bytes_on_disk'] / 1e6:.1f} MB): {r['reason']}")


def _gc_confirmed(args: argparse.Namespace, tools: Any, kw: dict[str, Any]) -> int:
    """gc that shows what it would remove and asks first, unless --yes (an object store: no
    one can see its folders the way a shared file system shows them)."""
    cache = str(tools.cache)
    listed = tools.gc(dry_run=True, **kw)
    _print_gc(listed, "would remove")
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
    removed = [r for r in tools.gc(**kw) if not r.get("kept")]
    _print_gc(removed, "removed")
    print(
        f"removed {len(removed)} store(s), {sum(r['bytes_on_disk'] for r in removed) / 1e6:.1f} MB"
    )
    return 0


def _opt(flag: str, help: str, **options: Any) -> tuple[str, dict[str, Any]]:
    return flag, {"help": help, **options}


_FLAG = {"action": "store_true"}
_ACTIONS = (
    _Action(
        "key",
        "print the store key for a dataset and settings",
        "Print the content-addressed key of the basis store that precompute would write for "
        "this dataset and settings.",
        _key,
        (_opt("--path", "print the store path CACHE/basis/KEY.zarr instead of the key", **_FLAG),),
        (_DATASET,),
    ),
    _Action(
        "precompute",
        "compute the bases of a dataset into the cache (resumable)",
        "Compute the bases of every edge of the dataset into CACHE/basis/KEY.zarr. Shards "
        "already present are reused: a rerun after a crash computes only the missing ones, "
        "and a complete store costs nothing. --shard I/N computes the I-th of N contiguous "
        "slices, so N cluster jobs fill one store; concurrent processes on one key split "
        "the work and all succeed. The cache is checked writable before any work.",
        _precompute,
        (
            _opt("--shard", "compute only slice I of N (0-based) of the store's shards",
                 metavar="I/N", default=None),
            _opt("--receipt", "write a JSON receipt: key, store, shard, chunks computed and "
                 "reused, edges/s", metavar="FILE", default=None),
            _QUIET,
        ),
        (_DATASET,),
    ),
    _Action(
        "finalize",
        "check completeness, write checksums, seal read-only, write a manifest",
        "Check that every shard of the store is present, write checksums.json (sha256 per "
        "shard file; its presence marks the store complete), remove claim and temporary "
        "files and make the store read-only. Idempotent. With --manifest, also write the "
        "run-folder manifest (JSON: key, store path, dataset fingerprint, settings, created, "
        "checksum) that training reads through basis.manifest.",
        _finalize,
        (
            _store("the cache"),
            _opt("--manifest", "write the run-folder manifest pointing at the store here",
                 metavar="FILE", default=None),
            _QUIET,
        ),
    ),
    _Action(
        "verify",
        "check checksums and recompute a random sample of edges",
        "Check every shard file against checksums.json and recompute --sample random edges "
        "from the dataset, comparing them with the stored values. Names every bad file or "
        "chunk; exits 1 when any is found or the store is incomplete.",
        _verify,
        (
            _opt("store", "store key (looked up in the cache), path or fsspec URL",
                 metavar="KEY|PATH"),
            _opt("--sample", "random edges to recompute (0: checksums only)", metavar="N",
                 type=int, default=1000),
            _opt("--dataset", "dataset store to recompute from (default: the one the store "
                 "records)", metavar="PATH", default=None),
            _opt("--seed", "seed of the edge sample", type=int, default=None),
            _opt("--json", "print the report as JSON", **_FLAG),
        ),
    ),
    _Action(
        "ls",
        "list the stores of a cache",
        "List the basis stores of a cache: key, dataset, degree, dtype, compressor, size on "
        "disk, complete or shards present, created when and by whom.",
        _ls,
        (_opt("--json", "print JSON instead of a table", **_FLAG),),
    ),
    _Action(
        "gc",
        "remove stale incomplete stores and, on request, unreferenced ones",
        "Remove abandoned incomplete stores (and temporary folders of interrupted processes) "
        "not modified for --older-than. A store being written (a live claim: its writer runs "
        "on this host, or its lease from another host has not expired) is never removed, "
        "whatever its age: it is listed as 'in progress (user, host, since)'. With "
        "--unreferenced, also remove complete stores that no basis manifest under --manifests "
        "names. Use --dry-run first.",
        _gc,
        (
            _opt("--older-than", "age of abandoned incomplete stores to remove: seconds or "
                 "30m, 24h, 7d", metavar="AGE", default="24h"),
            _opt("--unreferenced", "also remove complete stores that no manifest references",
                 **_FLAG),
            _opt("--manifests", "manifest files, or folders searched recursively for them",
                 metavar="PATH", nargs="+", default=None),
            _opt("--dry-run", "only print what would be removed", **_FLAG),
            _opt("--yes", "on an s3:// cache, remove without asking (gc asks before deleting "
                 "there)", **_FLAG),
        ),
    ),
    _Action(
        "publish",
        "upload a finalized local store to an s3:// cache (resumable, safe to race)",
        "Upload a finalized store of basis.local_cache to an S3-compatible cache: shard files "
        "first (each with Content-MD5 and its sha256), verified, then checksums.json, the "
        "object that makes the store visible, written only if absent. A rerun uploads only "
        "what is missing or damaged; when another publisher wins, its store is reused. See "
        "docs/basis.md, 'sharing across sites'.",
        _publish,
        (
            _store("basis.local_cache"),
            _opt("--to", "s3://bucket/prefix (default: basis.cache)", metavar="S3_URL",
                 default=None),
            _QUIET,
        ),
    ),
)  # fmt: skip
