"""se3t vs NVIDIA's SE3Transformer, side by side: training steps per second and peak memory.

    flock /tmp/se3t-bench.lock .venv/bin/python benchmarks/nvidia/timing.py run \
        --nvidia /work/nvidia/DGLPyTorch/DrugDiscovery/SE3Transformer \
        --nvidia-python /work/nvidia-venv/bin/python --sizes 32 100 --reps 2 \
        --out results/bench_nvidia

Every point is a fresh process (its own peak RSS), and the points alternate A B A B: each
repetition runs every configuration once before the next repetition starts, so a change of
machine load hits all of them alike. A point is a training step as NVIDIA's training.py takes
it (forward, L1 loss, backward, AdamW), fp32, the paper's hyperparameters (7 layers, degrees
0..3, 32 channels, 8 heads, max pooling, norm and layer norm), on the same batch of real QM9
molecules (``benchmarks/batches.pt``, every 109th molecule: ``benchmarks/train_step.py
make-batches``). Configurations (``--impls``):

- ``nvidia``: NVIDIA's code, bases computed in the forward pass (its default);
- ``nvidia-pre``: NVIDIA's code, pairwise bases precomputed (its ``--precompute_bases``; the
  fused bases are still assembled in the forward pass, as in NVIDIA's pipeline);
- ``se3t-nvidia``: se3t computing NVIDIA's function on this CPU (``se3t.interop.nvidia``,
  fuse level PARTIAL as NVIDIA picks without tensor cores);
- ``se3t``: se3t's model as configured by default (``se3t.models.build(ModelConfig())``).

``--kernel-python`` lets another venv run the se3t points (e.g. a kernel build); the worker
imports only torch, se3t (se3t points) or NVIDIA's code and DGL (NVIDIA points).
``--baseline TREE`` (a checkout of another commit, e.g. ``git worktree add /tmp/base HEAD~1``)
adds ``<impl>@baseline`` for every se3t configuration, run by that tree's own copy of this
script right before the same configuration of this tree: "this vs last commit" in the same
window, with the per-repetition ratios in the summary.
Writes ``points.jsonl`` and ``summary.md`` (with lscpu model/flags, load, date, command).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from machine_info import load_avg, run_info, summary_head  # noqa: E402

IMPLS = ("nvidia", "nvidia-pre", "se3t-nvidia", "se3t")
SCRIPT = Path("benchmarks") / "nvidia" / "timing.py"
sys.path.insert(0, str(HERE))
import make_fixtures  # noqa: E402  (NVIDIA's modules and model arguments)

# NVIDIA's QM9 model at the fuse level NVIDIA picks without tensor cores (PARTIAL)
PAPER = {**make_fixtures.PAPER, "tensor_cores": False, "low_memory": False}


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux -> GB


def point(args) -> dict:
    """One configuration in this process: ``warmup`` then ``steps`` timed training steps."""
    import torch

    torch.manual_seed(0)
    d = torch.load(args.batches, weights_only=True)[args.size]
    if args.impl.startswith("nvidia"):
        mf = make_fixtures
        nv = mf.nvidia(Path(args.nvidia))
        from se3_transformer.model.basis import get_basis

        model = mf.build(nv, "pooled", PAPER, torch.float32, seed=0)
        b = dict(d, num_graphs=args.size)
        g, _, node, edge = mf.dgl_graph(nv, b, torch.float32)
        # plain inputs, as from NVIDIA's data loader (no gradient through positions)
        g.edata["rel_pos"] = g.edata["rel_pos"].detach()
        node, edge = {"0": node["0"].detach()}, {"0": edge["0"].detach()}
        pre = (
            get_basis(g.edata["rel_pos"].detach(), max_degree=3)
            if args.impl == "nvidia-pre"
            else None
        )

        def forward():
            # NVIDIA's forward adds the fused bases to the dict it gets: give it a fresh one
            return model(g, node, edge, dict(pre) if pre is not None else None)
    else:
        sys.path.insert(0, str(ROOT))
        from se3t.graph import Batch, Graph

        graph = Graph(d["src"], d["dst"], d["node_graph"], int(d["num_nodes"]), args.size)
        batch = Batch(graph, d["pos"], d["node_feats"], d["edge_feats"], y=d["y"])
        if args.impl == "se3t-nvidia":
            from se3t.interop.nvidia import nvidia_model

            model = nvidia_model(**PAPER)
        else:
            from se3t.config import ModelConfig
            from se3t.models import build

            model = build(ModelConfig())

        def forward():
            return model(batch).reshape(-1)

    y = d["y"][:, 0]
    opt = torch.optim.AdamW(model.parameters(), lr=0.002, betas=(0.9, 0.999), weight_decay=0.1)
    loss_fn = torch.nn.L1Loss()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn(forward(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {
        "impl": args.impl,
        "size": args.size,
        "step_s": step,
        "mol_per_s": args.size / step,
        "peak_rss_gb": _peak_rss_gb(),
        "params": sum(p.numel() for p in model.parameters()),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
    }


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = run_info()
    rows = []
    points = out / "points.jsonl"
    points.write_text("")
    configs = []
    for impl in args.impls:
        if args.baseline and impl.startswith("se3t"):
            configs.append((f"{impl}@baseline", impl, Path(args.baseline) / SCRIPT))
        configs.append((impl, impl, Path(__file__).resolve()))
    for rep in range(args.reps):
        for size in args.sizes:
            for name, impl, script in configs:
                py = args.nvidia_python if impl.startswith("nvidia") else args.kernel_python
                cmd = [
                    py,
                    str(script),
                    "point",
                    "--impl",
                    impl,
                    "--size",
                    str(size),
                    "--batches",
                    str(args.batches),
                    "--nvidia",
                    str(args.nvidia),
                    "--warmup",
                    str(args.warmup),
                    "--steps",
                    str(args.steps),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"point {name} {size} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["impl"], row["rep"] = name, rep
                row["load"] = load_avg()
                rows.append(row)
                with points.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"rep {rep} batch {size} {name}: {row['mol_per_s']:.2f} mol/s, "
                    f"peak RSS {row['peak_rss_gb']:.2f} GB (load {row['load']})",
                    flush=True,
                )
    info["load_after"] = load_avg()
    (out / "summary.md").write_text(summary(rows, info))
    print((out / "summary.md").read_text())


def summary(rows: list[dict], info: dict) -> str:
    lines = [
        *summary_head(info),
        "",
        "| batch | configuration | params | mol/s (per rep) | mol/s | vs nvidia | peak RSS GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in rows if r["size"] == size]
        base = (
            statistics.median(r["mol_per_s"] for r in at if r["impl"] == "nvidia")
            if any(r["impl"] == "nvidia" for r in at)
            else None
        )
        for impl in [x for i in IMPLS for x in (f"{i}@baseline", i)]:
            rs = [r for r in at if r["impl"] == impl]
            if not rs:
                continue
            mps = statistics.median(r["mol_per_s"] for r in rs)
            rss = max(r["peak_rss_gb"] for r in rs)
            per = ", ".join(f"{r['mol_per_s']:.2f}" for r in rs)
            ratio = f"{mps / base:.2f}x" if base else ""
            cells = [str(size), impl, f"{rs[0]['params']:,}", per, f"{mps:.2f}", ratio]
            lines.append("| " + " | ".join([*cells, f"{rss:.2f}"]) + " |")
    notes = []
    for size in sorted({r["size"] for r in rows}):
        for impl in IMPLS:
            base = {
                r["rep"]: r for r in rows if r["size"] == size and r["impl"] == impl + "@baseline"
            }
            this = [r for r in rows if r["size"] == size and r["impl"] == impl and r["rep"] in base]
            if this:
                per = ", ".join(
                    f"{r['mol_per_s'] / base[r['rep']]['mol_per_s']:.2f}x" for r in this
                )
                notes.append(f"- batch {size}, {impl} vs {impl}@baseline per repetition: {per}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nvidia", required=True, help="NVIDIA's SE3Transformer folder")
    common.add_argument(
        "--batches", default=str(ROOT / "benchmarks" / "batches.pt"), help="benchmarks/batches.pt"
    )
    common.add_argument("--warmup", type=int, default=1, help="untimed steps per point")
    common.add_argument("--steps", type=int, default=3, help="timed steps per point (median)")
    r = sub.add_parser("run", parents=[common], help="the side-by-side table")
    r.add_argument("--nvidia-python", required=True, help="python of NVIDIA's venv")
    r.add_argument(
        "--kernel-python", default=sys.executable, help="python for the se3t points (default: this)"
    )
    r.add_argument("--sizes", type=int, nargs="+", default=[32, 100])
    r.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    r.add_argument("--reps", type=int, default=2, help="A B A B repetitions")
    r.add_argument(
        "--baseline",
        help="another checkout of se3t whose se3t points run beside this tree's (<impl>@baseline)",
    )
    r.add_argument("--out", required=True, help="output folder")
    pt = sub.add_parser("point", parents=[common], help="one point in this process")
    pt.add_argument("--impl", choices=IMPLS, required=True)
    pt.add_argument("--size", type=int, required=True)
    args = p.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        print(json.dumps(point(args)))


if __name__ == "__main__":
    main()
