"""QM9 as a source of the build (:mod:`se3t.data.build`): raw files in either format -> records.

Finds the raw files (:func:`find_raw`), reads every molecule (figshare's XYZ files, tarred or
not, or qm9pack's CSVs: identical records), skips the molecules figshare lists as
uncharacterized and keeps the 12 properties in :data:`QM9_TARGETS` order as targets. Bonds are
perceived from 3D; a radius graph keeps the perceived bond types of its bonded pairs. Store
rows are sorted by gdb id.

Policy for bad input (documented in docs/data.md): a bad *file* (unreadable, corrupt or truncated
archive, CSV without a required column) is an error naming the file; a bad *molecule* (atom count
disagreeing with its lines, non-numeric or non-finite coordinate, unknown element, two atoms at
one position, non-numeric property) is dropped and named in the build report, or is an error
with ``strict=True``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from se3t.choices import Graph
from se3t.data.build import Targets, build_store
from se3t.data.graphs import GraphSpec
from se3t.data.parse import MoleculeError, Record
from se3t.data.sources import Molecule
from se3t.data.sources.qm9.qm9pack import iter_csv
from se3t.data.sources.qm9.vocabulary import QM9_TARGETS, TARGET_UNITS
from se3t.data.sources.qm9.xyz import iter_xyz_archive, iter_xyz_dir, read_uncharacterized
from se3t.errors import InputError

__all__ = ["QM9Source", "RawSource", "build_qm9", "check_targets", "find_raw"]

# Bumped whenever parsing or bond perception changes what a build writes, so that stores built
# by older code are rebuilt instead of being taken as up to date (part of the build key).
BUILD_VERSION = 2
CHUNK = 500  # molecules per task sent to a bond-perception worker
_ARCHIVES = (".tar", ".tar.bz2", ".tar.gz", ".tar.xz", ".tgz", ".tbz2")


def check_targets(targets) -> None:
    """An error naming the config key for a target that is not one of QM9's 12."""
    for target in targets:
        if target not in QM9_TARGETS:
            raise InputError(
                f"config key 'data.targets': {target!r} is not a QM9 target; "
                f"choose from {list(QM9_TARGETS)}"
            )


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
        return RawSource(
            "csv" if root.suffix == ".csv" else "xyz-archive", [root], None, root.parent
        )
    unc = root / "uncharacterized.txt"
    unc_path = unc if unc.is_file() else None
    # hidden files are the temporaries of an interrupted atomic write (se3t.io), never input
    csvs = sorted(root.glob("qm9_part*.csv")) or sorted(
        p for p in root.glob("*.csv") if not p.name.startswith(".")
    )
    if csvs:
        return RawSource("csv", csvs, unc_path, root)
    archives = sorted(
        p for p in root.iterdir() if p.is_file() and any(p.name.endswith(s) for s in _ARCHIVES)
    )
    if archives:
        return RawSource("xyz-archive", archives, unc_path, root)
    if any(root.rglob("*.xyz")):
        return RawSource("xyz-dir", [root], unc_path, root)
    raise InputError(
        f"{root}: no QM9 input found (expected qm9_part*.csv, a tar archive of XYZ files, "
        "or .xyz files)"
    )


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


class QM9Source:
    """QM9's raw files at ``raw`` for :func:`se3t.data.build.build_store`."""

    id_field = "gdb id"
    sort_by_id = True
    reads_in_workers = False

    def __init__(
        self,
        raw: str | os.PathLike,
        *,
        limit: int | None = None,
        graph: str = "bond",
        cutoff: float = 5.0,
        strict: bool = False,
    ):
        if graph not in [g.value for g in Graph]:
            raise InputError(f"graph {graph!r}: must be one of {[g.value for g in Graph]}")
        self.raw = find_raw(raw)
        self.kind, self.root = self.raw.kind, self.raw.root
        self.limit, self.graph, self.cutoff, self.strict = limit, graph, cutoff, strict
        self.chunk = CHUNK
        unc = self.raw.uncharacterized
        self.uncharacterized = read_uncharacterized(unc) if unc else set()

    def hashed_files(self) -> dict[str, Path]:
        paths = []
        for f in self.raw.all_files():
            paths.extend(sorted(f.rglob("*.xyz")) if f.is_dir() else [f])
        return {_relative(p, self.root): p for p in paths}

    def settings(self) -> dict[str, Any]:
        cutoff = self.cutoff if self.graph == "radius" else None
        return {"limit": self.limit, "graph": self.graph, "cutoff": cutoff}

    def versions(self) -> dict[str, int]:
        return {"build_version": BUILD_VERSION}

    def records(self, processes: int, progress: bool) -> Iterator[Molecule | MoleculeError]:
        for k, rec in enumerate(self.raw.records()):
            if isinstance(rec, MoleculeError):
                yield rec
                continue
            props = dict(zip(QM9_TARGETS, rec.targets.tolist(), strict=True))
            yield Molecule(k, str(rec.mol_id), rec.species, rec.pos, props, rec.where)

    def skip(self, mol: Molecule) -> bool:
        return int(mol.id) in self.uncharacterized

    def check(self, mol: Molecule) -> None:
        """Nothing beyond the parsers' own checks."""

    def graph_spec(self, first: Molecule) -> GraphSpec:
        return GraphSpec(self.graph, float(self.cutoff), typed_radius=True)

    def targets(self, kept: list[Molecule]) -> Targets:
        values = np.array([[m.props[t] for t in QM9_TARGETS] for m in kept], dtype=np.float64)
        return Targets(list(QM9_TARGETS), values, dict(TARGET_UNITS))

    def mol_ids(self, kept: list[Molecule]) -> list[int]:
        return [int(m.id) for m in kept]

    def store_attrs(self, kept: list[Molecule], graphs: list, spec: GraphSpec) -> dict:
        # QM9's encoding is fixed: nothing beyond the arrays enters its fingerprint
        return {}

    def report(self, kept: list[Molecule]) -> dict[str, Any]:
        return {"format": "qm9", "uncharacterized_listed": len(self.uncharacterized)}


def build_qm9(
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
    """Build the dataset store at ``out`` from the raw QM9 files at ``raw``
    (:func:`se3t.data.build.build_store` with a :class:`QM9Source`)."""
    source = QM9Source(raw, limit=limit, graph=graph, cutoff=cutoff, strict=strict)
    return build_store(source, out, processes=processes, progress=progress, force=force)
