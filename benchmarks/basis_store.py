"""Basis-store benchmarks: compute throughput, compressors, end-to-end precompute, the loader,
and training steps with stored vs on-the-fly bases. Figures go to BENCHMARKS.md.

    .venv/bin/python benchmarks/basis_store.py --dataset DS.zarr --work /work/cache/bench \\
        [--sections compute,precompute,compressors,loader,step] [--out results.json]

Speeds are measured side by side in one run (the machine is shared: compare ratios).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from se3t.basis import BasisSettings, finalize, open_basis, precompute
from se3t.data.store import fingerprint, open_dataset
from se3t.so3.basis import compute_basis_flat

COMPRESSORS = [
    ("none", None),
    ("zstd", 1),
    ("zstd", 3),
    ("zstd", 9),
    ("blosc-lz4", 5),
    ("blosc-zstd", 3),
    ("gzip", 5),
]


def _edge_vec(ds) -> torch.Tensor:
    counts = np.diff(ds.edge_offsets)
    base = np.repeat(ds.atom_offsets[:-1], counts)
    pos = torch.from_numpy(np.array(ds.pos))
    s = torch.from_numpy(base + ds.src.astype(np.int64))
    d = torch.from_numpy(base + ds.dst.astype(np.int64))
    return pos[d] - pos[s]


def bench_compute(dataset: str, repeats: int = 3) -> dict:
    vec = _edge_vec(open_dataset(dataset))
    n = min(len(vec), 400_000)
    vec = vec[:n].contiguous()
    out = torch.empty(n, 1092)
    compute_basis_flat(vec[:1000], 3)  # warm-up: Clebsch-Gordan projection cached
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        compute_basis_flat(vec, 3, out=out)
        best = min(best, time.perf_counter() - t)
    return {
        "edges": n,
        "seconds": best,
        "edges_per_s": n / best,
        "threads": torch.get_num_threads(),
    }


def bench_compressors(dataset: str, work: Path) -> list[dict]:
    rows = []
    fp = fingerprint(dataset)
    for name, level in COMPRESSORS:
        cache = work / f"comp-{name}-{level}"
        shutil.rmtree(cache, ignore_errors=True)
        s = BasisSettings(compressor=name, compression_level=level)
        r = precompute(dataset, cache, s, progress=False)
        t = time.perf_counter()
        finalize(r["store"])
        t_final = time.perf_counter() - t
        on_disk = sum(f.stat().st_size for f in Path(r["store"], "basis").rglob("*") if f.is_file())
        t = time.perf_counter()
        b = open_basis(
            r["store"], dataset_fingerprint=fp, max_degree=3, dtype="float32", read="memory"
        )
        t_read = time.perf_counter() - t
        raw = b.num_edges * b.basis_size * 4
        rows.append(
            {
                "compressor": name,
                "level": level,
                "edges": r["edges_computed"],
                "bytes_per_edge": on_disk / r["edges_computed"],
                "ratio": raw / on_disk,
                "precompute_edges_per_s": r["edges_per_s"],
                "precompute_seconds": r["seconds"],
                "write_MB_per_s": raw / 1e6 / r["seconds"],
                "read_MB_per_s": b.nbytes / 1e6 / t_read,
                "finalize_seconds": t_final,
                "store_MB": on_disk / 1e6,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del b
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def bench_codecs(store: str, chunks: int = 4, rounds: int = 3) -> list[dict]:
    """Compressors on real stored bases (the first ``chunks`` chunks of a finalized store),
    interleaved over ``rounds`` so the shared machine's load hits them alike: bytes per edge,
    encode and decode MB/s on one core (medians)."""
    import zarr
    from numcodecs import Blosc, GZip, Zstd

    group = zarr.open_group(store, mode="r")
    meta = group.attrs["se3t_basis"]
    ce = meta["chunk_edges"]
    data = [np.ascontiguousarray(group["basis"][c * ce : (c + 1) * ce]) for c in range(chunks)]
    rows = group["row_start"][:]
    counts = group["edge_count"][:]
    real_edges = int(counts[(rows // ce) < chunks].sum())
    raw = sum(d.nbytes for d in data)
    codecs = {
        "none": None,
        "zstd-1": Zstd(level=1),
        "zstd-3": Zstd(level=3),
        "zstd-9": Zstd(level=9),
        "blosc-lz4-5": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc-zstd-3": Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
        "gzip-5": GZip(level=5),
    }
    Blosc.use_threads = False  # one core each, like zarr's per-chunk codec calls
    times = {k: {"enc": [], "dec": [], "bytes": 0} for k in codecs}
    for _ in range(rounds):
        for name, codec in codecs.items():
            t = time.perf_counter()
            enc = [d.tobytes() if codec is None else codec.encode(d) for d in data]
            times[name]["enc"].append(time.perf_counter() - t)
            times[name]["bytes"] = sum(len(e) for e in enc)
            t = time.perf_counter()
            for e in enc:
                np.frombuffer(e if codec is None else codec.decode(e), dtype=np.float32).sum()
            times[name]["dec"].append(time.perf_counter() - t)
    out = []
    for name, t in times.items():
        out.append(
            {
                "codec": name,
                "bytes_per_edge": t["bytes"] / real_edges,
                "ratio": raw / t["bytes"],
                "encode_MB_per_s": raw / 1e6 / float(np.median(t["enc"])),
                "decode_MB_per_s": raw / 1e6 / float(np.median(t["dec"])),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def bench_precompute(dataset: str, work: Path, runs: int = 2) -> list[dict]:
    """End to end, as a user runs it: ``se3t basis precompute`` in a fresh process into an
    empty cache (compute, compress, write), then ``finalize``, then a second precompute that
    must reuse everything. Wall times include Python start-up; the receipt's edges/s is the
    time inside ``precompute``."""
    import resource
    import subprocess
    import sys

    se3t = [sys.executable, "-m", "se3t.cli"]
    rows = []
    for k in range(runs):
        cache = work / f"e2e-{k}"
        shutil.rmtree(cache, ignore_errors=True)
        receipt = work / f"e2e-{k}.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(
            [
                *se3t,
                "basis",
                "precompute",
                "--dataset",
                dataset,
                "--cache",
                str(cache),
                "--receipt",
                str(receipt),
                "--quiet",
            ],
            check=True,
        )
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = json.loads(receipt.read_text())
        t = time.perf_counter()
        subprocess.run(
            [*se3t, "basis", "finalize", r["store"]], check=True, stdout=subprocess.DEVNULL
        )
        fin = time.perf_counter() - t
        again = work / f"e2e-{k}-again.json"
        subprocess.run(
            [
                *se3t,
                "basis",
                "precompute",
                "--dataset",
                dataset,
                "--cache",
                str(cache),
                "--receipt",
                str(again),
                "--quiet",
            ],
            check=True,
        )
        r2 = json.loads(again.read_text())
        assert r2["chunks_computed"] == 0 and r2["complete"], r2
        size = sum(f.stat().st_size for f in Path(r["store"]).rglob("*") if f.is_file())
        row = {
            "edges": r["edges_computed"],
            "chunks": r["chunks_computed"],
            "wall_s": wall,
            "edges_per_s_wall": r["edges_computed"] / wall,
            "edges_per_s_receipt": r["edges_per_s"],
            "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime,
            "finalize_s": fin,
            "bytes": size,
            "bytes_per_edge": size / r["edges_computed"],
            "second_run_chunks_computed": r2["chunks_computed"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def bench_loader(dataset: str, work: Path, compressor: str, batch: int = 240) -> dict:
    from se3t.data import MoleculeDataset, collate

    cache = work / "loader"
    r = precompute(dataset, cache, BasisSettings(compressor=compressor), progress=False)
    finalize(r["store"])
    fp = fingerprint(dataset)
    ds = MoleculeDataset(dataset, split="all")
    out = {"compressor": compressor, "batch": batch, "molecules": len(ds)}
    rng = np.random.default_rng(0)
    for read in ("memory", "chunks"):
        t = time.perf_counter()
        b = open_basis(r["store"], dataset_fingerprint=fp, max_degree=3, dtype="float32", read=read)
        out[f"{read}_open_seconds"] = time.perf_counter() - t
        if read == "memory":
            batches = [rng.choice(len(ds), batch, replace=False) for _ in range(len(ds) // batch)]
        else:
            batches = list(b.batch_sampler(ds.indices, batch, seed=0))
        t = time.perf_counter()
        edges = 0
        for pos in batches:
            edges += b.gather(ds.indices[np.asarray(pos)]).shape[0]
        dt = time.perf_counter() - t
        out[f"{read}_gather_mol_per_s"] = len(batches) * batch / dt
        out[f"{read}_gather_GB_per_s"] = edges * b.basis_size * 4 / 1e9 / dt
        # the whole loader path: collate + gather
        t = time.perf_counter()
        for pos in batches[:50]:
            batch_ = collate([ds[i] for i in pos])
            b.gather(batch_.index)
        out[f"{read}_collate_gather_mol_per_s"] = (
            min(50, len(batches)) * batch / (time.perf_counter() - t)
        )
        print(json.dumps(out), flush=True)
        del b
    shutil.rmtree(cache, ignore_errors=True)
    return out


def bench_basis_per_batch(dataset: str, store: str, batch: int = 240, n: int = 20) -> dict:
    """Per batch of ``batch`` random molecules: bases gathered from the store (read=memory)
    vs computed from the edge vectors (what the forward pass would do), interleaved."""
    from se3t.data import MoleculeDataset, collate

    b = open_basis(
        store,
        dataset_fingerprint=fingerprint(dataset),
        max_degree=3,
        dtype="float32",
        read="memory",
    )
    ds = MoleculeDataset(dataset, split="all")
    rng = np.random.default_rng(0)
    batches = [
        collate([ds[i] for i in rng.choice(len(ds), batch, replace=False)]) for _ in range(n)
    ]
    compute_basis_flat(batches[0].edge_vec, 3)
    t_g, t_c = [], []
    for bt in batches:
        t = time.perf_counter()
        g = b.gather(bt.index)
        t_g.append(time.perf_counter() - t)
        t = time.perf_counter()
        c = compute_basis_flat(bt.edge_vec, 3)
        t_c.append(time.perf_counter() - t)
        torch.testing.assert_close(g, c, rtol=1e-5, atol=1e-6)
    out = {
        "batch": batch,
        "edges_per_batch": float(np.mean([x.graph.num_edges for x in batches])),
        "gather_ms": 1e3 * float(np.median(t_g)),
        "compute_ms": 1e3 * float(np.median(t_c)),
    }
    out["gather_mol_per_s"] = batch / (out["gather_ms"] / 1e3)
    out["compute_mol_per_s"] = batch / (out["compute_ms"] / 1e3)
    print(json.dumps(out), flush=True)
    return out


def bench_step(dataset: str, work: Path, batch: int = 32, steps: int = 5) -> dict:
    """Training step (forward + backward + Adam) with bases from the store vs computed in the
    forward pass, on the default model (7 layers, degrees 0..3, 32 channels)."""
    from se3t.config import ModelConfig
    from se3t.data import MoleculeDataset, collate
    from se3t.models import build

    cache = work / "step"
    r = precompute(dataset, cache, BasisSettings(), progress=False)
    finalize(r["store"])
    b = open_basis(
        r["store"],
        dataset_fingerprint=fingerprint(dataset),
        max_degree=3,
        dtype="float32",
        read="memory",
    )
    ds = MoleculeDataset(dataset, split="all")
    torch.manual_seed(0)
    model = build(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    batches = [
        collate([ds[i] for i in rng.choice(len(ds), batch, replace=False)])
        for _ in range(steps + 1)
    ]
    out = {"batch": batch, "steps": steps}
    times: dict[str, list[float]] = {"stored": [], "computed": []}
    basis_times = {"gather": [], "compute": []}
    for k, bt in enumerate(batches):
        for mode in ("stored", "computed"):  # interleaved: the shared machine's noise hits both
            t = time.perf_counter()
            if mode == "stored":
                t0 = time.perf_counter()
                basis = b.gather(bt.index)
                basis_times["gather"].append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                with torch.no_grad():
                    compute_basis_flat(bt.edge_vec, 3)
                basis_times["compute"].append(time.perf_counter() - t0)
                basis = None
            pred = model(bt, basis=basis)
            loss = (pred - bt.y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if k > 0:  # first step warms up
                times[mode].append(time.perf_counter() - t)
    for mode, ts in times.items():
        out[f"{mode}_step_s"] = float(np.median(ts))
    out["gather_s"] = float(np.median(basis_times["gather"][1:]))
    out["compute_s"] = float(np.median(basis_times["compute"][1:]))
    out["ratio_computed_over_stored"] = out["computed_step_s"] / out["stored_step_s"]
    print(json.dumps(out), flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True, help="dataset store")
    ap.add_argument("--work", default="/work/cache/bench", help="scratch folder (big)")
    ap.add_argument("--sections", default="compute,precompute,codecs,compressors,loader,step")
    ap.add_argument("--store", default=None, help="a finalized basis store (codecs section)")
    ap.add_argument("--loader-compressor", default="blosc-lz4")
    ap.add_argument("--step-batch", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the results as JSON")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"dataset": args.dataset, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    sections = args.sections.split(",")
    if "compute" in sections:
        results["compute"] = bench_compute(args.dataset)
        print(json.dumps(results["compute"]), flush=True)
    if "precompute" in sections:
        results["precompute"] = bench_precompute(args.dataset, work)
    if "compressors" in sections:
        results["compressors"] = bench_compressors(args.dataset, work)
    if "codecs" in sections:
        results["codecs"] = bench_codecs(args.store)
    if "loader" in sections:
        results["loader"] = bench_loader(args.dataset, work, args.loader_compressor)
    if "per_batch" in sections:
        results["per_batch"] = bench_basis_per_batch(args.dataset, args.store)
    if "step" in sections:
        results["step"] = bench_step(args.dataset, work, batch=args.step_batch)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
