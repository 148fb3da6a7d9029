"""``se3t data build``: raw QM9 (either format) -> the dataset store.

Steps: find the raw files (:func:`find_raw`), parse every molecule (drop bad ones with a reason,
or stop with ``strict``), drop the molecules figshare lists as uncharacterized, perceive bonds
in ``processes`` worker processes, sort by gdb id and write the store atomically. The store's
``build_key`` hashes the raw files' sha256 and the settings; when the store at ``out`` already
has the same key, the build does nothing.

Policy for bad input (documented in docs/data.md): a bad *file* (unreadable, corrupt or truncated
archive, CSV without a required column) is an error naming the file; a bad *molecule* (atom count
disagreeing with its lines, non-numeric or non-finite coordinate, unknown element, two atoms at
one position, non-numeric property) is dropped and named in the parse report, or is an error
with ``strict=True``. A build that keeps no molecule is an error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from se3t.choices import Graph
from se3t.config import QM9_TARGETS
from se3t.data.bonds import molecule_graph
from se3t.data.parse import (
    FAR_FROM_ORIGIN,
    MoleculeError,
    centered,
    iter_csv,
    iter_xyz_archive,
    iter_xyz_dir,
    read_uncharacterized,
)
from se3t.data.qm9 import TARGET_UNITS, Record
from se3t.data.store import FORMAT_VERSION, open_dataset, read_attrs, write_dataset
from se3t.data.workers import fork_pool
from se3t.errors import InputError

log = logging.getLogger("se3t.data")

__all__ = ["RawSource", "build_dataset", "find_raw", "sha256_file"]

# How many dropped molecules the report names one by one (the counts cover all of them).
REPORT_EXAMPLES = 200
_CHUNK = 500  # molecules per task sent to a bond-perception worker
# Bumped whenever parsing or bond perception changes what a build writes, so that stores built
# by older code are rebuilt instead of being taken as up to date (part of the build key).
BUILD_VERSION = 2


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


class RawSource:
    """The raw QM9 files found at a path: ``kind`` is csv, xyz-archive or xyz-dir."""

    def __init__(self, kind: str, files: list[Path], uncharacterized: Path | None, root: Path):
        self.kind, self.files, self.uncharacterized, self.root = kind, files, uncharacterized, root

    def all_files(self) -> list[Path]:
        return self.files + ([self.uncharacterized] if self.uncharacterized else [])

    def records(self) -> Iterator[Record | MoleculeError]:
        for f in self.files:
            if self.kind == "csv":
                yield from iter_csv(f)
            elif self.kind == "xyz-archive":
                yield from iter_xyz_archive(f)
            else:
                yield from iter_xyz_dir(f)


def find_raw(raw: str | os.PathLike) -> RawSource:
    """Detect the format at ``raw``: a folder from ``se3t data fetch``, a folder of qm9pack CSVs,
    of tar archives or of XYZ files, or one archive or CSV file."""
    root = Path(raw)
    if not root.exists():
        raise InputError(f"{root}: raw QM9 input does not exist (run `se3t data fetch` first)")
    if root.is_file():
        if root.suffix == ".csv":
            return RawSource("csv", [root], None, root.parent)
        return RawSource("xyz-archive", [root], None, root.parent)
    unc = root / "uncharacterized.txt"
    unc_path = unc if unc.is_file() else None
    # hidden files are the temporaries of an interrupted atomic write (se3t.io), never input
    csvs = sorted(root.glob("qm9_part*.csv")) or sorted(
        p for p in root.glob("*.csv") if not p.name.startswith(".")
    )
    if csvs:
        return RawSource("csv", csvs, unc_path, root)
    archives = sorted(
        p
        for p in root.iterdir()
        if p.is_file()
        and any(
            p.name.endswith(s) for s in (".tar", ".tar.bz2", ".tar.gz", ".tar.xz", ".tgz", ".tbz2")
        )
    )
    if archives:
        return RawSource("xyz-archive", archives, unc_path, root)
    if any(root.rglob("*.xyz")):
        return RawSource("xyz-dir", [root], unc_path, root)
    raise InputError(
        f"{root}: no QM9 input found (expected qm9_part*.csv, a tar archive of XYZ files, "
        "or .xyz files)"
    )


def _perceive(task: tuple[list[tuple[np.ndarray, np.ndarray]], str, float]):
    mols, graph, cutoff = task
    return [molecule_graph(species, pos, graph, cutoff) for species, pos in mols]


def build_key(source: RawSource, settings: dict[str, Any]) -> tuple[str, dict[str, str]]:
    files = {
        str(p.relative_to(source.root)) if p.is_relative_to(source.root) else str(p): sha256_file(p)
        for p in _hashable(source)
    }
    h = hashlib.sha256(
        json.dumps(
            {
                "files": files,
                "settings": settings,
                "build_version": BUILD_VERSION,
                "format_version": FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    return h.hexdigest(), files


def _hashable(source: RawSource) -> list[Path]:
    out = []
    for f in source.all_files():
        out.extend(sorted(f.rglob("*.xyz")) if f.is_dir() else [f])
    return out


def _intact(out: Path) -> bool:
    """A store is up to date only when its content verifies, not only its build key: one
    damaged since it was built is rebuilt (and the damage is logged)."""
    try:
        open_dataset(out)
    except InputError as err:
        log.warning("%s; rebuilding it", err)
        return False
    return True


def build_dataset(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    graph: str = "bond",
    cutoff: float = 5.0,
    processes: int = 2,
    strict: bool = False,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Build the dataset store at ``out`` from the raw QM9 files at ``raw``.

    Returns ``{"path", "skipped", "report", "fingerprint"}``; ``skipped`` is True when ``out``
    was already built from the same inputs and settings (then nothing is written).
    """
    if graph not in [g.value for g in Graph]:
        raise InputError(f"graph {graph!r}: must be one of {[g.value for g in Graph]}")
    out = Path(out)
    source = find_raw(raw)
    settings = {"limit": limit, "graph": graph, "cutoff": cutoff if graph == "radius" else None}
    key, files = build_key(source, settings)
    if out.exists() and not force:
        try:
            attrs = read_attrs(out)
        except InputError:
            attrs = {}
        if attrs.get("build_key") == key and _intact(out):
            return {
                "path": str(out),
                "skipped": True,
                "report": attrs.get("parse_report", {}),
                "fingerprint": attrs["fingerprint"],
            }

    dropped: Counter[str] = Counter()
    examples: list[str] = []
    unc_ids = read_uncharacterized(source.uncharacterized) if source.uncharacterized else set()
    n_read = n_unc = 0
    kept: list[Record] = []
    seen: set[int] = set()

    def drop(reason: str, message: str) -> None:
        dropped[reason] += 1
        if len(examples) < REPORT_EXAMPLES:
            examples.append(message)

    # Parse in this process and perceive bonds in the workers at the same time: each full chunk
    # of kept molecules is sent off as soon as it is parsed.
    # The pool starts with the first full chunk: a build of one chunk runs in this process.
    pool = None
    pending: list = []
    chunk: list[Record] = []

    def submit(recs: list[Record], last: bool = False) -> None:
        nonlocal pool
        if pool is None and processes > 1 and not last:
            pool = fork_pool(processes)
        task = ([(r.species, r.pos) for r in recs], graph, cutoff)
        pending.append(pool.apply_async(_perceive, (task,)) if pool else _perceive(task))

    try:
        with tqdm(desc="parse", unit="mol", disable=not progress, total=limit) as bar:
            for rec in source.records():
                n_read += 1
                if isinstance(rec, MoleculeError):
                    if strict:
                        raise rec
                    drop(rec.reason, str(rec))
                    continue
                if rec.mol_id in unc_ids:
                    n_unc += 1
                    continue
                if rec.mol_id in seen:
                    msg = f"{rec.where}: field 'gdb id': {rec.mol_id} appears twice"
                    if strict:
                        raise InputError(msg)
                    drop("duplicate_id", msg)
                    continue
                seen.add(rec.mol_id)
                kept.append(rec)
                chunk.append(rec)
                if len(chunk) == _CHUNK:
                    submit(chunk)
                    chunk = []
                bar.update(1)
                if limit is not None and len(kept) >= limit:
                    break
        if chunk:
            submit(chunk, last=True)
        if not kept:
            raise InputError(
                f"{source.root}: no usable molecule among {n_read} read "
                f"(dropped: {dict(dropped) or 'none'}; e.g. {examples[:3]})"
            )
        graphs: list = []
        with tqdm(total=len(kept), desc="bonds", unit="mol", disable=not progress) as bar:
            for job in pending:
                res = job if isinstance(job, list) else job.get()
                graphs.extend(res)
                bar.update(len(res))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    order = sorted(range(len(kept)), key=lambda i: kept[i].mol_id)  # store rows in gdb order
    kept = [kept[i] for i in order]
    graphs = [graphs[i] for i in order]

    fallback_ids = [
        int(r.mol_id) for r, (_, how) in zip(kept, graphs, strict=True) if how == "fallback"
    ]
    pruned_ids = [
        int(r.mol_id) for r, (_, how) in zip(kept, graphs, strict=True) if how == "pruned"
    ]
    arrays = _assemble(kept, [g for g, _ in graphs])
    report = {
        "read": n_read,
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": int(sum(dropped.values())),
        "dropped_examples": examples,
        "uncharacterized": n_unc,
        "uncharacterized_listed": len(unc_ids),
        "bond_fallbacks": len(fallback_ids),
        "bond_fallback_ids": fallback_ids,
        "bond_pruned": len(pruned_ids),
        "bond_pruned_ids": pruned_ids,
        "limit": limit,
    }
    attrs = {
        "source": {"kind": source.kind, "root": str(source.root), "files": files},
        "checksums": files,
        "graph": {"kind": graph, "cutoff": cutoff if graph == "radius" else None},
        "target_names": list(QM9_TARGETS),
        "units": {"pos": "angstrom", **TARGET_UNITS},
        "parse_report": report,
        "build_key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_dataset(out, arrays, attrs)
    return {
        "path": str(out),
        "skipped": False,
        "report": report,
        "fingerprint": read_attrs(out)["fingerprint"],
    }


def _assemble(records: list[Record], edges: list) -> dict[str, np.ndarray]:
    n_atoms = np.array([len(r.species) for r in records], dtype=np.int64)
    n_edges = np.array([len(e[0]) for e in edges], dtype=np.int64)
    atom_offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    edge_offsets = np.concatenate([[0], np.cumsum(n_edges)])

    def cat(parts, dtype, shape_tail=()):
        return np.concatenate(parts).astype(dtype) if parts else np.empty((0, *shape_tail), dtype)

    return {
        # stored as read, unless float32 would lose the geometry (far from the origin)
        "pos": cat([centered(r.pos, FAR_FROM_ORIGIN) for r in records], np.float32, (3,)),
        "species": cat([r.species for r in records], np.int8),
        "atom_offsets": atom_offsets,
        "edge_offsets": edge_offsets,
        "src": cat([e[0] for e in edges], np.int32),
        "dst": cat([e[1] for e in edges], np.int32),
        "bond_type": cat([e[2] for e in edges], np.int8),
        "targets": np.stack([r.targets for r in records]).astype(np.float64),
        "mol_id": np.array([r.mol_id for r in records], dtype=np.int64),
    }
