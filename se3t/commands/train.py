"""``se3t train CONFIG [key=value ...]``: train one model (docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from se3t.io import write_text


def resolve_config(target: str, overrides: list[str]):
    """CONFIG is a YAML file, or a run folder holding ``config.yaml`` (resume it: ``run.dir``
    is set to that folder)."""
    from se3t.config import ConfigError, load

    path = Path(target)
    if path.is_dir():
        cfg_file = path / "config.yaml"
        if not cfg_file.is_file():
            raise ConfigError(f"run folder {target!r} holds no config.yaml")
        return load(cfg_file, [*overrides, f"run.dir={path}"])
    return load(path, overrides)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model in this process (one DDP rank under torchrun/srun)",
        description=(
            "Train the SE(3)-Transformer of CONFIG on the dataset store data.path. Writes the "
            "run folder run.dir: config.yaml (resolved), metrics.jsonl (kind=step|epoch: loss, "
            "lr, mol_per_s, peak_mem_bytes, train_mae, val_mae per target in target units), "
            "train.log, last.pt and best.pt (atomic checkpoints). When run.dir already holds "
            "last.pt the run continues from it (train.resume=false starts over). Under torchrun "
            "or srun with several tasks each process is one DDP rank (gloo on CPU, NCCL on "
            "GPUs). SIGUSR2/SIGTERM write a checkpoint at the next step and exit with code 3. "
            "Bases come from the basis store basis.manifest when basis.use is store or auto "
            "(and the manifest exists), else they are computed in the forward pass."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "config", metavar="CONFIG", help="config YAML, or a run folder to resume (its config.yaml)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=10 train.lr=1e-3 "
        "run.dir=results/runs/a train.precision=bf16",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--summary",
        metavar="FILE",
        default=None,
        help="also write the final summary (JSON) to FILE",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from se3t.train import train  # deferred, as strict_record: se3t.train imports torch
    from se3t.train.guards import strict_record

    cfg = resolve_config(args.config, args.overrides)
    summary = train(cfg, progress=not args.no_progress)
    text = json.dumps(strict_record(summary), indent=1, default=float, allow_nan=False)
    if args.summary:
        write_text(args.summary, text + "\n")  # atomic: a workflow rule's output
    print(text)
    if summary["status"] != "completed":
        print(
            f"se3t train: stopped by signal {summary['signal']}; resume with "
            f"se3t train {summary['run_dir']}",
            file=sys.stderr,
        )
        return 3
    return 0
