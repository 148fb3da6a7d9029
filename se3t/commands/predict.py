"""``se3t predict CHECKPOINT FILE... [--out CSV]``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help=_HELP, description=_DESCRIPTION)
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help=(
            "a checkpoint file or a run folder (its best.pt, else last.pt); with "
            "--nvidia-checkpoint, the first molecule file"
        ),
    )
    p.add_argument(
        "files", nargs="*", metavar="FILE", help=".xyz, .extxyz, .sdf/.mol or .csv (SMILES) files"
    )
    p.add_argument(
        "--nvidia-checkpoint",
        metavar="PATH",
        default=None,
        help=(
            "predict with NVIDIA's DeepLearningExamples SE3Transformer training checkpoint "
            "(read with weights_only=True; needs a sidecar YAML: docs/model.md)"
        ),
    )
    p.add_argument(
        "--nvidia-config",
        metavar="YAML",
        default=None,
        help="the NVIDIA checkpoint's sidecar (default: the checkpoint's name with .yaml)",
    )
    p.add_argument("--out", metavar="CSV", default=None, help="CSV file (default: stdout)")
    p.add_argument("--batch-size", type=int, default=64, help="molecules per batch (default: 64)")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available; the default), cpu, cuda or cuda:N",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.commands.evaluate import nvidia_source
    from se3t.errors import InputError
    from se3t.eval.prediction import predict, predictions_csv

    checkpoint, nvidia = nvidia_source(args, args.checkpoint, "CHECKPOINT")
    files = list(args.files) if nvidia is None else [args.checkpoint, *args.files]
    if not files:
        raise InputError("give at least one XYZ or SDF file")
    frame = predict(
        checkpoint,
        files,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.out is not None,
        nvidia=nvidia,
    )
    text = predictions_csv(frame, args.out)
    if args.out is None:
        sys.stdout.write(text)
    else:
        n = frame[["file", "id"]].drop_duplicates().shape[0]
        print(f"{n} molecule(s) from {len(files)} file(s) -> {args.out}", file=sys.stderr)
    return 0


# the command's --help: a line in `se3t --help`, a paragraph in `se3t predict --help`
_HELP = "predict the trained targets for new molecules (XYZ, extended XYZ, SDF, SMILES)"
_DESCRIPTION = (
    "Predict the targets a model was trained on for new molecules: XYZ (QM9's format "
    "or plain), extended XYZ (any number of frames), SDF (any number of records) or a "
    "CSV of SMILES (conformers made as in the build). Each molecule gets the graph and "
    "element encoding the model was trained with; an element it never saw is an error "
    "naming the molecule. Writes CSV (file, id, target, unit, prediction, "
    "prediction_mev) to --out or to stdout."
)
