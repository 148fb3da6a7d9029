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

import base64
import datetime as _dt
import html
import json
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from se3t.errors import InputError
from se3t.eval import plots
from se3t.eval.environment import describe_environment
from se3t.eval.references import PAPER_MODEL, PUBLISHED_MAE, THROUGHPUT_REFERENCES, UNITS
from se3t.eval.schema import METRICS_SCHEMA, PROFILE_SCHEMA, validate
from se3t.io import write_bytes, write_text

__all__ = ["RunResults", "build_report", "find_runs", "load_run", "shown_path"]

REQUIRED = {
    "config.yaml": "se3t train (the resolved config)",
    "metrics.jsonl": "se3t train (the training log)",
    "metrics.json": "se3t evaluate",
    "predictions.csv": "se3t evaluate",
}


@dataclass
class RunResults:
    name: str
    folder: Path
    config: dict
    records: list[dict]
    evaluation: dict
    predictions: pd.DataFrame
    profile: dict | None = None
    profile_path: Path | None = None


def find_runs(results_dir: Path) -> list[Path]:
    """Run folders under ``results_dir``: itself if it holds a config.yaml, else its children."""
    if not results_dir.is_dir():
        raise InputError(f"results folder {str(results_dir)!r} does not exist")
    if (results_dir / "config.yaml").is_file() or (results_dir / "metrics.jsonl").is_file():
        return [results_dir]
    found: list[Path] = []
    for parent in (results_dir / "runs", results_dir):
        if parent.is_dir():
            for child in sorted(parent.iterdir()):
                if child.is_dir() and (child / "config.yaml").is_file() and child not in found:
                    found.append(child)
    if not found:
        raise InputError(
            f"results folder {str(results_dir)!r} holds no run: expected config.yaml "
            "(from se3t train) in it, or in its sub-folders runs/* or *"
        )
    return found


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> str | None:
    """``path`` relative to ``folder`` (POSIX, ``.`` for the folder itself) when it lies inside
    it, compared as written after normalisation (no file need exist); else None. A relative
    path never lies inside an absolute folder, nor the other way round: their bases differ."""
    p, f = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    if p.is_absolute() != f.is_absolute() or not p.is_relative_to(f):
        return None
    return p.relative_to(f).as_posix()


def shown_path(path: str | os.PathLike, results_dir: Path, run: RunResults | None = None) -> str:
    """How the report names ``path``: relative to ``results_dir`` when inside it, else as given.

    With ``run``, a path recorded inside the folder where the run was written (its config's
    ``run.dir``, e.g. ``/tmp/x/run/best.pt``) or inside the run folder is first mapped to the run
    folder's place now; ``results_dir`` and the run folder are taken from the current directory.
    """
    here = Path(path)
    if run is not None:
        written = (run.config.get("run") or {}).get("dir")
        for origin in (os.path.abspath(run.folder), written):
            rel = _inside(path, origin) if origin else None
            if rel is not None:
                here = Path(os.path.abspath(run.folder)) / rel
                break
    rel = _inside(os.path.abspath(here), os.path.abspath(results_dir))
    return str(path) if rel is None else rel


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{str(path)!r}: line {lineno} is not JSON ({err.msg})") from err
            if not isinstance(rec, dict):
                raise InputError(f"{str(path)!r}: line {lineno} is not a JSON object")
            records.append(rec)
    if not records:
        raise InputError(f"{str(path)!r}: holds no records (has training started?)")
    return records


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{str(path)!r}: not valid JSON (line {err.lineno}: {err.msg})") from err


