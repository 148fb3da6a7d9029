"""``se3t train --config CONFIG [key=value ...]``: train one model (docs/training.md)."""

from __future__ import annotations

import json
import sys

from se3t.commands.common import add_command, add_config_arguments, load_config
from se3t.io import write_text


def register(subparsers) -> None:
    p = add_command(subparsers, "train", _HELP, _DESCRIPTION, raw=True)
    add_config_arguments(
        p, example="train.epochs=10 train.lr=1e-3 run.dir=results/runs/a train.precision=bf16"
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
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.train import train
    from se3t.train.guards import strict_record

    cfg = load_config(args)
    summary = train(cfg, progress=not args.no_progress)
    text = json.dumps(strict_record(summary), indent=1, default=float, allow_nan=False)
    if args.summary:
        write_text(args.summary, text + "\n")  # atomic: a workflow rule's output
    print(text)
    if summary["status"] != "completed":
        print(
            f"se3t train: stopped by signal {summary['signal']}; resume with "
            f"se3t train --config {summary['run_dir']}",
            file=sys.stderr,
        )
        return 3
    return 0


# the command's --help: a line in `se3t --help`, a paragraph in `se3t train --help`
_HELP = "train a model in this process (one DDP rank under torchrun/srun)"
_DESCRIPTION = (
    "Train the SE(3)-Transformer of CONFIG on the dataset store data.path. Writes the "
    "run folder run.dir: config.yaml (resolved), metrics.jsonl (kind=step|epoch: loss, "
    "lr, mol_per_s, peak_mem_bytes, train_mae, val_mae per target in target units), "
    "train.log, last.pt and best.pt (atomic checkpoints). When run.dir already holds "
    "last.pt the run continues from it (train.resume=false starts over). Under torchrun "
    "or srun with several tasks each process is one DDP rank (gloo on CPU, NCCL on "
    "GPUs). SIGUSR2/SIGTERM write a checkpoint at the next step and exit with code 3. "
    "Bases come from the basis store basis.manifest when basis.use is store or auto "
    "(and the manifest exists), else they are computed in the forward pass."
)
