"""RFdiffusion's main SE(3) block side by side: its vendored code (DGL) and se3t's drop-in.

    flock /tmp/se3t-bench.lock .venv/bin/python benchmarks/rosettafold/timing.py run \
        --rfdiffusion /path/to/RFdiffusion --vendored-python /work/nvidia-venv/bin/python \
        --sizes 256 600 1000 --reps 2 --out results/bench_rosettafold

A fresh process per point, A B A B (every configuration once per repetition, vendored first):
the main block of RFdiffusion's inference configuration (``SE3_param_full``, the block called
about 40 times per forward pass) on the full residue graph of ``L`` residues (``L (L - 1)``
edges; both sides build it with their own ``make_full_graph`` from the same backbone and pair
features), float32, the threads torch picks. Modes: ``forward`` under ``no_grad`` (how
RFdiffusion samples) and ``train`` (forward, then backward of a scalar of all outputs with
respect to the weights and the node, degree-1 and edge inputs). Per point: one untimed call,
then ``--steps`` timed calls (median); the peak resident set of the process (``ru_maxrss``:
interpreter, torch, DGL where imported, the graph and inputs, the calls) and what the calls add
above the resident set measured just before them. A point whose process exceeds ``--cap-gib``
(RLIMIT_DATA: the allocation fails as a real out-of-memory would) is recorded as not fitting.
Writes ``points.jsonl`` and ``summary.md`` (machine, ISA flags, load, command, date).

On a GPU (``--device cuda``, what ``benchmarks/gpu.sh --rosettafold`` runs): se3t's points only
unless ``--impls`` names the vendored one too (its venv then needs a CUDA build of DGL); times
after ``torch.cuda.synchronize``, and the memory columns are CUDA's peak allocated bytes
(``torch.cuda.max_memory_allocated``) and that peak above the bytes allocated before the first
call. ``--rfdiffusion`` is needed only for vendored points.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from machine_info import load_avg, run_info, summary_head  # noqa: E402

IMPLS = ("vendored", "se3t")
MODES = ("forward", "train")


def _rss_gb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 2**30
    return float("nan")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux


def point(args) -> dict:
    """One configuration in this process."""
    resource.setrlimit(resource.RLIMIT_DATA, (args.cap_gib * 2**30, args.cap_gib * 2**30))
    sys.path.insert(0, str(HERE))
    import make_fixtures as mf
    import torch

    kwargs = mf.RFD_MAIN
    L = args.size
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    xyz = mf.backbone(L).float().to(dev)
    pair = mf.pair_features(L, kwargs["num_edge_features"], torch.float32).to(dev)
    ca, idx = xyz[None, :, 1, :], torch.arange(L, device=dev)[None]
    if args.impl == "vendored":
        if args.rfdiffusion is None:
            sys.exit("timing.py: vendored points need --rfdiffusion (RFdiffusion's checkout)")
        src = mf.load_source("rfdiffusion", Path(args.rfdiffusion))
        model = src["wrapper"](**kwargs)
        G, edge = src["util"].make_full_graph(ca, pair, idx)
    else:
        sys.path.insert(0, str(ROOT))
        from se3t.interop import rosettafold

        model = rosettafold.SE3TransformerWrapper(**kwargs, kernel=args.kernel)
        G, edge = rosettafold.make_full_graph(ca, pair, idx)
    mf.set_weights(model, torch.float32)
    model.to(dev).eval()
    del pair
    node = mf.hash_uniform((L, kwargs["l0_in_features"], 1), mf.SEEDS["node"]).float().to(dev)
    l1 = xyz - xyz[:, 1:2, :]
    edge = edge.detach()
    train = args.mode == "train"
    if train:
        node, l1, edge = (t.clone().requires_grad_() for t in (node, l1, edge))

    def call():
        if not train:
            with torch.no_grad():
                return model(G, node, l1, edge)
        out = model(G, node, l1, edge)
        sum(v.square().mean() for v in out.values()).backward()
        model.zero_grad(set_to_none=True)
        for t in (node, l1, edge):
            t.grad = None
        return out

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**30 if cuda else _rss_gb()
    times, status = [], "ok"
    try:
        for i in range(1 + args.steps):
            t0 = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    except (MemoryError, RuntimeError) as err:
        text = str(err).lower()
        if not isinstance(err, MemoryError) and "alloc" not in text and "out of memory" not in text:
            raise
        status = f"out of memory at {args.cap_gib} GiB" if not cuda else "out of GPU memory"
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else _peak_gb()
    return {
        "impl": args.impl,
        "mode": args.mode,
        "size": L,
        "edges": int(G.num_edges()),
        "status": status,
        "time_s": statistics.median(times) if times else None,
        "times_s": times,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "memory": "cuda max_memory_allocated" if cuda else "process RSS",
        "base_rss_gib": base,
        "peak_rss_gib": peak,
        "added_gib": max(0.0, peak - base),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
    }


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = run_info()
    rows = []
    points = out / "points.jsonl"
    points.write_text("")
    for rep in range(args.reps):
        for size in args.sizes:
            for mode in args.modes:
                for impl in args.impls:
                    py = args.vendored_python if impl == "vendored" else sys.executable
                    cmd = [py, str(Path(__file__).resolve()), "point", "--impl", impl]
                    cmd += ["--mode", mode, "--size", str(size), "--steps", str(args.steps)]
                    cmd += ["--cap-gib", str(args.cap_gib), "--device", args.device]
                    cmd += ["--kernel", args.kernel]
                    if args.rfdiffusion is not None:
                        cmd += ["--rfdiffusion", str(args.rfdiffusion)]
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    lines = proc.stdout.strip().splitlines()
                    if proc.returncode == 0 and lines:
                        row = json.loads(lines[-1])
                    elif proc.returncode < 0 or "memory" in proc.stderr.lower():
                        # killed (the kernel's OOM killer) or an allocation failure outside
                        # the measured calls
                        row = {
                            "impl": impl,
                            "mode": mode,
                            "size": size,
                            "time_s": None,
                            "status": f"did not fit ({proc.returncode}; cap {args.cap_gib} GiB)",
                        }
                    else:
                        sys.exit(f"point {impl} {mode} {size} failed:\n{proc.stderr[-3000:]}")
                    row["rep"], row["load"] = rep, load_avg()
                    rows.append(row)
                    with points.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    t = f"{row['time_s']:.2f} s" if row.get("time_s") else row["status"]
                    rss = row.get("peak_rss_gib")
                    print(
                        f"rep {rep} L {size} {mode} {impl}: {t}, peak "
                        f"{rss if rss is None else f'{rss:.2f} GiB'} (load {row['load']})",
                        flush=True,
                    )
    info["load_after"] = load_avg()
    (out / "summary.md").write_text(summary(rows, info))
    print((out / "summary.md").read_text())


def _cell(rs: list[dict], key: str, fmt: str) -> str:
    vals = [r.get(key) for r in rs]
    return ", ".join(fmt.format(v) if v is not None else "-" for v in vals)


def summary(rows: list[dict], info: dict) -> str:
    memory = next((r["memory"] for r in rows if "memory" in r), "process RSS")
    device = next((r["device"] for r in rows if "device" in r), "cpu")
    lines = [
        *summary_head(info),
        f"device: {device}; memory columns: {memory}",
        "",
        "| L | edges | mode | impl | time s (per rep) | se3t speed-up | peak GiB | added "
        "GiB | se3t / vendored added |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in sorted({r["size"] for r in rows}):
        for mode in MODES:
            at = [r for r in rows if r["size"] == size and r["mode"] == mode]
            if not at:
                continue
            by = {i: [r for r in at if r["impl"] == i] for i in IMPLS}
            ok = {i: [r for r in rs if r.get("time_s") is not None] for i, rs in by.items()}
            med = {
                i: statistics.median(r["time_s"] for r in rs) if rs else None
                for i, rs in ok.items()
            }  # an impl not run: None
            add = {i: max((r["added_gib"] for r in rs), default=None) for i, rs in ok.items()}
            for impl in IMPLS:
                rs = by[impl]
                if not rs:
                    continue
                speed = mem = ""
                if impl == "se3t" and med["vendored"] and med["se3t"]:
                    speed = f"{med['vendored'] / med['se3t']:.2f}x"
                if impl == "se3t" and add["vendored"] and add["se3t"] is not None:
                    mem = f"{add['se3t'] / add['vendored']:.2f}x"
                edges = next((r["edges"] for r in rs if "edges" in r), "")
                times = _cell(rs, "time_s", "{:.2f}")
                if not ok[impl]:
                    times = rs[0]["status"]
                cells = [str(size), str(edges), mode, impl, times, speed]
                cells += [_cell(rs, "peak_rss_gib", "{:.2f}"), _cell(rs, "added_gib", "{:.2f}")]
                lines.append("| " + " | ".join([*cells, mem]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--rfdiffusion", type=Path, default=None, help="RFdiffusion's checkout (vendored points)"
    )
    common.add_argument("--device", default="cpu", help="cpu or cuda")
    common.add_argument("--steps", type=int, default=2, help="timed calls per point (median)")
    common.add_argument("--cap-gib", type=int, default=20, help="memory cap per point (GiB)")
    common.add_argument("--kernel", default="auto", help="se3t's kernel backend (se3t points)")
    r = sub.add_parser("run", parents=[common], help="the side-by-side table")
    r.add_argument("--vendored-python", help="python of a venv with DGL (vendored points)")
    r.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    r.add_argument("--sizes", type=int, nargs="+", default=[256, 600, 1000])
    r.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    r.add_argument("--reps", type=int, default=2, help="A B A B repetitions")
    r.add_argument("--out", required=True, help="output folder")
    pt = sub.add_parser("point", parents=[common], help="one point in this process")
    pt.add_argument("--impl", choices=IMPLS, required=True)
    pt.add_argument("--mode", choices=MODES, required=True)
    pt.add_argument("--size", type=int, required=True)
    args = p.parse_args()
    if (
        args.cmd == "run"
        and "vendored" in args.impls
        and not (args.vendored_python and args.rfdiffusion)
    ):
        p.error("vendored points need --vendored-python and --rfdiffusion (or --impls se3t)")
    if args.cmd == "run":
        run(args)
    else:
        print(json.dumps(point(args)))


if __name__ == "__main__":
    main()