def load_run(folder: Path) -> RunResults:
    """Read one run folder's files; a missing or malformed one raises InputError naming it."""
    for name, producer in REQUIRED.items():
        if not (folder / name).is_file():
            raise InputError(
                f"results folder {str(folder)!r} is missing {name} (written by {producer})"
            )
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{str(folder / 'config.yaml')!r}: not valid YAML ({err})") from err
    records = _read_jsonl(folder / "metrics.jsonl")
    evaluation = _read_json(folder / "metrics.json")
    validate(evaluation, METRICS_SCHEMA, str(folder / "metrics.json"))
    try:
        predictions = pd.read_csv(folder / "predictions.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{str(folder / 'predictions.csv')!r}: not a CSV table ({err})") from err
    missing = {"target", "reference", "prediction"} - set(predictions.columns)
    if missing:
        raise InputError(
            f"{str(folder / 'predictions.csv')!r}: missing column(s) {sorted(missing)}"
        )
    name = folder.name if folder.parent.name == "runs" else None
    name = name or (config.get("run") or {}).get("name") or folder.name
    run = RunResults(name, folder, config, records, evaluation, predictions)
    for candidate in (folder / "memory.json", folder / "profile" / "memory.json"):
        if candidate.is_file():
            run.profile, run.profile_path = _read_profile(candidate), candidate
            break
    return run


def _read_profile(path: Path) -> dict:
    doc = _read_json(path)
    validate(doc, PROFILE_SCHEMA, str(path))
    return doc


def _shared_profile(results_dir: Path, runs: list[RunResults], given: Path | None):
    """The profile shared by all runs: ``given``, else one in the results folder (not a run's)."""
    if given is not None:
        if not given.is_file():
            raise InputError(f"profile file {str(given)!r} does not exist (se3t profile writes it)")
        return given
    own = {r.profile_path for r in runs}
    for candidate in (results_dir / "profile" / "memory.json", results_dir / "memory.json"):
        if candidate.is_file() and candidate not in own:
            return candidate
    return None


def training_throughput(records: list[dict]) -> dict | None:
    """Median training throughput over the logged steps (the first one, warm-up, left out)."""
    values = [
        float(r["mol_per_s"])
        for r in records
        if r.get("kind") == "step" and isinstance(r.get("mol_per_s"), (int, float))
    ]
    if len(values) > 1:
        values = values[1:]
    if not values:
        return None
    return {"mol_per_s": statistics.median(values), "steps": len(values)}


def _training_device(run: RunResults) -> str:
    """The device training ran on: from the log records, else train.log's start line, else the
    config's launch settings."""
    for rec in run.records:
        for key in ("device_name", "device"):
            if isinstance(rec.get(key), str):
                return rec[key]
    log = run.folder / "train.log"
    if log.is_file():
        found = re.findall(r"world size (\d+).*?device (\S+?), precision", log.read_text("utf-8"))
        if found:
            world, device = found[-1]
            if device == "cpu":
                return f"CPU ({world} process(es); train.log)"
            return f"{world} x {device} (train.log)"
    launch = run.config.get("launch") or {}
    train = run.config.get("train") or {}
    gpus = int(launch.get("gpus_per_node") or 0) * int(launch.get("nodes") or 1)
    if gpus:
        return f"{gpus} GPU(s) (launch config)"
    return f"train.device={train.get('device', 'auto')} (config)"


# ----------------------------------------------------------------------------- rendering


