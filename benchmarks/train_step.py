"""Training-step benchmark of the SE(3)-Transformer: fused paths vs the pairwise reference.

A full step is forward, L1 loss, backward and Adam, on real QM9 molecules (the ones committed
under ``tests/data/qm9``, bond graphs built by ``se3t.data``), at the paper's hyperparameters.
Every point runs in a FRESH process, so its peak RSS (CPU) or ``max_memory_allocated`` (CUDA)
is its own.

    # make the batches (needs se3t.data: zarr, rdkit); a small .pt of plain tensors
    python benchmarks/train_step.py make-batches benchmarks/batches.pt
    # the table (CPU: 2 warm-up + 3 timed steps per point)
    python benchmarks/train_step.py run --batches benchmarks/batches.pt --sizes 100 \
        --paths pairwise full --precisions fp32 bf16 --out results/bench_cpu
    # one point in this process (what `run` spawns)
    python benchmarks/train_step.py point --batches ... --size 100 --path full --precision fp32

The worker imports only torch, e3nn and se3t's model code (no omegaconf, zarr or rdkit), so the
same script runs on a GPU machine that has just torch and e3nn (``benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

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

    from se3t.data import QM9Dataset, build_dataset, collate

    d_raw, d_every = default_raw()
    raw, every = raw or d_raw, every or (d_every if raw is None else 1)
    with tempfile.TemporaryDirectory() as tmp:
        if every > 1:
            raw = _subsample_csvs(raw, every, Path(tmp) / "raw")
        store = Path(tmp) / "qm9.zarr"
        build_dataset(raw, store, processes=2, progress=False)
        ds = QM9Dataset(store, split="all", targets=("homo",))
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


def load_batch(path: Path, size: int, device, copies: int = 1):
    """The saved batch of ``size`` molecules; ``copies > 1``: its molecules ``copies`` times
    over (a batch of ``size * copies``, for the largest-batch search)."""
    from se3t.graph import Batch, Graph

    d = dict(torch.load(path, weights_only=True)[size])
    if copies > 1:
        n = int(d["num_nodes"])
        shift = torch.arange(copies).repeat_interleave(d["src"].numel()) * n
        d["src"] = d["src"].repeat(copies) + shift
        d["dst"] = d["dst"].repeat(copies) + shift
        graphs = torch.arange(copies).repeat_interleave(n) * size
        d["node_graph"] = d["node_graph"].repeat(copies) + graphs
        d["num_nodes"] = n * copies
        for k in ("pos", "node_feats", "edge_feats", "y"):
            d[k] = d[k].repeat(copies, *([1] * (d[k].dim() - 1)))
        size = size * copies
    graph = Graph(d["src"], d["dst"], d["node_graph"], int(d["num_nodes"]), size)
    return Batch(graph, d["pos"], d["node_feats"], d["edge_feats"], y=d["y"]).to(device)


def point(args) -> dict:
    """One benchmark point in this process; returns the result row."""
    from se3t.models.transformer import SE3TransformerPooled
    from se3t.nn.tuning import KernelTuner, default_cache
    from se3t.so3.basis import compute_basis_flat

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.manual_seed(0)
    if args.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = load_batch(Path(args.batches), args.size, device, args.copies)
    model = SE3TransformerPooled(
        fusion=args.path,
        low_memory=args.low_memory,
        pooling="max",
        kernel=args.kernel,
        tuner=KernelTuner(cache=default_cache()),  # per machine, as build() does
    ).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    basis = compute_basis_flat(batch.edge_vec, 3) if args.basis == "pre" else None

    def step():
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            pred = model(batch, basis=basis)
            loss = torch.nn.functional.l1_loss(pred.float(), batch.y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    med = sorted(times)[len(times) // 2]
    flat = model.prepare_basis(batch, basis)
    state = model.transformer.kernel_state(flat)
    with torch.no_grad():
        model(batch, flat, state=state)  # which evaluations the step's forward ran
    args.size = batch.graph.num_graphs // args.copies  # the row reports size * copies
    return {
        "kernel": args.kernel,
        "evaluations": dict(state.ran),
        "tiles": model.transformer.tuner.report(),
        **roofline_columns(model, batch, med, device, args.sgemm_n),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "size": args.size * args.copies,
        "path": args.path,
        "fusion": model.fusion.value,
        "precision": args.precision,
        "low_memory": args.low_memory,
        "basis": args.basis,
        "edges": batch.graph.num_edges,
        "params": params,
        "step_s": med,
        "mol_per_s": args.size / med,
        "peak_bytes": peak,
        "loss": loss.item(),
        "steps": args.steps,
    }


def roofline_columns(model, batch, step_s: float, device, sgemm_n: int) -> dict:
    """The step's FLOPs (from the fibers and edge counts), its rate, and the machine's square
    sgemm rate measured now, in this process (se3t.eval.roofline)."""
    from se3t.eval.roofline import cpu_model, model_step_flops, sgemm_gflops

    flops = model_step_flops(model, batch.graph.num_edges, batch.graph.num_nodes)
    sgemm = sgemm_gflops(sgemm_n, device=device.type) if sgemm_n else float("nan")
    return {
        "step_gflop": flops / 1e9,
        "gflops": flops / step_s / 1e9,
        "sgemm_gflops": sgemm,
        "sgemm_n": sgemm_n,
        **cpu_model(),
    }


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    combos = [
        (size, path, prec, lowmem, basis, kernel)
        for _ in range(args.repeat)  # A B A B: every point again, after all the others
        for size in args.sizes
        for path in args.paths
        for kernel in (args.kernels if path != "pairwise" else ["auto"])
        for prec in args.precisions
        for lowmem in args.low_memory
        for basis in args.basis
    ]
    for size, path, prec, lowmem, basis, kernel in combos:
        cmd = [
            sys.executable,
            __file__,
            "point",
            "--batches",
            args.batches,
            "--size",
            str(size),
            "--path",
            path,
            "--precision",
            prec,
            "--basis",
            basis,
            "--device",
            args.device,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--kernel",
            kernel,
            "--sgemm-n",
            str(args.sgemm_n),
        ]
        if lowmem == "on":
            cmd.append("--low-memory")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            row = {
                "size": size,
                "path": path,
                "precision": prec,
                "low_memory": lowmem == "on",
                "basis": basis,
                "kernel": kernel,
                "error": tail[0] if tail else f"exit {proc.returncode}",
            }
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(format_row(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(table(rows))
    print(table(rows))


def format_row(r: dict) -> str:
    if "error" in r:
        return (
            f"{r['size']:>5} {r['path']:>10} {r['precision']:>5} "
            f"lowmem={r['low_memory']} {r['basis']}: {r['error']}"
        )
    return (
        f"{r['size']:>5} {r['path']:>10} {r['precision']:>5} lowmem={r['low_memory']!s:5} "
        f"basis={r['basis']:>3} kernel={_evals(r):>12} {r['mol_per_s']:8.2f} mol/s  "
        f"peak {r['peak_bytes'] / 2**30:6.2f} GiB  {r['gflops']:6.1f} GFLOP/s "
        f"(sgemm {r['sgemm_gflops']:.1f}, load {r['load']})"
    )


def _evals(r: dict) -> str:
    """The evaluations the point's forward pass ran (pairwise: none of the fused ones)."""
    return "+".join(sorted(r.get("evaluations") or {})) or "pairwise"


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | path | kernel | precision | low memory | basis | mol/s | step (s) "
        "| peak memory (GiB) | step GFLOP | GFLOP/s | sgemm GFLOP/s | % of sgemm | load |",
        "|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['size']} | {r['path']} | {r.get('kernel', '')} | {r['precision']} | "
                f"{r['low_memory']} | {r['basis']} | failed: {r['error']} | | | | | | | |"
            )
        else:
            lines.append(
                f"| {r['size']} | {r['path']} | {_evals(r)} | {r['precision']} | "
                f"{'on' if r['low_memory'] else 'off'} | {r['basis']} | "
                f"{r['mol_per_s']:.2f} | {r['step_s']:.3f} | {r['peak_bytes'] / 2**30:.2f} | "
                f"{r['step_gflop']:.1f} | {r['gflops']:.1f} | {r['sgemm_gflops']:.1f} | "
                f"{100 * r['gflops'] / r['sgemm_gflops']:.0f} | {r['load']} |"
            )
    cpus = {(r["cpu"], r["isa"]) for r in rows if "cpu" in r}
    notes = [f"CPU: {cpu}; ISA: {isa}" for cpu, isa in sorted(cpus)]
    return "\n".join(lines + [""] + notes) + "\n"


