"""Training-step benchmark of the SE(3)-Transformer: fused paths vs the pairwise reference.

A full step is forward, L1 loss, backward and Adam, on real QM9 molecules (the ones committed
under ``tests/data/qm9``, bond graphs built by ``se3t.data``), at the paper's hyperparameters.
Every point is measured by se3t's step harness (``se3t.eval.point``, the one ``se3t profile``
uses) in a FRESH process, so its peak memory is its own; options and rows speak the config's
words (``model.fusion``, ``train.precision``, ``model.low_memory``, ``eval.profile_basis``).

    # make the batches (needs se3t.data: zarr, rdkit); a small .pt of plain tensors
    python benchmarks/train_step.py make-batches benchmarks/batches.pt
    # the table (CPU: 2 warm-up + 3 timed steps per point)
    python benchmarks/train_step.py run --batches benchmarks/batches.pt --sizes 100 \
        --fusion pairwise full --precision fp32 bf16 --out results/bench_cpu

The harness imports only torch, e3nn and se3t's model code (no omegaconf, zarr or rdkit), so
the same script runs on a GPU machine that has just torch and e3nn (``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from se3t.choices import Fusion, Kernel, Precision, ProfileBasis  # noqa: E402

SIZES = (32, 100, 240, 1000)


def default_raw() -> tuple[Path, int]:
    """qm9pack's full CSVs, every 109th molecule (NVIDIA's comparison set) when installed;
    else the committed test molecules, all of them."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        if (data / "qm9_part1.csv").exists():
            return data, 109
    return ROOT / "tests" / "data" / "qm9" / "qm9pack", 1


def _subsample_csvs(raw: Path, every: int, dest: Path) -> Path:
    """Every ``every``-th molecule of the qm9pack CSVs under ``raw``, as CSVs in ``dest``."""
    import csv

    dest.mkdir(parents=True, exist_ok=True)
    k = 0
    for f in sorted(raw.glob("qm9_part*.csv")):
        with open(f, newline="") as fin, open(dest / f.name, "w", newline="") as fout:
            reader, writer = csv.reader(fin), csv.writer(fout)
            writer.writerow(next(reader))
            for row in reader:
                if k % every == 0:
                    writer.writerow(row)
                k += 1
    return dest


