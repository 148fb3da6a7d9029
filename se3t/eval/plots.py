"""The figures of evaluation, profile and report, as small PNGs written atomically.

Style follows the SE(3)-Transformer figures of NVIDIA's README: one line with markers per
series of a profile (precision, fusion, low memory), batch size on the x axis, a light grid,
the device in the title.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from se3t.io import atomic_write  # noqa: E402

__all__ = [
    "plot_errors",
    "plot_learning_curves",
    "plot_parity",
    "plot_profile_memory",
    "plot_profile_throughput",
]

DPI = 80  # small files: the example report is committed


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    finally:
        plt.close(fig)


def _panels(names: list[str], height: float):
    """A figure with one panel per name, three a row: ``(fig, [(axes, name), ...])``."""
    cols = min(len(names), 3)
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    return fig, list(zip(axes.flat, names, strict=False))


def _finish(fig, title: str, path: str | os.PathLike) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_parity(
    true: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Predicted against reference value, one panel per target, with the y = x line."""
    fig, panels = _panels(list(true), 4.0)
    for ax, name in panels:
        t, p = np.asarray(true[name]), np.asarray(pred[name])
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--")
        ax.scatter(t, p, s=6, alpha=0.5, color="tab:blue", edgecolors="none")
        mae = float(np.mean(np.abs(p - t)))
        ax.set_title(f"{name}: MAE {mae:.4g} {units.get(name, '')}", fontsize=10)
        ax.set_xlabel(f"reference ({units.get(name, '')})")
        ax.set_ylabel(f"predicted ({units.get(name, '')})")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    return _finish(fig, title, path)


def plot_errors(
    errors: Mapping[str, np.ndarray],
    units: Mapping[str, str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Histogram of prediction - reference per target."""
    fig, panels = _panels(list(errors), 3.2)
    for ax, name in panels:
        e = np.asarray(errors[name])
        bins = max(10, min(60, int(np.sqrt(e.size)) * 2))
        ax.hist(e, bins=bins, color="tab:orange", alpha=0.8)
        ax.axvline(0.0, color="0.3", lw=1)
        ax.set_title(
            f"{name}: mean {e.mean():.3g}, sd {e.std():.3g} {units.get(name, '')}", fontsize=10
        )
        ax.set_xlabel(f"predicted - reference ({units.get(name, '')})")
        ax.set_ylabel("molecules")
        ax.grid(alpha=0.3)
    return _finish(fig, title, path)


def plot_learning_curves(records: Sequence[dict], path: str | os.PathLike) -> Path:
    """Training loss per step (left) and validation/training MAE per epoch (right)."""
    steps = [r for r in records if r.get("kind") == "step" and r.get("loss") is not None]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_mae) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (standardized L1)")
    ax_loss.set_title("training loss", fontsize=10)
    ax_loss.grid(alpha=0.3)
    for key, style in (("val_mae", "-o"), ("train_mae", "--s")):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in epochs:
            value = r.get(key)
            if isinstance(value, Mapping):
                for target, v in value.items():
                    if v is not None:
                        series.setdefault(target, []).append((r["epoch"], v))
            elif value is not None:
                series.setdefault("", []).append((r["epoch"], value))
        for target, pts in series.items():
            x, y = zip(*pts, strict=True)
            label = f"{key.split('_')[0]} {target}".strip()
            ax_mae.plot(x, y, style, ms=3, lw=1, label=label)
    ax_mae.set_xlabel("epoch")
    ax_mae.set_ylabel("MAE (target units)")
    ax_mae.set_title("MAE per epoch", fontsize=10)
    ax_mae.grid(alpha=0.3)
    if ax_mae.lines:
        ax_mae.legend(fontsize=8)
        if all(min(line.get_ydata()) > 0 for line in ax_mae.lines):
            ax_mae.set_yscale("log")
    fig.tight_layout()
    return _save(fig, path)


def _profile_lines(doc: dict, field: str, scale: float):
    lines: dict[str, tuple[list[int], list[float]]] = {}
    for p in doc["points"]:
        label = f"{p['precision']} {p['fusion']}" + (" low_memory" if p["low_memory"] else "")
        xs, ys = lines.setdefault(label, ([], []))
        if p["status"] == "ok" and p[field] is not None:
            xs.append(p["batch_size"])
            ys.append(p[field] * scale)
    return lines


def _profile_plot(doc: dict, field: str, scale: float, ylabel: str, title: str, path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (xs, ys) in _profile_lines(doc, field, scale).items():
        if xs:
            ax.plot(xs, ys, "-o", ms=4, lw=1.5, label=label)
    oom = [p for p in doc["points"] if p["status"] == "oom"]
    if oom:
        ax.plot(
            [p["batch_size"] for p in oom],
            [0] * len(oom),
            "x",
            color="red",
            ms=8,
            label="out of memory",
        )
    env = doc.get("environment", {})
    ax.set_xscale("log")
    ax.set_xlabel("batch size (molecules)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n{env.get('device_name', '')}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_profile_memory(doc: dict, path: str | os.PathLike) -> Path:
    """The memory a training step adds above the process's baseline (interpreter, torch, model,
    batch) against batch size, one line per series: the figure that grows with the batch, in
    MiB (GiB once it passes 4 GiB). The total, baseline included, is in memory.json."""
    what = (
        "CUDA memory"
        if doc["memory_metric"] == "cuda_max_memory_allocated"
        else "resident memory (RSS)"
    )
    added = [p["added_memory_bytes"] or 0 for p in doc["points"] if p["status"] == "ok"]
    gib = max(added, default=0) > 4 * 2**30
    return _profile_plot(
        doc,
        "added_memory_bytes",
        1 / 2**30 if gib else 1 / 2**20,
        f"{what} a step adds ({'GiB' if gib else 'MiB'})",
        "Training memory above the baseline vs batch size",
        path,
    )


def plot_profile_throughput(doc: dict, path: str | os.PathLike) -> Path:
    """Training throughput (molecules/s) against batch size, one line per series."""
    return _profile_plot(
        doc,
        "mol_per_s",
        1.0,
        "training throughput (molecules/s)",
        "Training throughput vs batch size",
        path,
    )
