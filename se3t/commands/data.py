"""``se3t data fetch|build|info``: the data stage, QM9 or your own molecules (docs/data.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from se3t import config as C
from se3t.commands.common import Alias, add_config_arguments, load_config

_EXAMPLE = "data.figshare_sha256=abc... data.retries=3"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="fetch raw QM9 or your own molecules and build the dataset store",
        description="The data stage: `fetch` the input (QM9, or your own SDF, extended XYZ, "
        "XYZ folder + CSV, SMILES CSV: data.source, data.format) into a folder, `build` the "
        "Zarr dataset store from it, `info` prints a store's summary and build report.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    _declare_fetch(sub)
    _declare_build(sub)
    _declare_info(sub)


def _declare_fetch(sub) -> None:
    """`se3t data fetch`: the raw input into a folder."""
    fetch = sub.add_parser(
        "fetch",
        help="put the raw input files into a folder (with sha256 for each)",
        description="Fetch raw QM9, or copy your own input (data.source, and data.properties "
        "for an XYZ folder), into --out with a SOURCE.json listing every file's sha256. "
        "Files already there with the expected checksum are kept.",
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(
        fetch,
        example=_EXAMPLE,
        aliases=(
            Alias(
                "--source",
                "data.source",
                help="qm9pack (the installed PyPI package's CSVs), figshare (download "
                "data.figshare_url and data.uncharacterized_url, checked against "
                "data.*_sha256, resumable), a local folder / tar archive of QM9 XYZ files, or "
                "your own molecules: an .sdf, .extxyz/.xyz or SMILES .csv file, or a folder of "
                "XYZ files with data.properties (docs/data.md)",
            ),
            Alias("--out", "data.raw_dir", metavar="DIR", help="folder for the raw files"),
        ),
    )
    fetch.set_defaults(func=_fetch)


def _declare_build(sub) -> None:
    """`se3t data build`: the dataset store from the fetched input."""
    build = sub.add_parser(
        "build",
        help="parse the input, build graphs, write the Zarr dataset store",
        description="Parse every molecule of --raw (QM9: qm9pack CSVs or XYZ files, tarred or "
        "not; your own: the copy `fetch` made of data.source, read as data.format), drop bad "
        "ones (and QM9's uncharacterized) with a build report, take bonds from the file or "
        "perceive them with RDKit (or build a radius graph), record the element encoding, "
        "targets, ids and scaffolds, and write the store atomically to --out. Does nothing "
        "when --out was already built from the same inputs and settings.",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(
        build,
        example=_EXAMPLE.replace("figshare_sha256=abc...", "limit=1000"),
        aliases=(
            Alias("--raw", "data.raw_dir", metavar="DIR", help="folder from `se3t data fetch`"),
            Alias("--out", "data.path", metavar="PATH", help="dataset store to write"),
            Alias("--limit", "data.limit", type=int, metavar="N", help="keep the first N only"),
            Alias("--graph", "data.graph", help="bond or radius"),
            Alias("--cutoff", "data.cutoff", type=float, help="Å, for --graph radius"),
            Alias("--processes", "data.processes", type=int, help="bond perception workers"),
            Alias(
                "--strict",
                "data.strict",
                action="store_true",
                help="stop at the first bad molecule instead of dropping it into the report",
            ),
        ),
    )
    build.set_defaults(func=_build)


def _declare_info(sub) -> None:
    """`se3t data info`: a store's summary."""
    info = sub.add_parser(
        "info",
        help="summary and parse report of a dataset store",
        description="Print a dataset store's size, source, checksums, graph settings and "
        "parse report as JSON.",
    )
    info.add_argument("path", help="dataset store (e.g. results/data/qm9.zarr)")
    info.add_argument(
        "--verify", action="store_true", help="recompute the content hash and compare"
    )
    info.set_defaults(func=_info)