class _Doc:
    """Builds the HTML and the Markdown in step, so the twin never drifts from the page."""

    def __init__(self) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.images: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"\n{'#' * level} {text}\n")

    def para(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
        self.md.append("| " + " | ".join(esc[0]) + " |")
        self.md.append("|" + "---|" * len(header))
        self.md.extend("| " + " | ".join(r) + " |" for r in esc[1:])
        self.md.append("")

    def code(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md.append("```yaml\n" + text.rstrip() + "\n```\n")

    def image(self, png: Path, alt: str, md_ref: str) -> None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.images.append(png)
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>"
        )
        self.md.append(f"![{alt}]({md_ref})\n")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1000px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #333}h2{border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f2f2f2}
pre{background:#f6f6f6;padding:.6em;overflow:auto;max-height:24em;font-size:.85em}
figure{margin:.8em 1em .8em 0;display:inline-block;vertical-align:top}
img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
"""


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def model_words(model: dict) -> tuple[str, bool]:
    """``(text, is_paper)``: a run's model in words (layers, degrees, channels, heads,
    parameters) and whether it is the model of the published figures (``PAPER_MODEL``)."""
    from se3t.config import from_dict  # deferred: only the report counts parameters
    from se3t.models import build

    m = from_dict({"model": model}).model
    n = sum(p.numel() for p in build(m).parameters())
    text = (
        f"{m.num_layers} layers, degrees 0–{m.max_degree}, {m.channels} channels, "
        f"{m.heads} heads, {n:,} parameters"
    )
    return text, all(getattr(m, k) == v for k, v in PAPER_MODEL.items())


def _paper_words() -> str:
    p = PAPER_MODEL
    return (
        f"the paper's model ({p['num_layers']} layers, degrees 0–{p['max_degree']}, "
        f"{p['channels']} channels, {p['heads']} heads)"
    )


def _model_note(doc: _Doc, run: RunResults) -> tuple[str, bool]:
    words, paper = model_words(run.config.get("model") or {})
    if paper:
        doc.para(f"This run's model: {words}: {_paper_words()}, as in the published figures.")
    else:
        doc.para(
            f"This run's model: {words}. It is not {_paper_words()} that every published figure "
            "below was measured with: they are shown for orientation, not as a comparison."
        )
    return words, paper


def _metrics_section(doc: _Doc, run: RunResults, results_dir: Path) -> None:
    ev = run.evaluation
    checkpoint = shown_path(ev["checkpoint"], results_dir, run)
    dataset = shown_path(ev["dataset"], results_dir, run) if ev.get("dataset") else "?"
    targets = ", ".join(f"{t} [{m['unit'] or '-'}]" for t, m in ev["metrics"].items())
    doc.para(
        f"Split {ev['split']!r}: {ev['count']} molecules; checkpoint {checkpoint} "
        f"(epoch {ev.get('epoch')}, step {ev.get('step')}); evaluated on "
        f"{ev['environment']['device_name']}. Dataset {dataset} "
        f"({ev.get('dataset_source', 'qm9')}), targets {targets}."
    )
    _, paper = _model_note(doc, run)
    rows = []
    for target, m in ev["metrics"].items():
        unit = m["unit"]
        # published figures are QM9's: not beside another dataset's property of the same name
        qm9 = ev.get("dataset_source", "qm9") == "qm9"
        refs = PUBLISHED_MAE.get(target, []) if qm9 else []
        ref_text = (
            "; ".join(
                (f"{r['low']:g}" if r["low"] == r["high"] else f"{r['low']:g}–{r['high']:g}")
                + f" {r['unit']} ({r['source']})"
                for r in refs
            )
            or "—"
        )
        ratio = (
            f"{m['mae'] / max(r['high'] for r in refs):.2f}×"
            if refs and all(r["unit"] == unit for r in refs)
            else "—"
        )
        if refs and not paper:  # a ratio of two different models' errors says nothing
            ratio = "— (not the paper's model)"
        rows.append(
            [
                target,
                unit,
                _fmt(m["mae"]),
                _fmt(m.get("mae_mev"), 4) if "mae_mev" in m else "—",
                _fmt(m["rmse"]),
                str(m["count"]) + (f" ({m['missing']} missing)" if m.get("missing") else ""),
                ref_text,
                ratio,
            ]
        )
    doc.table(
        [
            "target",
            "unit",
            "MAE",
            "MAE (meV)",
            "RMSE",
            "molecules",
            "published MAE",
            "se3t / published",
        ],
        rows,
    )


def _series(p: dict) -> str:
    return f"{p['precision']}, {p['fusion']}" + (", low_memory" if p["low_memory"] else "")


def batch_limits(profile: dict) -> str:
    """What the sweep showed about batch sizes, per series: the largest batch that fits only
    where a larger one failed; else that every batch tried fits (a lower bound, no limit)."""
    failed: dict[str, list[dict]] = {}
    for p in profile["points"]:
        if p["status"] != "ok":  # keyed like largest_batch (StepPoint.series)
            key = f"{p['precision']} {p['fusion']}" + (" low_memory" if p["low_memory"] else "")
            failed.setdefault(key, []).append(p)
    limits, fits_all = [], []
    for series, largest in profile["largest_batch"].items():
        first_fail = min(failed.get(series, []), key=lambda p: p["batch_size"], default=None)
        if first_fail is None:
            fits_all.append(f"{series} (up to {largest})")
        elif largest is None:
            limits.append(
                f"{series}: none fits ({first_fail['batch_size']}: {first_fail['status']})"
            )
        else:
            limits.append(
                f"{series}: {largest} ({first_fail['batch_size']}: {first_fail['status']})"
            )
    text = []
    if limits:
        text.append("Largest batch that fits, where a larger one failed: " + "; ".join(limits))
    if fits_all:
        text.append(
            "Every batch tried fits in "
            + ", ".join(fits_all)
            + ": the sweep found no limit there (try larger batches to find one)"
        )
    return ". ".join(text) + "."


def _throughput_section(doc: _Doc, run: RunResults, profile: dict | None) -> None:
    tp = training_throughput(run.records)
    train = run.config.get("train") or {}
    words, paper = _model_note(doc, run)
    rows = []
    if tp is not None:
        rows.append(
            [
                "se3t (this run, training log)",
                words if paper else f"{words} (not the paper's model)",
                _training_device(run),
                str(train.get("precision", "?")),
                str(train.get("batch_size", "?")),
                f"{tp['mol_per_s'] / 1000:.4g}",
            ]
        )
    if profile is not None:
        pwords, ppaper = model_words(profile.get("model") or {})
        for p in profile["points"]:
            if p["status"] == "ok" and p["batch_size"] == 240:
                rows.append(
                    [
                        f"se3t profile ({_series(p)})",
                        pwords if ppaper else f"{pwords} (not the paper's model)",
                        profile["environment"]["device_name"],
                        p["precision"],
                        "240",
                        f"{p['mol_per_s'] / 1000:.4g}",
                    ]
                )
    for ref in THROUGHPUT_REFERENCES:
        rows.append(
            [
                "NVIDIA SE3Transformer (published)",
                _paper_words(),
                ref["device"],
                ref["precision"],
                str(ref["batch_size"]),
                f"{ref['mol_per_ms']:g}",
            ]
        )
    doc.table(["source", "model", "device", "precision", "batch", "mol/ms"], rows)
    if tp is None:
        doc.para("The training log has no step records with mol_per_s.")
    doc.para(
        "A throughput compares only for the same model on the same device: a CPU figure beside "
        "an A100's, or a small model's beside the paper's, shows neither implementation's "
        "quality."
    )


def _profile_section(
    doc: _Doc, profile: dict, source: str, assets: Path, md_dir: Path, prefix: str = ""
) -> None:
    env = profile["environment"]
    metric = {
        "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated over the timed steps",
        "cpu_peak_rss": "peak resident set size of the point's process over the timed steps "
        "(interpreter, torch and dataset included)",
    }[profile["memory_metric"]]
    doc.para(
        f"From {source}: {profile['warmup_steps']} warm-up and {profile['steps']} timed "
        f"training step(s) per point, each point in a fresh process, on {env['device_name']} "
        f"(torch {env['torch']}); bases computed "
        + ("in every step" if profile["basis"] == "step" else "once, before the timed steps")
        + f". Memory: {metric}; 'baseline' is what the process held before the first step, "
        "'added' what the step adds above it (the plot)."
    )

    def mib(x):
        return "—" if x is None else f"{x / 2**20:.0f}"

    rows = []
    for p in profile["points"]:
        rows.append(
            [
                p["precision"],
                p["fusion"],
                "on" if p["low_memory"] else "off",
                str(p["batch_size"]),
                p["status"] if p["status"] == "ok" else f"{p['status']}: {p['error']}",
                mib(p["baseline_memory_bytes"]),
                mib(p["added_memory_bytes"]),
                mib(p["peak_memory_bytes"]),
                "—" if p["step_time_s"] is None else f"{p['step_time_s']:.3g}",
                "—" if p["mol_per_s"] is None else f"{p['mol_per_s']:.1f}",
            ]
        )
    doc.table(
        [
            "precision",
            "fusion",
            "low memory",
            "batch",
            "status",
            "baseline (MiB)",
            "added (MiB)",
            "peak (MiB)",
            "step (s)",
            "mol/s",
        ],
        rows,
    )
    doc.para(batch_limits(profile))
    memory, throughput = assets / f"{prefix}memory.png", assets / f"{prefix}throughput.png"
    plots.plot_profile_memory(profile, memory)
    plots.plot_profile_throughput(profile, throughput)
    doc.image(
        memory, "Training memory above the baseline vs batch size", os.path.relpath(memory, md_dir)
    )
    doc.image(throughput, "Training throughput vs batch size", os.path.relpath(throughput, md_dir))


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
    md_path = out.with_suffix(".md")
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    shared_path = _shared_profile(results_dir, runs, Path(profile) if profile else None)
    shared = _read_profile(shared_path) if shared_path is not None else None

    doc = _Doc()
    doc.html.append(f"<h1>{html.escape(title)}</h1>")
    doc.md.append(f"# {title}\n")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc.para(
        f"Built {now} from {results_dir} ({len(runs)} run(s)); paths below are relative to it."
    )
    here = describe_environment("cpu")
    for run in runs:
        prefix = f"{run.name}_" if len(runs) > 1 else ""
        ev = run.evaluation
        doc.heading(f"Run {run.name}")
        doc.heading("Environment", 3)
        eval_env = ev["environment"]
        doc.table(
            ["", "value"],
            [
                ["training device", _training_device(run)],
                ["evaluation device", eval_env["device_name"]],
                ["torch (evaluation)", eval_env["torch"]],
                ["python (evaluation)", str(eval_env.get("python", "?"))],
                ["report built with torch", here["torch"]],
                ["run folder", shown_path(run.folder, results_dir)],
            ],
        )
        doc.heading("Test metrics beside the published references", 3)
        _metrics_section(doc, run, results_dir)
        names = list(ev["targets"])
        pred = run.predictions
        # molecules without a reference value (missing properties) are not plotted
        by_target = {t: pred[(pred["target"] == t) & pred["reference"].notna()] for t in names}
        units = {t: ev["metrics"].get(t, {}).get("unit") or UNITS.get(t, "") for t in names}
        parity = assets / f"{prefix}parity.png"
        errors = assets / f"{prefix}errors.png"
        curves = assets / f"{prefix}learning_curves.png"
        caption = f"{ev['split']} split, {ev['count']} molecules"
        plots.plot_parity(
            {t: f["reference"].to_numpy() for t, f in by_target.items() if len(f)},
            {t: f["prediction"].to_numpy() for t, f in by_target.items() if len(f)},
            units,
            parity,
            caption,
        )
        plots.plot_errors(
            {
                t: (f["prediction"] - f["reference"]).to_numpy()
                for t, f in by_target.items()
                if len(f)
            },
            units,
            errors,
            caption,
        )
        plots.plot_learning_curves(run.records, curves)
        doc.image(parity, f"Parity plot ({caption})", os.path.relpath(parity, md_path.parent))
        doc.image(errors, f"Error histogram ({caption})", os.path.relpath(errors, md_path.parent))
        doc.heading("Learning curves", 3)
        doc.image(
            curves, "Training loss and MAE per epoch", os.path.relpath(curves, md_path.parent)
        )
        doc.heading("Training throughput beside NVIDIA's published figures", 3)
        _throughput_section(doc, run, run.profile or shared)
        doc.heading("Memory and throughput profile", 3)
        if run.profile is not None:
            source = shown_path(run.profile_path, results_dir)
            _profile_section(doc, run.profile, source, assets, md_path.parent, prefix)
        elif shared is not None:
            doc.para("See the shared profile below.")
        else:
            doc.para("No profile found (se3t profile CONFIG --out RUN_FOLDER writes one).")
        doc.heading("Configuration", 3)
        doc.code(yaml.safe_dump(run.config, sort_keys=False))
    if shared is not None:
        doc.heading("Memory and throughput profile (shared)")
        source = shown_path(shared_path, results_dir)
        _profile_section(doc, shared, source, assets, md_path.parent, "shared_")

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(doc.html)
        + "\n</body></html>\n"
    )
    write_text(md_path, "\n".join(doc.md) + "\n")
    for stale in set(assets.glob("*.png")) - set(doc.images):  # figures of an earlier build
        stale.unlink()
    write_bytes(out, page.encode("utf-8"))  # last: the HTML's presence means the report is whole
    return out, md_path
