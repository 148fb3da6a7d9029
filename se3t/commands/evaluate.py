"""``se3t evaluate RUN_OR_CHECKPOINT --split test|val [--out DIR]``."""

from __future__ import annotations

import argparse

from se3t.choices import Split


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="MAE/RMSE per target of a trained model on a split, with predictions and plots",
        description=(
            "Evaluate a trained model on the test (or validation) split of the dataset it was "
            "trained on. Writes metrics.json (MAE and RMSE per target in the target's unit, "
            "energies also in meV, molecule count), predictions.csv (mol_id, row, target, unit, "
            "reference, prediction, error), parity.png and errors.png."
        ),
    )
    p.add_argument(
        "run",
        metavar="RUN_OR_CHECKPOINT",
        help="a run folder (its best.pt, else last.pt, is used) or a checkpoint file",
    )
    p.add_argument(
        "--split",
        choices=[s.value for s in Split],
        default="test",
        help="which split of the dataset to evaluate on, as training split it (default: test)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="output folder (default: the run folder, i.e. the checkpoint's folder)",
    )
    p.add_argument(
        "--dataset",
        metavar="PATH",
        default=None,
        help="dataset store to use instead of the one in the checkpoint's config",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="molecules per batch (default: eval.batch_size of the run's config)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when available; the default), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default="csv",
        help="predictions file format: csv (default) or parquet (needs pyarrow)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.eval.metrics import evaluate

    doc = evaluate(
        args.run,
        args.split,
        args.out,
        dataset=args.dataset,
        batch_size=args.batch_size,
        device=args.device,
        predictions_format=args.format,
        progress=not args.quiet,
    )
    print(f"{doc['split']}: {doc['count']} molecules ({doc['checkpoint']})")
    for target, m in doc["metrics"].items():
        mev = f" ({m['mae_mev']:.2f} meV)" if "mae_mev" in m else ""
        print(f"  {target}: MAE {m['mae']:.5g} {m['unit']}{mev}, RMSE {m['rmse']:.5g} {m['unit']}")
    return 0
