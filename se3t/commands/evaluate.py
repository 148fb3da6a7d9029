"""``se3t evaluate RUN_OR_CHECKPOINT --split test|val [--out DIR]``."""

from __future__ import annotations

import argparse

from se3t.choices import Split

# the arguments of `se3t evaluate`, declared once (register adds them in this order)
_ARGUMENTS = (
    (
        "run",
        dict(
            metavar="RUN_OR_CHECKPOINT",
            nargs="?",
            help="a run folder (its best.pt, else last.pt, is used) or a checkpoint file",
        ),
    ),
    (
        "--nvidia-checkpoint",
        dict(
            metavar="PATH",
            default=None,
            help="evaluate NVIDIA's DeepLearningExamples SE3Transformer training checkpoint "
            "instead (read with weights_only=True; needs --dataset and a sidecar YAML: "
            "docs/model.md)",
        ),
    ),
    (
        "--nvidia-config",
        dict(
            metavar="YAML",
            default=None,
            help="the NVIDIA checkpoint's sidecar: NVIDIA's model arguments, the target and its "
            "standardization (default: the checkpoint's name with .yaml)",
        ),
    ),
    (
        "--split",
        dict(
            choices=[s.value for s in Split],
            default="test",
            help="which split of the dataset to evaluate on, as training split it (default: test)",
        ),
    ),
    (
        "--out",
        dict(
            metavar="DIR",
            default=None,
            help="output folder (default: the run folder, i.e. the checkpoint's folder)",
        ),
    ),
    (
        "--dataset",
        dict(
            metavar="PATH",
            default=None,
            help="dataset store to use instead of the one in the checkpoint's config",
        ),
    ),
    (
        "--batch-size",
        dict(
            type=int,
            default=None,
            help="molecules per batch (default: eval.batch_size of the run's config)",
        ),
    ),
    (
        "--device",
        dict(
            default="auto",
            help="auto (CUDA when available; the default), cpu, cuda or cuda:N",
        ),
    ),
    (
        "--format",
        dict(
            choices=("csv", "parquet"),
            default="csv",
            help="predictions file format: csv (default) or parquet (needs pyarrow)",
        ),
    ),
    (
        "--allow-other-dataset",
        dict(
            action="store_true",
            help="evaluate even when --dataset (or the split drawn from it) is not the one the "
            "checkpoint was trained on; the metrics then record that (dataset_check)",
        ),
    ),
    (
        "--quiet",
        dict(action="store_true", help="no progress bar"),
    ),
)


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help=_HELP, description=_DESCRIPTION)
    for flag, options in _ARGUMENTS:
        p.add_argument(flag, **options)
    p.set_defaults(func=run)


def nvidia_source(args: argparse.Namespace, positional: str | None, name: str):
    """``(checkpoint, nvidia)`` for the evaluation functions from the CLI arguments."""
    from se3t.errors import InputError

    if args.nvidia_checkpoint is None:
        if args.nvidia_config is not None:
            raise InputError("--nvidia-config needs --nvidia-checkpoint")
        if positional is None:
            raise InputError(f"give {name} or --nvidia-checkpoint PATH")
        return positional, None
    if positional is not None and name == "RUN_OR_CHECKPOINT":
        raise InputError(f"give either {name} or --nvidia-checkpoint, not both")
    return args.nvidia_checkpoint, args.nvidia_config or True


def run(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.eval.metrics import evaluate

    checkpoint, nvidia = nvidia_source(args, args.run, "RUN_OR_CHECKPOINT")
    doc = evaluate(
        checkpoint,
        args.split,
        args.out,
        dataset=args.dataset,
        batch_size=args.batch_size,
        device=args.device,
        predictions_format=args.format,
        progress=not args.quiet,
        nvidia=nvidia,
        allow_other_dataset=args.allow_other_dataset,
    )
    print(f"{doc['split']}: {doc['count']} molecules ({doc['checkpoint']})")
    if doc["dataset_check"]["matches_training"] is False:
        print(f"  NOT the training dataset: {doc['dataset_check']['note']}")
    for target, m in doc["metrics"].items():
        mev = f" ({m['mae_mev']:.2f} meV)" if "mae_mev" in m else ""
        print(f"  {target}: MAE {m['mae']:.5g} {m['unit']}{mev}, RMSE {m['rmse']:.5g} {m['unit']}")
    return 0


# the command's --help: a line in `se3t --help`, a paragraph in `se3t evaluate --help`
_HELP = "MAE/RMSE per target of a trained model on a split, with predictions and plots"
_DESCRIPTION = (
    "Evaluate a trained model on the test (or validation) split of the dataset it was "
    "trained on. Writes metrics.json (MAE and RMSE per target in the target's unit, "
    "energies also in meV, molecule count), predictions.csv (mol_id, row, target, unit, "
    "reference, prediction, error), parity.png and errors.png."
)