def make_batches(
    out: Path, raw: Path | None = None, every: int | None = None, seed: int = 0
) -> None:
    """Build real QM9 molecules into a temporary store and save batches of each size as plain
    tensors (molecules drawn with replacement when fewer are available than a batch needs)."""
    import tempfile

    from se3t.data import MoleculeDataset, build_qm9, collate

    d_raw, d_every = default_raw()
    raw, every = raw or d_raw, every or (d_every if raw is None else 1)
    with tempfile.TemporaryDirectory() as tmp:
        if every > 1:
            raw = _subsample_csvs(raw, every, Path(tmp) / "raw")
        store = Path(tmp) / "qm9.zarr"
        build_qm9(raw, store, processes=2, progress=False)
        ds = MoleculeDataset(store, split="all", targets=("homo",))
        g = torch.Generator().manual_seed(seed)
        batches = {}
        for size in SIZES:
            idx = torch.randperm(len(ds), generator=g)[:size].tolist()
            while len(idx) < size:
                idx += torch.randint(0, len(ds), (size - len(idx),), generator=g).tolist()
            b = collate([ds[i] for i in idx])
            batches[size] = {
                "src": b.graph.src,
                "dst": b.graph.dst,
                "node_graph": b.graph.node_graph,
                "num_nodes": b.graph.num_nodes,
                "pos": b.pos,
                "node_feats": b.node_feats,
                "edge_feats": b.edge_feats,
                "y": b.y,
            }
            print(
                f"{len(ds)} molecules from {raw} (every {every}th); batch {size}: "
                f"{b.graph.num_nodes} atoms, {b.graph.num_edges} directed edges "
                f"({b.graph.num_edges / size:.1f} per molecule)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    torch.save(batches, tmp_out)
    os.replace(tmp_out, out)


def spec(
    args, size: int, fusion: str, precision: str, low_memory: bool, basis: str, kernel="auto"
) -> dict:
    """The step harness's spec of one point: the paper's model (the config's defaults) with
    ``model.fusion`` and ``model.low_memory`` set, on the batch of ``size`` of ``--batches``."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "model": {"fusion": fusion, "low_memory": low_memory, "kernel": kernel},
        "precision": precision,
        "batch_size": size,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "basis": basis,
        "device": device,
        "seed": 0,
        "lr": 1e-3,
        "memory_limit": None,
        "batches": str(Path(args.batches).resolve()),
    }


def run(args) -> None:
    """Every combination, each point in a fresh process through the step harness, with the
    step's FLOPs (se3t.eval.roofline) and the machine's square-sgemm rate measured in this
    window, before and after the points, as the roofline."""
    from se3t.eval.point import build_model, run_fresh
    from se3t.eval.roofline import machine, model_step_flops, sgemm_gflops

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**machine(), "threads": torch.get_num_threads(), "sgemm_gflops_before": sgemm_gflops()}
    print(f"# {env}", flush=True)
    rows = []
    combos = [
        (size, fusion, prec, low_memory == "true", basis, kernel)
        for size in args.sizes
        for fusion in args.fusion
        for kernel in (args.kernel if fusion != "pairwise" else ["auto"])
        for prec in args.precision
        for low_memory in args.low_memory
        for basis in args.basis
    ]
    for combo in combos:
        point_spec = spec(args, *combo)
        row = run_fresh(point_spec, timeout=args.timeout).as_dict()
        row["kernel"] = point_spec["model"]["kernel"] if combo[1] != "pairwise" else "-"
        if row["status"] == "ok":
            flops = model_step_flops(
                build_model(point_spec["model"]), row["num_edges"], row["num_atoms"]
            )
            row["gflop"] = flops / 1e9
            row["gflop_s"] = row["gflop"] / row["step_time_s"]
        rows.append(row)
        print(format_row(rows[-1]), flush=True)
    env["sgemm_gflops_after"] = sgemm_gflops()
    env["load_after"] = machine()["load"]
    (out / "results.json").write_text(json.dumps({"machine": env, "points": rows}, indent=1))
    (out / "table.md").write_text(table(rows, env))
    print(table(rows, env))


def _gib(x) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def format_row(r: dict) -> str:
    what = (
        f"{r['batch_size']:>5} {r['fusion']:>10} kernel={r['kernel']:>5} {r['precision']:>5} "
        f"low_memory={r['low_memory']!s:5} basis={r['basis']:>11}"
    )
    if r["status"] != "ok":
        return f"{what}: {r['status']}: {r['error']}"
    return (
        f"{what} {r['mol_per_s']:8.2f} mol/s  {r['gflop_s']:6.1f} GFLOP/s  "
        f"peak {_gib(r['peak_memory_bytes'])} GiB, added {_gib(r['added_memory_bytes'])} GiB"
    )


HEADER = (
    "| batch | fusion | kernel | precision | low memory | basis | mol/s | step (s) | GFLOP/step "
    "| GFLOP/s | of sgemm | peak memory (GiB) | added by the step (GiB) |\n"
    "|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def table(rows: list[dict], env: dict) -> str:
    roof = min(env["sgemm_gflops_before"], env.get("sgemm_gflops_after", float("inf")))
    lines = [
        f"{env['cpu']} ({env['threads']} threads; {env['isa']}), load {env['load']} -> "
        f"{env.get('load_after', '?')}; square sgemm {env['sgemm_gflops_before']:.0f} / "
        f"{env.get('sgemm_gflops_after', float('nan')):.0f} GFLOP/s (before / after the points)",
        "",
        HEADER,
    ]
    for r in rows:
        what = (
            f"| {r['batch_size']} | {r['fusion']} | {r['kernel']} | {r['precision']} | "
            f"{'on' if r['low_memory'] else 'off'} | {r['basis']} |"
        )
        if r["status"] != "ok":
            lines.append(f"{what} {r['status']}: {r['error']} | | | | | | |")
        else:
            lines.append(
                f"{what} {r['mol_per_s']:.2f} | {r['step_time_s']:.3f} | {r['gflop']:.1f} | "
                f"{r['gflop_s']:.1f} | {100 * r['gflop_s'] / roof:.0f} % | "
                f"{_gib(r['peak_memory_bytes'])} | {_gib(r['added_memory_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def basis_throughput(edges: int, repeats: int, dtype: str) -> None:
    """Edges/s of ``compute_basis_flat`` (degree 3) into a preallocated output (as the basis
    store fills its chunks), next to e3nn's spherical harmonics alone."""
    from se3t.so3.basis import _sh, basis_size, compute_basis_flat

    dt = getattr(torch, dtype)
    x = torch.randn(edges, 3)
    out = torch.empty(edges, basis_size(3), dtype=dt)
    compute_basis_flat(x[:1000], 3, dtype=dt)  # constants cached
    times, sh = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compute_basis_flat(x, 3, dtype=dt, out=out)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _sh(x, 3)
        sh.append(time.perf_counter() - t0)
    times.sort()
    sh.sort()
    print(
        f"compute_basis_flat degree 3 {dtype}, {edges} edges, {torch.get_num_threads()} threads: "
        f"best {edges / times[0]:,.0f} edges/s, median {edges / times[len(times) // 2]:,.0f} "
        f"edges/s (harmonics alone: median {edges / sh[len(sh) // 2]:,.0f} edges/s)"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-batches", help="save batches of real QM9 molecules as a .pt file")
    m.add_argument("out", type=Path)
    m.add_argument(
        "--raw",
        type=Path,
        default=None,
        help="qm9pack CSV folder (default: qm9pack's full data, else tests/data/qm9/qm9pack)",
    )
    m.add_argument(
        "--every",
        type=int,
        default=None,
        help="keep every N-th molecule (default: 109 for qm9pack's full data, else 1)",
    )
    bt = sub.add_parser("basis", help="edges/s of compute_basis_flat (the basis store's fast path)")
    bt.add_argument("--edges", type=int, default=100_000)
    bt.add_argument("--repeats", type=int, default=5)
    bt.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    q = sub.add_parser(
        "run",
        help="the table: every combination, each point a fresh process (se3t's step harness)",
    )
    q.add_argument("--batches", required=True, help="the .pt made by make-batches")
    q.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    q.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    q.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    q.add_argument("--sizes", type=int, nargs="+", default=[100])
    # the grid, each axis a list of the config's values
    for flag, choices, default, what in (
        ("--fusion", [f.value for f in Fusion], ["pairwise", "full"], "model.fusion values"),
        ("--precision", [p.value for p in Precision], ["fp32"], "train.precision values"),
        ("--low-memory", ["false", "true"], ["false"], "model.low_memory values"),
        ("--basis", [b.value for b in ProfileBasis], ["step"], "eval.profile_basis values"),
        ("--kernel", [k.value for k in Kernel], ["auto"], "model.kernel values (fused paths)"),
    ):
        q.add_argument(flag, nargs="+", default=default, choices=choices, help=what)
    q.add_argument("--timeout", type=int, default=1800, help="seconds per point")
    q.add_argument(
        "--out", default="results/bench_train_step", help="folder for results.json and table.md"
    )
    args = p.parse_args(argv)
    if args.cmd == "basis":
        basis_throughput(args.edges, args.repeats, args.dtype)
    elif args.cmd == "make-batches":
        make_batches(args.out, args.raw, args.every)
    else:
        run(args)


if __name__ == "__main__":
    main()
