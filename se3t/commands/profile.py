"""``se3t profile CONFIG [--batch-sizes ...] [--modes ...] [--paths ...] --out DIR``."""

from __future__ import annotations

import argparse


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile",
        help="peak training memory and throughput per batch size, mode and path",
        description=(
            "Run a few training steps for each (mode, path, batch size), each in a fresh "
            "process, and record peak memory (CUDA: max_memory_allocated; CPU: peak RSS of "
            "that process) and molecules/s. An out-of-memory point is recorded and the sweep "
            "goes on (larger batches of that mode and path are skipped). Writes memory.json, "
            "memory.png and throughput.png to --out, and prints the largest batch that fits "
            "per mode."
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="se3t config YAML (model, data, train)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.num_layers=2",
    )
    p.add_argument(
        "--batch-sizes",
        type=_csv(int),
        default=None,
        help="comma-separated batch sizes (default: eval.profile_batch_sizes, "
        "10,50,100,240,500,1000)",
    )
    p.add_argument(
        "--modes",
        type=_csv(str),
        default=None,
        help="comma-separated modes: fp32, tf32, amp, fp16, bf16, each optionally "
        "+lowmem (default: eval.profile_modes, fp32,amp,amp+lowmem); amp is fp16 "
        "with loss scaling on CUDA, bf16 autocast on the CPU",
    )
    p.add_argument(
        "--paths",
        type=_csv(str),
        default=None,
        help="comma-separated convolution paths: pairwise (the unfused reference), "
        "fused (default: eval.profile_paths, pairwise,fused)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per point (default: eval.profile_steps)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="untimed steps before timing (default: eval.profile_warmup_steps, 1)",
    )
    p.add_argument(
        "--basis",
        choices=("step", "precomputed"),
        default=None,
        help="step: bases computed inside every training step (NVIDIA's benchmark); "
        "precomputed: computed once before timing, as if read from the basis store "
        "(default: eval.profile_basis, step)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="auto, cpu, cuda or cuda:N (default: train.device of the config)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one point may take before it is recorded as timeout "
        "(default: eval.profile_timeout, 600)",
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        metavar="GIB",
        help="cap each point's memory (GiB): CUDA per-process fraction, CPU "
        "RLIMIT_DATA; points beyond it are recorded as out of memory "
        "(default: eval.profile_memory_limit_gb, none)",
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from se3t.config import load
    from se3t.eval.profiling import profile

    cfg = load(args.config, args.overrides)
    doc = profile(
        cfg,
        args.out,
        batch_sizes=args.batch_sizes,
        modes=args.modes,
        paths=args.paths,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        device=args.device,
        basis=args.basis,
        timeout=args.timeout,
        memory_limit=int(args.memory_limit * 2**30) if args.memory_limit else None,
        progress=not args.quiet,
    )
    print(f"profile on {doc['environment']['device_name']} -> {args.out}/memory.json")
    for key, b in doc["largest_batch"].items():
        print(f"  largest batch that fits, {key}: {b if b is not None else 'none'}")
    return 0
