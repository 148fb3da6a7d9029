"""``se3t predict CHECKPOINT FILE... [--out CSV]``."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the trained targets for new molecules (XYZ or SDF files)",
        description=(
            "Predict the targets a model was trained on for molecules given as XYZ (QM9 or "
            "plain) or SDF files; bonds are perceived as in the dataset build. Writes CSV "
            "(file, target, unit, prediction, prediction_mev) to --out or to stdout."
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a checkpoint file or a run folder (its best.pt, else last.pt)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="XYZ or SDF files, one molecule each")
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
    from se3t.eval.prediction import predict, predictions_csv

    frame = predict(
        args.checkpoint,
        args.files,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.out is not None,
    )
    text = predictions_csv(frame, args.out)
    if args.out is None:
        sys.stdout.write(text)
    else:
        print(f"{len(args.files)} molecule(s) -> {args.out}", file=sys.stderr)
    return 0
