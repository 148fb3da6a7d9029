"""``se3t launch --config CONFIG [key=value ...]``: submit training through submitit."""

from __future__ import annotations

import logging
import sys

from se3t.commands.common import add_command, add_config_arguments, load_config


def register(subparsers) -> None:
    p = add_command(subparsers, "launch", _HELP, _DESCRIPTION, raw=True)
    add_config_arguments(
        p,
        example="launch.cluster=slurm launch.partition=gpu launch.gpus_per_node=4 "
        "launch.time=240 train.epochs=100",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="print the job id and return right after submission (or right "
        "after attaching to the run folder's job that is still running)",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.train.launch import launch

    _show_launcher_messages()
    cfg = load_config(args)
    return launch(cfg, wait=not args.no_wait)


def _show_launcher_messages() -> None:
    """The launcher's log records (``se3t.train.launch``: submitted, attaching, done, the log
    tail of a failed rank) to stderr, as the command's own messages."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("se3t launch: %(message)s"))
    logger = logging.getLogger("se3t.train.launch")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


# the command's --help: a line in `se3t --help`, a paragraph in `se3t launch --help`
_HELP = "submit training to SLURM (or run it locally) through submitit and wait for it"
_DESCRIPTION = (
    "Check the inputs, then submit `se3t train` as a checkpointable submitit job: "
    "launch.cluster=slurm|local|debug, launch.nodes, launch.gpus_per_node (one task "
    "per GPU; 0 for CPU training with launch.tasks_per_node processes), "
    "launch.cpus_per_task, launch.mem_gb, launch.partition, launch.account, "
    "launch.qos, launch.time (minutes), launch.constraint, launch.extra (a mapping of "
    "extra sbatch options), launch.max_num_timeout, launch.folder (submitit logs; "
    "default RUN_DIR/submitit). Streams rank 0's log while waiting; exits 0 when the "
    "job completes, 1 with the tail of its log when it fails. On preemption or time "
    "limit (SIGUSR2) the job checkpoints and requeues itself, and resumes from "
    "RUN_DIR/last.pt. --config may be a run folder (its config.yaml).\n\n"
    "One job per run folder: the submitted job is recorded in RUN_DIR/launch.json; "
    "launching again while that SLURM job is still pending or running (say after the "
    "waiting launcher or Snakemake was killed) attaches to it (streams its log, waits, "
    "returns its outcome) instead of submitting a second job; once it has ended, a new "
    "job is submitted and resumes from RUN_DIR/last.pt. The intent to submit is "
    "recorded before sbatch runs and every job carries a tag of its run folder in its "
    "SLURM comment, so a launcher killed between sbatch and the record still leaves a "
    "job the next launch finds (squeue) and attaches to."
)
