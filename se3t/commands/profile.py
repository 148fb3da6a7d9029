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


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError("give true or false")
    return text.lower() == "true"


# the config keys of the sweep, as flags
_ALIASES = (
    Alias(
        "--batch-sizes",
        "eval.profile_batch_sizes",
        type=_csv(int),
        metavar="B,B,...",
        help="batch sizes",
    ),
    Alias(
        "--precision",
        "eval.profile_precision",
        type=_csv(str),
        metavar="P,...",
        help="train.precision values: fp32, tf32, fp16 (autocast with loss scaling, "
        "NVIDIA's AMP), bf16",
    ),
    Alias(
        "--fusion",
        "eval.profile_fusion",
        type=_csv(str),
        metavar="F,...",
        help="model.fusion values: pairwise (the unfused reference), per_output, per_input, full",
    ),
    Alias(
        "--low-memory",
        "eval.profile_low_memory",
        type=_csv(_bool),
        metavar="B,...",
        help="model.low_memory values: false, true",
    ),
    Alias("--steps", "eval.profile_steps", type=int, help="timed steps per point"),
    Alias("--warmup-steps", "eval.profile_warmup_steps", type=int, help="untimed steps first"),
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
)


def register(subparsers) -> None:
    p = subparsers.add_parser("profile", help=_HELP, description=_DESCRIPTION)
    add_config_arguments(
        p,
        example="model.num_layers=2 eval.profile_batch_sizes=[10,100]",
        aliases=_ALIASES,
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.eval.profiling import profile

    doc = profile(load_config(args), args.out, progress=not args.quiet)
    print(f"profile on {doc['environment']['device_name']} -> {args.out}/memory.json")
    for key, b in doc["largest_batch"].items():
        print(f"  largest batch that fits, {key}: {b if b is not None else 'none'}")
    return 0


# the command's --help: a line in `se3t --help`, a paragraph in `se3t profile --help`
_HELP = "training memory and throughput per batch size, precision and fusion"
_DESCRIPTION = (
    "Run a few training steps for every point of the grid eval.profile_precision x "
    "eval.profile_fusion x eval.profile_low_memory x eval.profile_batch_sizes, each in "
    "a fresh process (the step harness of se3t.eval.point, which benchmarks/ uses too), "
    "and record the memory a step adds above the process's baseline (CUDA: "
    "max_memory_allocated; CPU: peak RSS of that process) and molecules/s. An "
    "out-of-memory point is recorded and the sweep goes on (larger batches of that "
    "series are skipped). Writes memory.json, memory.png and throughput.png to --out, "
    "and prints the largest batch that fits per series."
)
