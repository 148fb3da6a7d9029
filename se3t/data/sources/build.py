"""``se3t data build`` for users' own molecules: any reader of se3t.data.sources -> a dataset store.

Steps: read every record (a bad one is dropped with its reason, or stops the build with
``data.strict``); drop repeated ids, one-atom molecules, non-finite coordinates and coincident
atoms; turn the properties into targets; build each graph (the file's bonds, bonds perceived
from 3D as for QM9, or a radius graph) in ``processes`` worker processes; record the element
encoding, ids, scaffolds and split labels; write the store atomically. The build report counts
the molecules read, kept and dropped (per reason, with examples naming file, record, id and
field), the missing values per target and how bonds were found.

Targets: every property named in ``data.targets`` (an error naming the file when no record has
it), then every other property whose values are all numbers or empty, in the order the input
first shows them, so that runs of one workflow may train on different targets of one store.
An empty or ``nan`` value is a missing value: stored as NaN and masked out of loss, statistics
and metrics. Text that is not a number in a requested target drops the molecule; in any other
property it just keeps that property out of the store (listed under ``ignored_properties``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from se3t.config import DataConfig, data_format
from se3t.data.bonds import _directed, bond_graph, radius_graph
from se3t.data.build import REPORT_EXAMPLES, _assemble, sha256_file
from se3t.data.elements import Encoding, atomic_number
from se3t.data.parse import MoleculeError, check_geometry
from se3t.data.qm9 import Record
from se3t.data.sources import Molecule, parse_value
from se3t.data.splits import column_split
from se3t.data.store import FORMAT_VERSION, read_attrs, write_dataset
from se3t.data.workers import fork_pool
from se3t.errors import InputError
from se3t.io import write_json

__all__ = ["build_molecules", "fetch_molecules", "locate", "read_records", "scaffold_of"]

# Bumped whenever reading or graph building changes what a build of users' data writes.
OWN_BUILD_VERSION = 1
_CHUNK = 64  # molecules per graph-building task


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
    from se3t.data.fetch import _copy

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
        digest = _copy(src, dest)
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


# ------------------------------------------------------------------------------- the graphs


def _graph_one(species, pos, bonds, graph: str, cutoff: float, max_neighbors, scaffold: bool):
    """(edges, how, scaffold SMILES or None) of one molecule."""
    how = "file"
    if bonds is None and (graph == "bond" or scaffold):
        (src, dst, bt), how = bond_graph(species, pos)
        pairs = [(int(i), int(j), int(t)) for i, j, t in zip(src, dst, bt, strict=True) if i < j]
    else:
        pairs = bonds or []
    if graph == "bond":
        edges = _directed(list(pairs))
    else:
        edges = radius_graph(pos, cutoff, None, max_neighbors)
    return edges, how, scaffold_of(species, pairs) if scaffold else None


def _graph_chunk(task):
    mols, graph, cutoff, max_neighbors, scaffold = task
    return [_graph_one(s, p, b, graph, cutoff, max_neighbors, scaffold) for s, p, b in mols]


def scaffold_of(species: np.ndarray, bonds: list[tuple[int, int, int]]) -> str:
    """Bemis-Murcko scaffold SMILES of a molecule given by its atoms and bonds (RDKit's
    ``MurckoScaffold``); empty for a molecule without a ring."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    kinds = (
        Chem.BondType.SINGLE,
        Chem.BondType.DOUBLE,
        Chem.BondType.TRIPLE,
        Chem.BondType.AROMATIC,
    )
    mol = Chem.RWMol()
    for z in np.asarray(species).tolist():
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j, t in bonds:
        mol.AddBond(int(i), int(j), kinds[int(t)])
        if t == 3:
            mol.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            mol.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    mol.UpdatePropertyCache(strict=False)
    Chem.FastFindRings(mol)
    core = MurckoScaffold.GetScaffoldForMol(mol.GetMol())
    return Chem.MolToSmiles(core, canonical=True) if core.GetNumAtoms() else ""


# ------------------------------------------------------------------------------- the build


