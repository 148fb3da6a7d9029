"""Users' own molecules as a source of the build (:mod:`se3t.data.build`): any reader of
:mod:`se3t.data.sources` (extended XYZ, SDF, XYZ folder + CSV, SMILES CSV) -> records.

Beyond the pipeline's own checks, a record is dropped for non-finite coordinates, coincident
atoms, a requested target that is not finite, or a split label that is not train/val/test.
Graphs take the file's bonds (SDF, SMILES), bonds perceived from 3D as for QM9, or a radius
graph; the store records the element encoding, ids, scaffolds and split labels. The build
report counts the missing values per target and how bonds were found.

Targets: every property named in ``data.targets`` (an error naming the file when no record has
it), then every other property whose values are all numbers or empty, in the order the input
first shows them, so that runs of one workflow may train on different targets of one store.
An empty or ``nan`` value is a missing value: stored as NaN and masked out of loss, statistics
and metrics. Text that is not a number in a requested target drops the molecule; in any other
property it just keeps that property out of the store (listed under ``ignored_properties``).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from se3t.config import DataConfig, data_format
from se3t.data.build import Targets, build_store
from se3t.data.elements import Encoding, atomic_number
from se3t.data.fetch import copy_file
from se3t.data.graphs import GraphSpec
from se3t.data.parse import MoleculeError, check_geometry
from se3t.data.sources import Molecule, parse_value
from se3t.data.splits import column_split
from se3t.errors import InputError
from se3t.io import write_json

__all__ = ["OwnSource", "build_molecules", "fetch_molecules", "locate", "read_records"]

# Bumped whenever reading or graph building changes what a build of users' data writes.
OWN_BUILD_VERSION = 1
CHUNK = 64  # molecules per graph-building task


# ------------------------------------------------------------------------------- the inputs


def locate(data: DataConfig, raw: str | os.PathLike | None = None) -> dict[str, Any]:
    """The input files of ``data`` (format resolved): ``{"format", "files", "main",
    "properties"}``. ``raw`` is a folder from :func:`fetch_molecules` (the copy of the input)
    or the input itself; None reads ``data.source`` where it lies."""
    fmt = data_format(data)
    src = Path(data.source)
    raw_p = Path(raw) if raw is not None else None
    if fmt == "xyz_dir":
        if raw_p is not None and (raw_p / "xyz").is_dir() and (raw_p / "properties.csv").is_file():
            folder, props = raw_p / "xyz", raw_p / "properties.csv"
        else:
            folder = raw_p if raw_p is not None and raw_p.is_dir() else src
            if not data.properties:
                raise InputError(
                    "config key 'data.properties': format xyz_dir needs the CSV of properties"
                )
            props = Path(data.properties)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder of XYZ files (config key 'data.source')")
        if not props.is_file():
            raise InputError(f"{props}: no such CSV of properties (config key 'data.properties')")
        files = sorted(p for p in folder.rglob("*.xyz") if not p.name.startswith("."))
        return {"format": fmt, "files": [props, *files], "main": folder, "properties": props}
    if raw_p is not None and raw_p.is_file():
        main = raw_p
    elif raw_p is not None and (raw_p / src.name).is_file():
        main = raw_p / src.name
    else:
        main = src
    if not main.is_file():
        raise InputError(f"{main}: no such file (config key 'data.source', format {fmt})")
    return {"format": fmt, "files": [main], "main": main, "properties": None}


def fetch_molecules(data: DataConfig, out: str | os.PathLike) -> dict[str, Any]:
    """Copy the input of ``data`` into ``out`` (``se3t data fetch`` for users' data), with
    ``SOURCE.json`` listing every file's sha256; the build then reads the copy."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    where = locate(data)
    files: dict[str, dict[str, Any]] = {}
    if where["format"] == "xyz_dir":
        pairs = [(where["properties"], out / "properties.csv")]
        pairs += [(p, out / "xyz" / p.relative_to(where["main"])) for p in where["files"][1:]]
    else:
        pairs = [(where["main"], out / where["main"].name)]
    for src, dest in pairs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = copy_file(src, dest)
        files[str(dest.relative_to(out))] = {
            "sha256": digest,
            "bytes": src.stat().st_size,
            "from": str(src),
        }
    manifest = {
        "source": where["format"],
        "origin": str(data.source),
        "files": files,
        "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out / "SOURCE.json", manifest)
    return manifest


def read_records(
    data: DataConfig,
    where: dict[str, Any],
    *,
    processes: int = 1,
    progress: bool = True,
    limit: int | None = None,
) -> Iterator[Molecule | MoleculeError]:
    """The records of the located input (see :func:`locate`)."""
    fmt = where["format"]
    if fmt == "extxyz":
        from se3t.data.sources.extxyz import iter_extxyz

        return iter_extxyz(where["main"], data.id_column)
    if fmt == "sdf":
        from se3t.data.sources.sdf import iter_sdf

        return iter_sdf(where["main"], data.id_column)
    if fmt == "xyz_dir":
        from se3t.data.sources.xyz_dir import iter_xyz_dir

        return iter_xyz_dir(where["main"], where["properties"], data.id_column)
    if fmt == "smiles":
        from se3t.data.sources.smiles import iter_smiles

        return iter_smiles(
            where["main"],
            smiles_column=data.smiles_column,
            id_column=data.id_column,
            seed=data.conformer_seed,
            iterations=data.mmff_iterations,
            processes=processes,
            progress=progress,
            limit=limit,
        )
    raise InputError(f"config key 'data.format': {fmt!r} is not a format of users' molecules")


# ------------------------------------------------------------------------------- the source


def _element_numbers(symbols) -> list[int]:
    out = []
    for sym in symbols:
        z = atomic_number(sym)
        if not z:
            raise InputError(f"config key 'data.elements': {sym!r} is not a chemical element")
        out.append(z)
    return out


class OwnSource:
    """The user's molecules that ``data`` describes (read from ``raw``, the fetched copy, when
    given) for :func:`se3t.data.build.build_store`."""

    id_field = "id"
    sort_by_id = False

    def __init__(self, data: DataConfig, raw: str | os.PathLike | None = None):
        self.data = data
        self.where = locate(data, raw)
        self.kind = self.where["format"]
        self.root = self.where["main"]
        self.limit, self.strict, self.chunk = data.limit, data.strict, CHUNK
        self.reads_in_workers = self.kind == "smiles"
        self.extra_z = _element_numbers(data.elements)
        self.scaffolds_wanted = (
            data.split == "scaffold" or self.kind in ("sdf", "smiles") or data.graph == "bond"
        )
        self.file_bonds = False

    def hashed_files(self) -> dict[str, Path]:
        main = self.where["main"]
        root = main if main.is_dir() else main.parent
        return {
            str(p.relative_to(root)) if p.is_relative_to(root) else str(p): p
            for p in self.where["files"]
        }

    def settings(self) -> dict[str, Any]:
        data, radius = self.data, self.data.graph == "radius"
        settings = {
            "format": self.kind,
            "limit": data.limit,
            "graph": data.graph,
            "cutoff": data.cutoff if radius else None,
            "max_neighbors": data.max_neighbors if radius else None,
            "id_column": data.id_column,
            "split_column": data.split_column,
            "targets": list(data.targets),
            "units": dict(data.units),
            "elements": sorted(self.extra_z),
            "scaffolds": self.scaffolds_wanted,
        }
        if self.kind == "smiles":
            settings.update(
                smiles_column=data.smiles_column,
                conformer_seed=data.conformer_seed,
                mmff_iterations=data.mmff_iterations,
            )
        return settings

    def versions(self) -> dict[str, int]:
        return {"own_build_version": OWN_BUILD_VERSION}

    def records(self, processes: int, progress: bool) -> Iterator[Molecule | MoleculeError]:
        return read_records(
            self.data, self.where, processes=processes, progress=progress, limit=self.limit
        )

    def skip(self, mol: Molecule) -> bool:
        return False

    def check(self, mol: Molecule) -> None:
        """Finite, distinct coordinates; finite requested targets; a valid split label."""
        data = self.data
        check_geometry(mol.species, mol.pos, mol.where)
        values = [parse_value(mol.props.get(t), mol.where, t) for t in data.targets]
        bad = [t for t, v in zip(data.targets, values, strict=True) if np.isinf(v)]
        if bad:
            raise MoleculeError(mol.where, bad[0], "is not finite", "not_a_number")
        if not data.split_column:
            return
        if data.split_column not in mol.props:
            raise MoleculeError(
                mol.where,
                data.split_column,
                "(data.split_column): the record has no such property",
                "bad_split",
            )
        try:
            column_split([str(mol.props[data.split_column])], mol.where)
        except ValueError as err:  # a split label that is not train/val/test
            raise MoleculeError(mol.where, data.split_column, str(err), "bad_split") from None

    def graph_spec(self, first: Molecule) -> GraphSpec:
        data = self.data
        self.file_bonds = first.bonds is not None
        scaffold = self.scaffolds_wanted and (self.file_bonds or data.graph == "bond")
        return GraphSpec(data.graph, float(data.cutoff), data.max_neighbors, scaffold)

    def targets(self, kept: list[Molecule]) -> Targets:
        """The requested targets, then every other all-numeric property (module docstring)."""
        names, ignored = self._target_names(kept)
        values = np.empty((len(kept), len(names)), dtype=np.float64)
        for r, m in enumerate(kept):
            for c, name in enumerate(names):
                v = parse_value(m.props.get(name), m.where, name)
                values[r, c] = v if np.isfinite(v) else np.nan
        units = {n: self.data.units.get(n, "") for n in names}
        return Targets(names, values, units, ignored)

    def _target_names(self, kept: list[Molecule]) -> tuple[list[str], list[str]]:
        prop_order = dict.fromkeys(name for m in kept for name in m.props)
        names = list(self.data.targets)
        for t in names:
            if t not in prop_order:
                raise InputError(
                    f"{self.root}: field {t!r} (config key 'data.targets'): no molecule has "
                    f"this property; the input has {sorted(prop_order) or 'no properties'}"
                )
        ignored = []
        for name in prop_order:
            if name in names or name == self.data.split_column:
                continue
            try:
                col = [parse_value(m.props.get(name), m.where, name) for m in kept]
            except MoleculeError:
                ignored.append(name)
                continue
            (names if np.isfinite(col).any() else ignored).append(name)
        return names, ignored

    def mol_ids(self, kept: list[Molecule]) -> list[int]:
        """The ids as integers when they all are (and distinct), else the record indices."""
        ids = [m.id for m in kept]
        numeric = all(i.lstrip("-").isdigit() and len(i) < 18 for i in ids)
        if numeric and len({int(i) for i in ids}) == len(ids):
            return [int(i) for i in ids]
        return [m.index for m in kept]

    def store_attrs(self, kept: list[Molecule], graphs: list, spec: GraphSpec) -> dict:
        data = self.data
        species = np.concatenate([np.asarray(m.species, dtype=np.int8) for m in kept])
        encoding = Encoding.from_species(
            species,
            self.extra_z,
            edges="bond_type" if data.graph == "bond" else "none",
            bonds="file" if self.file_bonds else "perceived",
        )
        graph: dict[str, Any] = {
            "kind": data.graph,
            "cutoff": float(data.cutoff) if data.graph == "radius" else None,
        }
        if data.graph == "radius" and data.max_neighbors is not None:
            graph["max_neighbors"] = int(data.max_neighbors)
        attrs: dict[str, Any] = {
            "graph": graph,
            "encoding": encoding.to_dict(),
            "ids": [m.id for m in kept],
        }
        hashed = ["encoding", "target_names", "units", "ids"]
        if spec.scaffold:
            attrs["scaffold"] = [s for _, _, s in graphs]
            hashed.append("scaffold")
        if data.split_column:
            attrs["split_label"] = [str(m.props[data.split_column]) for m in kept]
            hashed.append("split_label")
        if self.kind == "smiles":
            from se3t.data.sources.smiles import conformer_settings

            attrs["conformers"] = conformer_settings(data.conformer_seed, data.mmff_iterations)
            hashed.append("conformers")
        attrs["hashed_attrs"] = hashed
        return attrs

    def report(self, kept: list[Molecule]) -> dict[str, Any]:
        if self.kind != "smiles":
            return {}
        return {"force_fields": dict(Counter(m.extra["force_field"] for m in kept))}


def build_molecules(
    data: DataConfig,
    out: str | os.PathLike,
    *,
    raw: str | os.PathLike | None = None,
    processes: int = 1,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Build the dataset store at ``out`` from the user's molecules that ``data`` describes
    (:func:`se3t.data.build.build_store` with an :class:`OwnSource`)."""
    source = OwnSource(data, raw)
    return build_store(source, out, processes=processes, progress=progress, force=force)