def layer_point(size: int, kernel: str, repeats: int, batches: str) -> dict:
    """One hidden-layer TFN convolution of the paper's model (key/value conv: degrees 0..3,
    32 -> 32 + 32 channels, edge messages), forward and backward on the real batch's edges,
    with ``kernel`` (or the pairwise reference for ``pairwise``): best of ``repeats``."""
    from se3t.eval.roofline import conv_flops, cpu_model
    from se3t.nn import ConvSE3, pairwise_reference
    from se3t.nn.kernel import KernelState
    from se3t.nn.tuning import KernelTuner, default_cache
    from se3t.so3 import Fiber
    from se3t.so3.basis import compute_basis_flat

    torch.manual_seed(0)
    batch = load_batch(Path(batches), size, "cpu")
    g = batch.graph
    fin = Fiber({d: 32 for d in range(4)})
    conv = ConvSE3(fin, Fiber({d: 32 for d in range(4)}), Fiber({0: 4}), max_degree=3, pool=False)
    if kernel == "pairwise":
        conv = pairwise_reference(conv)
    basis = compute_basis_flat(batch.edge_vec, 3)
    es = torch.cat([batch.edge_feats, batch.edge_vec.norm(dim=1, keepdim=True)], 1)
    x = {d: torch.randn(g.num_nodes, 32, 2 * d + 1, requires_grad=True) for d in range(4)}
    tuner = KernelTuner(cache=default_cache())
    best = float("inf")
    for _ in range(repeats + 1):  # the first: tuning and warm-up
        state = KernelState(basis, "torch" if kernel == "pairwise" else kernel, tuner)
        t = time.perf_counter()
        out = conv(x, g, basis, es, state=state)
        sum(o.sum() for o in out.values()).backward()
        t = time.perf_counter() - t
        best = min(best, t) if state.ran or kernel == "pairwise" else best
    import resource

    flops = 3 * conv_flops(conv, g.num_edges, g.num_nodes)
    return {
        "layer": "hidden key/value conv",
        "size": size,
        "edges": g.num_edges,
        "kernel": kernel,
        "evaluations": dict(state.ran),
        "fwd_bwd_s": best,
        "gflops": flops / best / 1e9,
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        **cpu_model(),
    }


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
    la = sub.add_parser(
        "layer", help="one hidden-layer convolution, forward+backward, per kernel (A B A B)"
    )
    la.add_argument("--batches", required=True)
    la.add_argument("--size", type=int, default=100)
    la.add_argument("--kernels", nargs="+", default=["pairwise", "torch", "cpp"])
    la.add_argument("--repeat", type=int, default=2, help="fresh processes per kernel, in turn")
    la.add_argument("--repeats", type=int, default=2, help="timed passes per process (best)")
    la.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the worker
    bt = sub.add_parser("basis", help="edges/s of compute_basis_flat (the basis store's fast path)")
    bt.add_argument("--edges", type=int, default=100_000)
    bt.add_argument("--repeats", type=int, default=5)
    bt.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    for name in ("point", "run"):
        q = sub.add_parser(
            name,
            help="one point in this process"
            if name == "point"
            else "the table, a fresh process per point",
        )
        q.add_argument("--batches", required=True, help="the .pt made by make-batches")
        q.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
        q.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
        q.add_argument("--warmup", type=int, default=2, help="untimed steps first")
        q.add_argument(
            "--sgemm-n",
            type=int,
            default=2048,
            help="size of the square float32 matmul timed as the roofline (0: skip)",
        )
        if name == "point":
            q.add_argument("--size", type=int, default=100, help="molecules per batch")
            q.add_argument(
                "--copies",
                type=int,
                default=1,
                help="repeat the batch's molecules this many times (largest-batch search)",
            )
            q.add_argument(
                "--path", default="full", help="fusion: pairwise, per_output, per_input, full"
            )
            q.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
            q.add_argument(
                "--kernel",
                default="auto",
                choices=["auto", "torch", "cpp", "triton"],
                help="fused-kernel backend (model.kernel)",
            )
            q.add_argument(
                "--low-memory", action="store_true", help="activation checkpointing per layer"
            )
            q.add_argument(
                "--basis",
                default="otf",
                choices=["otf", "pre"],
                help="bases computed in the forward pass (otf) or precomputed (pre)",
            )
        else:
            q.add_argument("--sizes", type=int, nargs="+", default=[100])
            q.add_argument("--paths", nargs="+", default=["pairwise", "full"])
            q.add_argument(
                "--kernels",
                nargs="+",
                default=["auto"],
                help="fused-kernel backends of the fused paths (auto torch cpp triton)",
            )
            q.add_argument(
                "--repeat",
                type=int,
                default=1,
                help="run the whole list this many times, in turn (A B A B)",
            )
            q.add_argument("--precisions", nargs="+", default=["fp32"])
            q.add_argument("--low-memory", nargs="+", default=["off"], choices=["off", "on"])
            q.add_argument("--basis", nargs="+", default=["otf"], choices=["otf", "pre"])
            q.add_argument("--timeout", type=int, default=1800, help="seconds per point")
            q.add_argument(
                "--out",
                default="results/bench_train_step",
                help="folder for results.json and table.md",
            )
    args = p.parse_args(argv)
    if args.cmd == "layer":
        if args.one:
            print(json.dumps(layer_point(args.size, args.one, args.repeats, args.batches)))
            return
        for _ in range(args.repeat):
            for k in args.kernels:
                cmd = [sys.executable, __file__, "layer", "--batches", args.batches]
                cmd += ["--size", str(args.size), "--repeats", str(args.repeats), "--one", k]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{k}: failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(
                    f"batch {r['size']} ({r['edges']} edges) {k:>8} {r['evaluations']}: "
                    f"fwd+bwd {r['fwd_bwd_s']:.3f} s, {r['gflops']:.1f} GFLOP/s, "
                    f"peak {r['peak_bytes'] / 2**30:.2f} GiB, load {r['load']}",
                    flush=True,
                )
    elif args.cmd == "basis":
        basis_throughput(args.edges, args.repeats, args.dtype)
    elif args.cmd == "make-batches":
        make_batches(args.out, args.raw, args.every)
    elif args.cmd == "point":
        print(json.dumps(point(args)))
    else:
        run(args)


if __name__ == "__main__":
    main()