def _build_key(where: dict[str, Any], settings: dict[str, Any]) -> tuple[str, dict[str, str]]:
    root = where["main"] if where["main"].is_dir() else where["main"].parent
    files = {
        str(p.relative_to(root)) if p.is_relative_to(root) else str(p): sha256_file(p)
        for p in where["files"]
    }
    payload = {
        "files": files,
        "settings": settings,
        "own_build_version": OWN_BUILD_VERSION,
        "format_version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(), files


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
    (read from ``raw``, the fetched copy, when given). Returns ``{"path", "skipped", "report",
    "fingerprint"}`` like :func:`se3t.data.build.build_dataset`."""
    from tqdm import tqdm

    out = Path(out)
    where = locate(data, raw)
    fmt = where["format"]
    extra_z = []
    for sym in data.elements:
        z = atomic_number(sym)
        if not z:
            raise InputError(f"config key 'data.elements': {sym!r} is not a chemical element")
        extra_z.append(z)
    scaffolds_wanted = data.split == "scaffold" or fmt in ("sdf", "smiles") or data.graph == "bond"
    settings = {
        "format": fmt,
        "limit": data.limit,
        "graph": data.graph,
        "cutoff": data.cutoff if data.graph == "radius" else None,
        "max_neighbors": data.max_neighbors if data.graph == "radius" else None,
        "id_column": data.id_column,
        "split_column": data.split_column,
        "targets": list(data.targets),
        "units": dict(data.units),
        "elements": sorted(extra_z),
        "scaffolds": scaffolds_wanted,
    }
    if fmt == "smiles":
        settings.update(
            smiles_column=data.smiles_column,
            conformer_seed=data.conformer_seed,
            mmff_iterations=data.mmff_iterations,
        )
    key, files = _build_key(where, settings)
    if out.exists() and not force:
        try:
            attrs = read_attrs(out)
        except InputError:
            attrs = {}
        if attrs.get("build_key") == key:
            return {
                "path": str(out),
                "skipped": True,
                "report": attrs.get("parse_report", {}),
                "fingerprint": attrs["fingerprint"],
            }

    dropped: Counter[str] = Counter()
    examples: list[str] = []

    def drop(err: MoleculeError | InputError, reason: str) -> None:
        if data.strict:
            raise err
        dropped[reason] += 1
        if len(examples) < REPORT_EXAMPLES:
            examples.append(str(err))

    kept: list[Molecule] = []
    seen: set[str] = set()
    n_read = 0
    prop_order: dict[str, None] = {}
    records = read_records(data, where, processes=processes, progress=progress, limit=data.limit)
    with tqdm(desc="read", unit="mol", disable=not progress or fmt == "smiles") as bar:
        for rec in records:
            n_read += 1
            if isinstance(rec, MoleculeError):
                drop(rec, rec.reason)
                continue
            if rec.id in seen:
                err = MoleculeError(rec.where, "id", f"{rec.id!r} appears twice", "duplicate_id")
                drop(err, "duplicate_id")
                continue
            if len(rec.species) < 2:
                err = MoleculeError(
                    rec.where, "atoms", "one atom: a molecule needs two for a graph", "one_atom"
                )
                drop(err, "one_atom")
                continue
            try:
                check_geometry(rec.species, rec.pos, rec.where)
                values = [parse_value(rec.props.get(t), rec.where, t) for t in data.targets]
                bad = [t for t, v in zip(data.targets, values, strict=True) if np.isinf(v)]
                if bad:
                    raise MoleculeError(rec.where, bad[0], "is not finite", "not_a_number")
                if data.split_column:
                    if data.split_column not in rec.props:
                        raise InputError(
                            f"{rec.where}: field {data.split_column!r} (data.split_column): "
                            "the record has no such property"
                        )
                    column_split([str(rec.props[data.split_column])], rec.where)
            except MoleculeError as err:
                drop(err, err.reason)
                continue
            except ValueError as err:  # a split label that is not train/val/test
                err = MoleculeError(rec.where, str(data.split_column), str(err), "bad_split")
                drop(err, "bad_split")
                continue
            seen.add(rec.id)
            for name in rec.props:
                prop_order.setdefault(name, None)
            kept.append(rec)
            bar.update(1)
            if data.limit is not None and len(kept) >= data.limit:
                break
    if not kept:
        raise InputError(
            f"{where['main']}: no usable molecule among {n_read} read "
            f"(dropped: {dict(dropped) or 'none'}; e.g. {examples[:3]})"
        )

    # ---- targets: the requested ones, then every other all-numeric property -------------
    names = list(data.targets)
    for t in names:
        if t not in prop_order:
            raise InputError(
                f"{where['main']}: field {t!r} (config key 'data.targets'): no molecule has "
                f"this property; the input has {sorted(prop_order) or 'no properties'}"
            )
    ignored = []
    for name in prop_order:
        if name in names or name == data.split_column:
            continue
        try:
            col = [parse_value(m.props.get(name), m.where, name) for m in kept]
        except MoleculeError:
            ignored.append(name)
            continue
        if np.isfinite(col).any():
            names.append(name)
        else:
            ignored.append(name)
    targets = np.empty((len(kept), len(names)), dtype=np.float64)
    for r, m in enumerate(kept):
        for c, name in enumerate(names):
            v = parse_value(m.props.get(name), m.where, name)
            targets[r, c] = v if np.isfinite(v) else np.nan

    # ---- graphs ----------------------------------------------------------------------------
    has_file_bonds = kept[0].bonds is not None
    scaffold = scaffolds_wanted and (has_file_bonds or data.graph == "bond")
    tasks = [
        (
            [(m.species, m.pos, m.bonds) for m in kept[i : i + _CHUNK]],
            data.graph,
            float(data.cutoff),
            data.max_neighbors,
            scaffold,
        )
        for i in range(0, len(kept), _CHUNK)
    ]
    results: list = []
    with tqdm(total=len(kept), desc="graphs", unit="mol", disable=not progress) as bar:
        if processes > 1 and len(tasks) > 1:
            with fork_pool(processes) as pool:
                for res in pool.imap(_graph_chunk, tasks):
                    results.extend(res)
                    bar.update(len(res))
        else:
            for task in tasks:
                res = _graph_chunk(task)
                results.extend(res)
                bar.update(len(res))

    ids = [m.id for m in kept]
    numeric = all(i.lstrip("-").isdigit() and len(i) < 18 for i in ids)
    numeric = numeric and len({int(i) for i in ids}) == len(ids)
    mol_ids = [int(i) for i in ids] if numeric else [m.index for m in kept]
    records = [
        Record(mol_id=mid, species=m.species.astype(np.int8), pos=m.pos, targets=t, where=m.where)
        for mid, m, t in zip(mol_ids, kept, targets, strict=True)
    ]
    arrays = _assemble(records, [e for e, _, _ in results])
    encoding = Encoding.from_species(
        arrays["species"],
        extra_z,
        edges="bond_type" if data.graph == "bond" else "none",
        bonds="file" if has_file_bonds else "perceived",
    )
    hows = Counter(how for _, how, _ in results)
    missing = {n: int(np.isnan(targets[:, c]).sum()) for c, n in enumerate(names)}
    report: dict[str, Any] = {
        "format": fmt,
        "read": n_read,
        "kept": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "dropped_total": int(sum(dropped.values())),
        "dropped_examples": examples,
        "missing_values": missing,
        "ignored_properties": ignored,
        "bonds": dict(sorted(hows.items())) if data.graph == "bond" or scaffold else {},
        "bond_fallbacks": int(hows.get("fallback", 0)),
        "bond_pruned": int(hows.get("pruned", 0)),
        "uncharacterized": 0,
        "atoms_max": int(max(len(m.species) for m in kept)),
        "limit": data.limit,
    }
    if fmt == "smiles":
        report["force_fields"] = dict(Counter(m.extra["force_field"] for m in kept))
    units = {"pos": "angstrom", **{n: data.units.get(n, "") for n in names}}
    graph: dict[str, Any] = {
        "kind": data.graph,
        "cutoff": float(data.cutoff) if data.graph == "radius" else None,
    }
    if data.graph == "radius" and data.max_neighbors is not None:
        graph["max_neighbors"] = int(data.max_neighbors)
    attrs: dict[str, Any] = {
        "source": {"kind": fmt, "root": str(where["main"]), "files": files},
        "checksums": files,
        "graph": graph,
        "target_names": names,
        "units": units,
        "parse_report": report,
        "build_key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "encoding": encoding.to_dict(),
        "ids": ids,
    }
    hashed = ["encoding", "target_names", "units", "ids"]
    if scaffold:
        attrs["scaffold"] = [s for _, _, s in results]
        hashed.append("scaffold")
    if data.split_column:
        attrs["split_label"] = [str(m.props[data.split_column]) for m in kept]
        hashed.append("split_label")
    if fmt == "smiles":
        from se3t.data.sources.smiles import conformer_settings

        attrs["conformers"] = conformer_settings(data.conformer_seed, data.mmff_iterations)
        hashed.append("conformers")
    attrs["hashed_attrs"] = hashed
    write_dataset(out, arrays, attrs)
    return {
        "path": str(out),
        "skipped": False,
        "report": report,
        "fingerprint": read_attrs(out)["fingerprint"],
    }
