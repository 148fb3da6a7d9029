"""``se3t profile --config CONFIG [key=value ...] --out DIR``: memory and speed per batch size."""

from __future__ import annotations

import argparse

from se3t.commands.common import Alias, add_config_arguments, load_config


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
    add_config_arguments(
        p,
        example="model.num_layers=2 eval.profile_batch_sizes=[10,100]",
        aliases=(
            Alias(
                "--batch-sizes",
                "eval.profile_batch_sizes",
                type=_csv(int),
                metavar="B,B,...",
                help="batch sizes",
            ),
            Alias(
                "--modes",
                "eval.profile_modes",
                type=_csv(str),
                metavar="MODE,...",
                help="fp32, tf32, amp, fp16, bf16, each optionally +lowmem; amp is fp16 with "
                "loss scaling on CUDA, bf16 autocast on the CPU",
            ),
            Alias(
                "--paths",
                "eval.profile_paths",
                type=_csv(str),
                metavar="PATH,...",
                help="pairwise (the unfused reference), fused",
            ),
            Alias("--steps", "eval.profile_steps", type=int, help="timed steps per point"),
            Alias(
                "--warmup-steps", "eval.profile_warmup_steps", type=int, help="untimed steps first"
            ),
            Alias(
                "--basis",
                "eval.profile_basis",
                help="step: bases computed in every training step (NVIDIA's benchmark); "
                "precomputed: computed once before timing, as if read from the basis store",
            ),
            Alias("--device", "train.device", help="auto, cpu or cuda"),
            Alias(
                "--timeout",
                "eval.profile_timeout",
                type=float,
                help="seconds a point may take before it is recorded as timeout",
            ),
            Alias(
                "--memory-limit",
                "eval.profile_memory_limit_gb",
                type=float,
                metavar="GIB",
                help="cap each point's memory: CUDA per-process fraction, CPU RLIMIT_DATA; "
                "points beyond it are recorded as out of memory",
            ),
        ),
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from se3t.eval.profiling import profile

    doc = profile(load_config(args), args.out, progress=not args.quiet)
    print(f"profile on {doc['environment']['device_name']} -> {args.out}/memory.json")
    for key, b in doc["largest_batch"].items():
        print(f"  largest batch that fits, {key}: {b if b is not None else 'none'}")
    return 0
