"""The run report: one self-contained HTML file (images embedded as base64) and a Markdown twin.

``build_report(results_dir)`` reads, for each run folder found (``results_dir`` itself, or its
sub-folders ``runs/*`` and ``*`` that hold a ``config.yaml``):

- ``config.yaml``        the resolved config (written by training)
- ``metrics.jsonl``      the training log (learning curves, training throughput)
- ``metrics.json``       the evaluation (``se3t evaluate``), validated against its schema
- ``predictions.csv``    the evaluation's predictions (parity plot, error histogram)

and, when present, the run's profile ``memory.json`` (``se3t profile``; in the run folder or its
``profile/``), plus one shared profile: the one passed as ``profile``, else
``results_dir/profile/memory.json`` or ``results_dir/memory.json``. A missing required file is
an :class:`InputError` naming it and the command that makes it. All figures are redrawn from
these data files, so the report never shows a stale picture.

Paths inside the results folder (run folders, profiles, the evaluated checkpoint) are shown
relative to it, so a report names no temporary folder of the machine that made it
(:func:`shown_path`). A checkpoint recorded where training wrote the run (``run.dir`` of its
config) is mapped to the run folder's place now: runs are often made elsewhere and copied in.

The report sets each figure beside the published ones: NVIDIA's QM9 ``homo`` test MAE
(0.0342-0.0346 eV after 100 epochs) and the paper's 35 meV; NVIDIA's training throughput
(2.21 mol/ms TF32, 2.92 mol/ms AMP at batch 240 on one A100; 22.95 mol/ms on 8), with the device
that produced se3t's figure named next to it.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from se3t.errors import InputError
from se3t.eval import plots
from se3t.eval.environment import describe_environment
from se3t.eval.references import UNITS
from se3t.eval.report_sections import (
    ReportDoc,
    metrics_section,
    profile_section,
    throughput_section,
)
from se3t.eval.runs import (
    RunResults,
    find_runs,
    load_run,
    read_profile,
    shared_profile,
    shown_path,
    training_device,
)
from se3t.io import write_bytes, write_text

__all__ = ["RunResults", "build_report", "find_runs", "load_run", "shown_path"]


def build_report(
    results_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    runs: Sequence[str | os.PathLike] | None = None,
    profile: str | os.PathLike | None = None,
    title: str = "se3t report",
) -> tuple[Path, Path]:
    """Write ``out`` (HTML, default ``results_dir/report.html``) and its Markdown twin (same
    name, ``.md``; its figures in ``<name>_files/``). Returns both paths. ``runs``: exactly these
    run folders (the workflow passes the runs its config lists); default: every run folder
    :func:`find_runs` finds under ``results_dir``."""
    results_dir = Path(results_dir)
    folders = find_runs(results_dir) if runs is None else [Path(r) for r in runs]
    if not folders:
        raise InputError("report: give at least one run folder")
    runs = [load_run(f) for f in folders]
    out = Path(out) if out is not None else results_dir / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"report output {str(out)!r} must end in .html (the .md twin is beside)")
    files = _Files(results_dir, out.with_suffix(".md"), out.parent / f"{out.stem}_files")
    files.assets.mkdir(parents=True, exist_ok=True)
    shared_path = shared_profile(results_dir, runs, Path(profile) if profile else None)
    shared = read_profile(shared_path) if shared_path is not None else None

    doc = ReportDoc(title)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc.para(
        f"Built {now} from {results_dir} ({len(runs)} run(s)); paths below are relative to it."
    )
    here = describe_environment("cpu")
    for run in runs:
        _run_section(doc, run, files, here, shared, prefix=f"{run.name}_" if len(runs) > 1 else "")
    if shared is not None:
        doc.heading("Memory and throughput profile (shared)")
        source = shown_path(shared_path, results_dir)
        profile_section(doc, shared, source, files.assets, files.md.parent, "shared_")

    write_text(files.md, doc.markdown())
    for stale in set(files.assets.glob("*.png")) - set(doc.images):  # figures of an earlier build
        stale.unlink()
    # last: the HTML's presence means the report is whole
    write_bytes(out, doc.page().encode("utf-8"))
    return out, files.md


@dataclass(frozen=True)
class _Files:
    results_dir: Path
    md: Path  # the Markdown twin; its figures are referred to relative to its folder
    assets: Path  # the figures

    def ref(self, png: Path) -> str:
        return os.path.relpath(png, self.md.parent)


def _run_section(
    doc: ReportDoc, run: RunResults, files: _Files, here: dict, shared: dict | None, prefix: str
) -> None:
    """One run: environment, test metrics, figures, throughput, profile, configuration."""
    doc.heading(f"Run {run.name}")
    doc.heading("Environment", 3)
    _environment_table(doc, run, files.results_dir, here)
    doc.heading("Test metrics beside the published references", 3)
    metrics_section(doc, run, files.results_dir)
    _figures(doc, run, files, prefix)
    doc.heading("Training throughput beside NVIDIA's published figures", 3)
    throughput_section(doc, run, run.profile or shared)
    doc.heading("Memory and throughput profile", 3)
    if run.profile is not None:
        source = shown_path(run.profile_path, files.results_dir)
        profile_section(doc, run.profile, source, files.assets, files.md.parent, prefix)
    elif shared is not None:
        doc.para("See the shared profile below.")
    else:
        doc.para("No profile found (se3t profile CONFIG --out RUN_FOLDER writes one).")
    doc.heading("Configuration", 3)
    doc.code(yaml.safe_dump(run.config, sort_keys=False))


def _environment_table(doc: ReportDoc, run: RunResults, results_dir: Path, here: dict) -> None:
    eval_env = run.evaluation["environment"]
    doc.table(
        ["", "value"],
        [
            ["training device", training_device(run)],
            ["evaluation device", eval_env["device_name"]],
            ["torch (evaluation)", eval_env["torch"]],
            ["python (evaluation)", str(eval_env.get("python", "?"))],
            ["report built with torch", here["torch"]],
            ["run folder", shown_path(run.folder, results_dir)],
        ],
    )


def _figures(doc: ReportDoc, run: RunResults, files: _Files, prefix: str) -> None:
    """Parity plot and error histogram of the evaluation, and the learning curves."""
    ev = run.evaluation
    names = list(ev["targets"])
    pred = run.predictions
    # molecules without a reference value (missing properties) are not plotted
    by_target = {t: pred[(pred["target"] == t) & pred["reference"].notna()] for t in names}
    units = {t: ev["metrics"].get(t, {}).get("unit") or UNITS.get(t, "") for t in names}
    parity = files.assets / f"{prefix}parity.png"
    errors = files.assets / f"{prefix}errors.png"
    curves = files.assets / f"{prefix}learning_curves.png"
    caption = f"{ev['split']} split, {ev['count']} molecules"
    plots.plot_parity(
        {t: f["reference"].to_numpy() for t, f in by_target.items() if len(f)},
        {t: f["prediction"].to_numpy() for t, f in by_target.items() if len(f)},
        units,
        parity,
        caption,
    )
    plots.plot_errors(
        {t: (f["prediction"] - f["reference"]).to_numpy() for t, f in by_target.items() if len(f)},
        units,
        errors,
        caption,
    )
    plots.plot_learning_curves(run.records, curves)
    doc.image(parity, f"Parity plot ({caption})", files.ref(parity))
    doc.image(errors, f"Error histogram ({caption})", files.ref(errors))
    doc.heading("Learning curves", 3)
    doc.image(curves, "Training loss and MAE per epoch", files.ref(curves))
