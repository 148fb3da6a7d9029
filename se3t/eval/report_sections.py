"""The report's pieces: a document that writes HTML and Markdown in step, and the sections
that set a run's figures beside the published ones."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from se3t.eval import plots
from se3t.eval.references import PAPER_MODEL, PUBLISHED_MAE, THROUGHPUT_REFERENCES
from se3t.eval.runs import RunResults, shown_path, training_device, training_throughput

__all__ = [
    "ReportDoc",
    "batch_limits",
    "metrics_section",
    "model_note",
    "model_words",
    "profile_section",
    "throughput_section",
]


class ReportDoc:
    """Builds the HTML and the Markdown in step, so the twin never drifts from the page."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        self.md: list[str] = [f"# {title}\n"]
        self.images: list[Path] = []

    def page(self) -> str:
        """The whole HTML page, its style inline."""
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(self.html)
            + "\n</body></html>\n"
        )

    def markdown(self) -> str:
        return "\n".join(self.md) + "\n"

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


def model_note(doc: ReportDoc, run: RunResults) -> tuple[str, bool]:
    words, paper = model_words(run.config.get("model") or {})
    if paper:
        doc.para(f"This run's model: {words}: {_paper_words()}, as in the published figures.")
    else:
        doc.para(
            f"This run's model: {words}. It is not {_paper_words()} that every published figure "
            "below was measured with: they are shown for orientation, not as a comparison."
        )
    return words, paper


def metrics_section(doc: ReportDoc, run: RunResults, results_dir: Path) -> None:
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
    _, paper = model_note(doc, run)
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


def throughput_section(doc: ReportDoc, run: RunResults, profile: dict | None) -> None:
    tp = training_throughput(run.records)
    train = run.config.get("train") or {}
    words, paper = model_note(doc, run)
    rows = []
    if tp is not None:
        rows.append(
            [
                "se3t (this run, training log)",
                words if paper else f"{words} (not the paper's model)",
                training_device(run),
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


def profile_section(
    doc: ReportDoc, profile: dict, source: str, assets: Path, md_dir: Path, prefix: str = ""
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
