"""``se3t data build``: one pipeline from any source's records to the dataset store.

A *source* (:class:`Source`: QM9 in :mod:`se3t.data.sources.qm9`, users' own SDF, extended XYZ,
XYZ folder or SMILES in :mod:`se3t.data.sources.own`) says which files and settings make the
build, yields the records (:class:`~se3t.data.sources.Molecule`, or a
:class:`~se3t.data.parse.MoleculeError` for one that cannot be used), and turns the kept ones
into targets and store attributes. The pipeline does the rest, the same for every source:

1. **key**: the ``build_key`` hashes the input files' sha256, the settings and the versions;
   a store at ``out`` with the same key whose content verifies is left as it is.
2. **read**: every record; a bad one is dropped with its reason (counted, the first
   ``REPORT_EXAMPLES`` named in the report) or stops the build with ``strict``; records the
   source skips (QM9's uncharacterized), repeated ids and one-atom molecules are dropped too.
3. **graphs**: bonds from the file or perceived from 3D, or a radius graph
   (:func:`se3t.data.graphs.graph_of`), in ``processes`` worker processes, while reading where
   the source allows it.
4. **store**: rows in the source's order, targets, report and attributes, written atomically
   (:func:`~se3t.data.store.write_dataset`). A build that keeps no molecule is an error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tqdm import tqdm

from se3t.data.fetch import sha256_file
from se3t.data.graphs import GraphSpec, GraphWork
from se3t.data.parse import FAR_FROM_ORIGIN, MoleculeError, centered
from se3t.data.store import FORMAT_VERSION, open_dataset, read_attrs, write_dataset
from se3t.errors import InputError

if TYPE_CHECKING:
    from se3t.data.sources import Molecule

log = logging.getLogger("se3t.data")

__all__ = ["REPORT_EXAMPLES", "Source", "Targets", "build_store"]

# How many dropped molecules the report names one by one (the counts cover all of them).
REPORT_EXAMPLES = 200


@dataclass
class Targets:
    """The kept molecules' targets: ``names``, ``values`` [M, T] float64 (NaN: missing),
    ``units`` per name, ``ignored`` properties that are not numbers."""

    names: list[str]
    values: np.ndarray
    units: dict[str, str]
    ignored: list[str] = field(default_factory=list)


class Source(Protocol):
    """What the pipeline needs from a source of molecules (see the module docstring)."""

    kind: str  # attrs["source"]["kind"] and the report's "format"
    root: Path  # what the store and the messages name as the input
    id_field: str  # the field a repeated id is reported under
    chunk: int  # molecules per graph-building task
    limit: int | None
    strict: bool
    sort_by_id: bool  # store rows sorted by integer id, else in input order
    reads_in_workers: bool  # records() runs its own worker pool: build graphs afterwards

    def hashed_files(self) -> dict[str, Path]: ...  # the input files by the names the key uses

    def settings(self) -> dict[str, Any]: ...

    def versions(self) -> dict[str, int]: ...

    def records(self, processes: int, progress: bool) -> Iterator[Molecule | MoleculeError]: ...

    def skip(self, mol: Molecule) -> bool: ...

    def check(self, mol: Molecule) -> None: ...

    def graph_spec(self, first: Molecule) -> GraphSpec: ...

    def targets(self, kept: list[Molecule]) -> Targets: ...

    def mol_ids(self, kept: list[Molecule]) -> list[int]: ...

    def store_attrs(self, kept: list[Molecule], graphs: list, spec: GraphSpec) -> dict: ...

    def report(self, kept: list[Molecule]) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------- reading


@dataclass
class _Reading:
    """The records kept and the counts of the ones that were not."""

    kept: list = field(default_factory=list)
    read: int = 0
    skipped: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def drop(self, err: MoleculeError, strict: bool) -> None:
        if strict:
            raise err
        self.dropped[err.reason] += 1
        if len(self.examples) < REPORT_EXAMPLES:
            self.examples.append(str(err))


def _usable(source: Source, rec: Molecule, seen: set[str]) -> None:
    """Raise the MoleculeError that drops ``rec``, if any."""
    if rec.id in seen:
        raise MoleculeError(rec.where, source.id_field, f"{rec.id!r} appears twice", "duplicate_id")
    if len(rec.species) < 2:
        raise MoleculeError(
            rec.where, "atoms", "one atom: a molecule needs two for a graph", "one_atom"
        )
    source.check(rec)


def _read(source: Source, work: GraphWork, processes: int, progress: bool) -> _Reading:
    reading = _Reading()
    seen: set[str] = set()
    records = source.records(processes, progress)
    shown = progress and not source.reads_in_workers  # such a source shows its own progress
    with tqdm(desc="read", unit="mol", disable=not shown, total=source.limit) as bar:
        for rec in records:
            reading.read += 1
            if isinstance(rec, MoleculeError):
                reading.drop(rec, source.strict)
                continue
            if source.skip(rec):
                reading.skipped += 1
                continue
            try:
                _usable(source, rec, seen)
            except MoleculeError as err:
                reading.drop(err, source.strict)
                continue
            seen.add(rec.id)
            if work.spec is None:
                work.spec = source.graph_spec(rec)
            reading.kept.append(rec)
            work.add(rec)
            bar.update(1)
            if source.limit is not None and len(reading.kept) >= source.limit:
                break
    if not reading.kept:
        raise InputError(
            f"{source.root}: no usable molecule among {reading.read} read "
            f"(dropped: {dict(reading.dropped) or 'none'}; e.g. {reading.examples[:3]})"
        )
    return reading


# ------------------------------------------------------------------------------- the store


def build_key(source: Source) -> tuple[str, dict[str, str]]:
    """(the build key, the input files' sha256 by name)."""
    files = {name: sha256_file(p) for name, p in source.hashed_files().items()}
    payload = {
        "files": files,
        "settings": source.settings(),
        **source.versions(),
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(), files


def _up_to_date(out: Path, key: str) -> dict[str, Any] | None:
    """The store's attributes when it was built with ``key`` and its content verifies (one
    damaged since it was built is rebuilt, and the damage is logged); else None."""
    try:
        attrs = read_attrs(out)
    except InputError:
        return None
    if attrs.get("build_key") != key:
        return None
    try:
        open_dataset(out)
    except InputError as err:
        log.warning("%s; rebuilding it", err)
        return None
    return attrs


@dataclass
class _Rows:
    """The store's rows: molecules, integer ids, targets [M, T] and graphs, in one order."""

    kept: list
    ids: list[int]
    values: np.ndarray
    graphs: list

    def sorted(self) -> _Rows:
        """The rows by integer id."""
        order = sorted(range(len(self.kept)), key=self.ids.__getitem__)
        return _Rows(
            [self.kept[i] for i in order],
            [self.ids[i] for i in order],
            self.values[order],
            [self.graphs[i] for i in order],
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The store's arrays (:data:`se3t.data.store.ARRAYS`)."""
        edges = [e for e, _, _ in self.graphs]
        n_atoms = np.array([len(m.species) for m in self.kept], dtype=np.int64)
        n_edges = np.array([len(e[0]) for e in edges], dtype=np.int64)

        def cat(parts, dtype, shape_tail=()):
            if not parts:
                return np.empty((0, *shape_tail), dtype)
            return np.concatenate(parts).astype(dtype)

        return {
            # stored as read, unless float32 would lose the geometry (far from the origin)
            "pos": cat([centered(m.pos, FAR_FROM_ORIGIN) for m in self.kept], np.float32, (3,)),
            "species": cat([m.species for m in self.kept], np.int8),
            "atom_offsets": np.concatenate([[0], np.cumsum(n_atoms)]),
            "edge_offsets": np.concatenate([[0], np.cumsum(n_edges)]),
            "src": cat([e[0] for e in edges], np.int32),
            "dst": cat([e[1] for e in edges], np.int32),
            "bond_type": cat([e[2] for e in edges], np.int8),
            "targets": np.asarray(self.values, dtype=np.float64),
            "mol_id": np.array(self.ids, dtype=np.int64),
        }


def _report(
    source: Source,
    spec: GraphSpec,
    reading: _Reading,
    graphs: list,
    ids: list[int],
    targets: Targets,
) -> dict[str, Any]:
    hows = Counter(how for _, how, _ in graphs)
    has_bonds = spec.graph == "bond" or spec.scaffold or spec.typed_radius

    def ids_where(how: str) -> list[int]:
        return [int(i) for i, (_, h, _) in zip(ids, graphs, strict=True) if h == how]

    return {
        "format": source.kind,
        "read": reading.read,
        "kept": len(reading.kept),
        "dropped": dict(sorted(reading.dropped.items())),
        "dropped_total": int(sum(reading.dropped.values())),
        "dropped_examples": reading.examples,
        "uncharacterized": reading.skipped,
        "missing_values": {
            n: int(np.isnan(targets.values[:, c]).sum()) for c, n in enumerate(targets.names)
        },
        "ignored_properties": targets.ignored,
        "bonds": dict(sorted(hows.items())) if has_bonds else {},
        "bond_fallbacks": int(hows.get("fallback", 0)),
        "bond_fallback_ids": ids_where("fallback"),
        "bond_pruned": int(hows.get("pruned", 0)),
        "bond_pruned_ids": ids_where("pruned"),
        "atoms_max": int(max(len(m.species) for m in reading.kept)),
        "limit": source.limit,
        **source.report(reading.kept),
    }


def build_store(
    source: Source,
    out: str | os.PathLike,
    *,
    processes: int = 1,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Build the dataset store at ``out`` from ``source`` (see the module docstring).

    Returns ``{"path", "skipped", "report", "fingerprint"}``; ``skipped`` is True when ``out``
    was already built from the same inputs and settings (then nothing is written).
    """
    out = Path(out)
    key, files = build_key(source)
    attrs = None if force or not out.exists() else _up_to_date(out, key)
    if attrs is not None:
        report = attrs.get("parse_report", {})
        return {
            "path": str(out),
            "skipped": True,
            "report": report,
            "fingerprint": attrs["fingerprint"],
        }
    work = GraphWork(source.chunk, processes, overlap=not source.reads_in_workers)
    try:
        reading = _read(source, work, processes, progress)
        targets = source.targets(reading.kept)
        graphs = work.results(len(reading.kept), progress)
    finally:
        work.close()
    rows = _Rows(reading.kept, source.mol_ids(reading.kept), targets.values, graphs)
    if source.sort_by_id:
        rows = rows.sorted()
    targets.values = rows.values
    report = _report(source, work.spec, reading, rows.graphs, rows.ids, targets)
    attrs = {
        "source": {"kind": source.kind, "root": str(source.root), "files": files},
        "checksums": files,
        "graph": {
            "kind": work.spec.graph,
            "cutoff": work.spec.cutoff if work.spec.graph == "radius" else None,
        },
        "target_names": targets.names,
        "units": {"pos": "angstrom", **targets.units},
        "parse_report": report,
        "build_key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **source.store_attrs(rows.kept, rows.graphs, work.spec),
    }
    write_dataset(out, rows.arrays(), attrs)
    fingerprint = read_attrs(out)["fingerprint"]
    return {"path": str(out), "skipped": False, "report": report, "fingerprint": fingerprint}