def _fetch(args) -> int:
    cfg = load_config(args)
    d = cfg.data
    manifest = _fetch_input(d, progress=not args.quiet)
    C.save(cfg, f"{d.raw_dir}/config.yaml")
    for name, f in manifest["files"].items():
        if f.get("sha256_checked") is False:
            print(
                f"warning: {name} was not checked against a known sha256 (set "
                "data.figshare_sha256 / data.uncharacterized_sha256); recorded in SOURCE.json",
                file=sys.stderr,
            )
    for name, f in manifest["files"].items():
        print(f"{d.raw_dir}/{name}  {f['bytes']} bytes  sha256 {f['sha256']}")
    return 0


def _fetch_input(d: C.DataConfig, progress: bool) -> dict:
    """QM9's raw files, or a copy of the user's own input, into ``data.raw_dir``."""
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.data.sources.own import fetch_molecules
    from se3t.data.sources.qm9 import fetch

    if C.data_format(d) != "qm9":
        return fetch_molecules(d, d.raw_dir)
    return fetch(
        d.source,
        d.raw_dir,
        figshare_url=d.figshare_url,
        figshare_sha256=d.figshare_sha256,
        uncharacterized_url=d.uncharacterized_url,
        uncharacterized_sha256=d.uncharacterized_sha256,
        retries=d.retries,
        timeout=d.timeout,
        progress=progress,
    )


def _build(args) -> int:
    cfg = load_config(args)
    d = cfg.data
    result = _build_store(d, args)
    r = result["report"]
    state = "up to date" if result["skipped"] else "written"
    dropped = f"dropped {r['dropped_total']}{' ' + str(r['dropped']) if r['dropped'] else ''}"
    if r.get("format", "qm9") == "qm9":
        read = f"{r['kept']} molecules kept of {r['read']} read"
        details = (
            f"uncharacterized {r['uncharacterized']}; bond orders pruned "
            f"{r.get('bond_pruned', 0)}, fallbacks {r['bond_fallbacks']}"
        )
    else:
        read = f"{r['kept']} molecules kept of {r['read']} read ({r['format']})"
        details = f"missing values {r['missing_values']}; bonds {r['bonds'] or '-'}"
    print(
        f"{d.path}: {state}; {read}; {dropped}; {details}; fingerprint {result['fingerprint'][:16]}"
    )
    if not result["skipped"]:
        C.save(cfg, f"{d.path}.config.yaml")
    return 0


def _build_store(d: C.DataConfig, args) -> dict:
    """The one build, with QM9's source or the user's (data.format)."""
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.data.build import build_store
    from se3t.data.sources.own import OwnSource
    from se3t.data.sources.qm9 import QM9Source, check_targets

    if C.data_format(d) == "qm9":
        check_targets(d.targets)
        source = QM9Source(
            d.raw_dir, limit=d.limit, graph=d.graph, cutoff=d.cutoff, strict=d.strict
        )
    else:
        # --raw given (the workflow's fetched copy) or data.raw_dir holding one: read that copy
        given = getattr(args, "alias_data__raw_dir", None) is not None
        raw = d.raw_dir if given or Path(d.raw_dir, "SOURCE.json").is_file() else None
        source = OwnSource(d, raw)
    return build_store(
        source, d.path, processes=d.processes, progress=not args.quiet, force=args.force
    )


def _info(args) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.data.store import open_dataset

    store = open_dataset(args.path)
    if args.verify:
        store.verify()
    a = dict(store.attrs)
    report = dict(a.get("parse_report", {}))
    ids = report.pop("bond_fallback_ids", [])
    report["bond_fallback_ids"] = f"{len(ids)} ids (first: {ids[:10]})"
    out = {
        "path": store.path,
        "molecules": len(store),
        "atoms": int(len(store.species)),
        "edges": int(len(store.src)),
        "graph": store.graph,
        "fingerprint": store.fingerprint,
        "verified": bool(args.verify),
        "source": a.get("source"),
        "units": a.get("units"),
        "targets": store.target_names,
        "encoding": store.encoding.to_dict(),
        "parse_report": report,
        "created": a.get("created"),
    }
    try:
        json.dump(out, sys.stdout, indent=2)
        print()
    except BrokenPipeError:  # `se3t data info ... | head`
        sys.stderr.close()
    return 0
