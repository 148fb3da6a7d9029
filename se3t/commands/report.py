"""``se3t report RESULTS_DIR [--out report.html]``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help=_HELP, description=_DESCRIPTION)
    p.add_argument("results", metavar="RESULTS_DIR", help="run folder or results folder")
    p.add_argument(
        "--runs",
        metavar="RUN_DIR",
        nargs="+",
        default=None,
        help="exactly these run folders, in this order (default: every run folder found in "
        "RESULTS_DIR); paths are shown relative to RESULTS_DIR",
    )
    p.add_argument(
        "--out",
        metavar="HTML",
        default=None,
        help="report file (default: RESULTS_DIR/report.html); the Markdown twin is "
        "written beside it with .md, its figures in <name>_files/",
    )
    p.add_argument(
        "--profile",
        metavar="MEMORY_JSON",
        default=None,
        help="profile file to include (default: searched as described above)",
    )
    p.add_argument("--title", default="se3t report", help="report title (default: 'se3t report')")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the stage's library (torch, zarr, rdkit) loads only when the command runs
    from se3t.eval.report import build_report

    html_path, md_path = build_report(
        args.results, args.out, runs=args.runs, profile=args.profile, title=args.title
    )
    print(f"report: {html_path} (Markdown twin: {md_path})")
    return 0


# the command's --help: a line in `se3t --help`, a paragraph in `se3t report --help`
_HELP = "self-contained HTML report (and a Markdown twin) of runs, evaluation and profile"
_DESCRIPTION = (
    "Build one self-contained HTML file (images embedded) and its Markdown twin from a "
    "results folder: a run folder, or a folder whose runs/* or * sub-folders are run "
    "folders. Each run folder needs config.yaml and metrics.jsonl (se3t train), "
    "metrics.json and predictions.csv (se3t evaluate). A profile memory.json (se3t "
    "profile) is taken from RESULTS_DIR/profile/, RESULTS_DIR or the run folder, or "
    "from --profile."
)
