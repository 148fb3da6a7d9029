"""``se3t basis verify``: shard files against ``checksums.json``, and sampled edges recomputed
from the dataset against the stored rows."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from se3t.basis.codec import ShardCodec
from se3t.basis.geometry import Geometry, load_geometry
from se3t.basis.key import BasisBackend, default_backend
from se3t.basis.layout import (
    open_group,
    plan_chunks,
    read_checksums_bytes,
    store_meta,
    unit_exists,
    unit_file,
    unit_range,
)
from se3t.errors import InputError
from se3t.location import Location

# per stored dtype: the tolerance of verify's recomputation (storage rounding plus the
# difference of batched float arithmetic between runs)
_VERIFY_ATOL = {"float16": 4e-3, "float32": 1e-4, "float64": 1e-9}


@dataclass
class VerifyReport:
    store: str
    key: str
    files_checked: int = 0
    bad_files: list[str] = field(default_factory=list)  # "file: reason"
    edges_sampled: int = 0
    max_abs_error: float = 0.0
    bad_chunks: list[str] = field(default_factory=list)
    complete: bool = True

    @property
    def ok(self) -> bool:
        return self.complete and not self.bad_files and not self.bad_chunks

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            **{
                k: getattr(self, k)
                for k in (
                    "store",
                    "key",
                    "complete",
                    "files_checked",
                    "bad_files",
                    "edges_sampled",
                    "max_abs_error",
                    "bad_chunks",
                )
            },
        }


def shard_problems(
    path: Path, meta: dict[str, Any], units: Iterable[int], *, progress: bool = False
) -> dict[int, str]:
    """Shard (unit) files of the local store at ``path`` that are damaged: ``{unit: what}``.

    Checks each present file without decompressing it (shard index and every chunk against
    their CRC32C, extents inside the file; :meth:`ShardCodec.check`), or through Zarr for codec
    chains the fast codec does not know. Absent files are not reported (the caller knows)."""
    arr = zarr.open_array(str(path / "basis"), mode="r")
    codec = ShardCodec(arr, path, meta)
    ce = meta["chunk_edges"]
    bad = {}
    units = [u for u in units if unit_exists(path, u)]
    for u in tqdm(units, desc="shard CRC32C", disable=not progress):
        if codec.supported:
            problem = codec.check(u)
        else:
            c0, c1 = unit_range(meta, u)
            try:
                arr[c0 * ce : c1 * ce]
                problem = None
            except Exception as err:
                problem = f"cannot be decoded ({type(err).__name__}: {err})"
        if problem is not None:
            bad[u] = problem
    return bad


def index_problems(
    where: str, group: zarr.Group, meta: dict[str, Any], edge_offsets: np.ndarray | None = None
) -> list[str]:
    """What is wrong with the index arrays (``row_start``, ``edge_count``, ``chunk_mols``):
    undecodable, or inconsistent with the recorded plan and, given the dataset's
    ``edge_offsets``, with the chunk plan recomputed from it. Each problem names its file."""
    bad = _index_plan_problems(group, meta, edge_offsets)
    loc = Location.parse(where)
    root = None if loc.remote else loc.path
    # Zarr reads an absent chunk as zeros and skips writing an all-zero one (``row_start`` of a
    # one-molecule store): absence is damage only when the zeros do not fit the plan
    return [
        f"{b.split(':')[0]}: missing"
        if root is not None and not (root / b.split(":")[0]).is_file()
        else b
        for b in bad
    ]


def _index_plan_problems(
    group: zarr.Group, meta: dict[str, Any], edge_offsets: np.ndarray | None
) -> list[str]:
    arrays = {}
    for name in ("row_start", "edge_count", "chunk_mols"):
        try:
            arrays[name] = np.asarray(group[name][:], dtype=np.int64)
        except Exception as err:
            return [f"{name}/c/0: cannot be read ({type(err).__name__}: {err})"]
    m, c = meta["num_molecules"], meta["num_chunks"]
    shapes = {"row_start": m, "edge_count": m, "chunk_mols": c + 1}
    bad = [
        f"{name}/c/0: {len(arrays[name])} entries, the store records {n}"
        for name, n in shapes.items()
        if len(arrays[name]) != n
    ]
    if bad:
        return bad
    edge_count = arrays["edge_count"]
    if int(edge_count.sum()) != meta["num_edges"] or (edge_count < 0).any():
        bad.append(f"edge_count/c/0: sums to {int(edge_count.sum())}, not {meta['num_edges']}")
    if edge_offsets is not None:
        want = np.diff(np.asarray(edge_offsets, dtype=np.int64))
        if len(want) != m or not np.array_equal(want, edge_count):
            bad.append("edge_count/c/0: differs from the dataset's edges per molecule")
            return bad
    chunk_mols, row_start = plan_chunks(edge_count, meta["chunk_edges"])
    if not np.array_equal(chunk_mols, arrays["chunk_mols"]):
        bad.append("chunk_mols/c/0: differs from the chunk plan of edge_count")
    if not np.array_equal(row_start, arrays["row_start"]):
        bad.append("row_start/c/0: differs from the chunk plan of edge_count")
    return bad


def _check_files(where: str, record: dict[str, Any], report: VerifyReport, progress: bool) -> None:
    """Every file ``checksums.json`` lists: present, its size and sha256 as recorded."""
    loc = Location.parse(where)
    fs, root = fsspec.core.url_to_fs(str(loc)) if loc.remote else (fsspec.filesystem("file"), where)
    for name, info in tqdm(sorted(record["files"].items()), desc="checksums", disable=not progress):
        report.files_checked += 1
        full = f"{root.rstrip('/')}/{name}"
        try:
            h = hashlib.sha256()
            size = 0
            with fs.open(full, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            report.bad_files.append(f"{name}: missing")
            continue
        if size != info["bytes"]:
            report.bad_files.append(f"{name}: {size} bytes, expected {info['bytes']}")
        elif h.hexdigest() != info["sha256"]:
            report.bad_files.append(f"{name}: sha256 differs from checksums.json")


def _dataset_geometry(meta: dict[str, Any], dataset: str | os.PathLike | None) -> Geometry:
    """The verified geometry of the store's dataset (InputError when it is damaged or another
    dataset than the store was built from)."""
    geom = load_geometry(dataset or meta["dataset_path"])
    if geom.fingerprint != meta["dataset_fingerprint"]:
        raise InputError(
            f"dataset {geom.path!r} has fingerprint {geom.fingerprint}, the store was built "
            f"from {meta['dataset_fingerprint']}; give --dataset with the right one"
        )
    return geom


def _check_sampled_edges(
    where: str,
    group: zarr.Group,
    meta: dict[str, Any],
    report: VerifyReport,
    geom: Geometry,
    *,
    sample: int,
    backend: BasisBackend | None,
    seed: int | None,
) -> None:
    """``sample`` random edges recomputed from the dataset's verified content and compared with
    the stored rows."""
    backend = backend or default_backend()
    if backend.code_version != meta["code_version"]:
        raise InputError(
            f"basis store {where!r} was built by basis code {meta['code_version']}, this "
            f"se3t has {backend.code_version}: recomputation cannot verify it"
        )
    rng = random.Random(seed)
    edges = np.asarray(
        sorted(rng.sample(range(meta["num_edges"]), min(sample, meta["num_edges"]))),
        dtype=np.int64,
    )
    row_start = np.asarray(group["row_start"][:])
    mol = np.searchsorted(geom.edge_offsets, edges, side="right") - 1
    rows = row_start[mol] + edges - geom.edge_offsets[mol]
    compute_dtype = torch.float64 if meta["dtype"] == "float64" else torch.float32
    with torch.no_grad():
        expect = backend.compute(
            geom.edge_vec_of(edges, compute_dtype), meta["max_degree"], dtype=compute_dtype
        ).to(torch.float64)
    arr = group["basis"]
    ce, cps = meta["chunk_edges"], meta["chunks_per_shard"]
    chunk_of = rows // ce
    for c in np.unique(chunk_of).tolist():
        sel = np.nonzero(chunk_of == c)[0]
        name = (
            f"chunk {c} (file {unit_file(c // cps)}, molecule rows {int(group['chunk_mols'][c])}..)"
        )
        try:
            block = torch.from_numpy(np.asarray(arr[c * ce : (c + 1) * ce]))
        except Exception as err:
            report.bad_chunks.append(f"{name}: unreadable ({type(err).__name__}: {err})")
            continue
        got = block[torch.from_numpy(rows[sel] - c * ce)].to(torch.float64)
        err_ = (got - expect[torch.from_numpy(sel)]).abs().max().item()
        report.edges_sampled += len(sel)
        report.max_abs_error = max(report.max_abs_error, err_)
        if not err_ <= _VERIFY_ATOL[meta["dtype"]]:
            report.bad_chunks.append(f"{name}: max |stored - recomputed| = {err_:.3g}")


def verify(
    store: str | os.PathLike,
    *,
    sample: int = 1000,
    dataset: str | os.PathLike | None = None,
    backend: BasisBackend | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check a store: every file against ``checksums.json`` (size, sha256: metadata, index
    arrays and shards), the index arrays against the chunk plan (recomputed from the dataset's
    edges when ``sample`` > 0), then ``sample`` random edges recomputed from the dataset (the
    one recorded in the store unless given; verified on open) and compared with the stored
    rows. Every problem names its file or chunk."""
    where = str(Location.parse(store))
    group = open_group(where)
    meta = store_meta(group, where)
    report = VerifyReport(store=where, key=meta["key"])
    checks = read_checksums_bytes(where)
    if checks is None:
        report.complete = False
        return report
    _check_files(where, json.loads(checks), report, progress)
    geom = _dataset_geometry(meta, dataset) if sample > 0 and meta["num_edges"] > 0 else None
    index_bad = index_problems(where, group, meta, None if geom is None else geom.edge_offsets)
    report.bad_files += index_bad
    if geom is not None and not index_bad:
        _check_sampled_edges(
            where, group, meta, report, geom, sample=sample, backend=backend, seed=seed
        )
    return report
