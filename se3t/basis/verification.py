"""``se3t basis verify``: shard files against ``checksums.json``, and sampled edges recomputed
from the dataset against the stored rows."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from se3t.basis.geometry import load_geometry
from se3t.basis.key import BasisBackend, default_backend
from se3t.basis.layout import open_group, read_checksums_bytes, store_meta, unit_file
from se3t.basis.location import is_url, local_path
from se3t.errors import InputError

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


def _check_files(where: str, record: dict[str, Any], report: VerifyReport, progress: bool) -> None:
    """Every file ``checksums.json`` lists: present, its size and sha256 as recorded."""
    fs, root = fsspec.core.url_to_fs(where) if is_url(where) else (fsspec.filesystem("file"), where)
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


def _check_sampled_edges(
    where: str,
    group: zarr.Group,
    meta: dict[str, Any],
    report: VerifyReport,
    *,
    sample: int,
    dataset: str | os.PathLike | None,
    backend: BasisBackend | None,
    seed: int | None,
) -> None:
    """``sample`` random edges recomputed from the dataset and compared with the stored rows."""
    geom = load_geometry(dataset or meta["dataset_path"])
    if geom.fingerprint != meta["dataset_fingerprint"]:
        raise InputError(
            f"dataset {geom.path!r} has fingerprint {geom.fingerprint}, the store was built "
            f"from {meta['dataset_fingerprint']}; give --dataset with the right one"
        )
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
    """Check a store: every shard file against ``checksums.json`` (size, sha256), then ``sample``
    random edges recomputed from the dataset (the one recorded in the store unless given) and
    compared with the stored rows. Every problem names its file or chunk."""
    where = str(store) if is_url(store) else str(local_path(store))
    group = open_group(where)
    meta = store_meta(group, where)
    report = VerifyReport(store=where, key=meta["key"])
    checks = read_checksums_bytes(where)
    if checks is None:
        report.complete = False
        return report
    _check_files(where, json.loads(checks), report, progress)
    if sample > 0 and meta["num_edges"] > 0:
        _check_sampled_edges(
            where, group, meta, report, sample=sample, dataset=dataset, backend=backend, seed=seed
        )
    return report
