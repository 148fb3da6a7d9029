"""Training memory and throughput per batch size, in the config's words.

``profile(cfg, out_dir)`` sweeps ``eval.profile_precision`` x ``eval.profile_fusion`` x
``eval.profile_low_memory`` x ``eval.profile_batch_sizes`` with the run's model (every other
``model.*`` key as configured). Each point is a few training steps (forward, L1 loss on the
targets, backward, Adam step) on one fixed batch of real molecules from the training split,
measured by the step harness (:mod:`se3t.eval.point`) in a fresh Python process, so that its
memory is its own; data loading is not in the figure.

An out-of-memory point (``torch.OutOfMemoryError``, an allocator failure under
``eval.profile_memory_limit_gb``, or the process killed by the kernel's OOM killer) is recorded
with ``status="oom"`` and the sweep goes on; larger batches of the same series are then recorded
as ``skipped`` without running them, since they cannot fit either. ``largest_batch`` gives, per
series (``"fp32 pairwise"``, ``"fp16 full low_memory"``), the largest batch that fit.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from se3t.config import Config, ConfigError, to_dict
from se3t.device import resolve_device
from se3t.eval import plots
from se3t.eval.environment import describe_environment
from se3t.eval.point import StepPoint, run_fresh
from se3t.eval.schema import PROFILE_SCHEMA, PROFILE_SCHEMA_VERSION, validate
from se3t.io import write_json

__all__ = ["largest_batch", "profile", "profile_specs"]


def largest_batch(points: Sequence[dict]) -> tuple[dict, dict]:
    """Per series and per precision: the largest batch size with status ok (None if none)."""
    per_series: dict[str, int | None] = {}
    per_precision: dict[str, int | None] = {}
    for p in points:
        key, prec = StepPoint.from_dict(p).series, p["precision"]
        per_series.setdefault(key, None)
        per_precision.setdefault(prec, None)
        if p["status"] == "ok":
            b = p["batch_size"]
            per_series[key] = max(b, per_series[key] or 0)
            per_precision[prec] = max(b, per_precision[prec] or 0)
    return per_series, per_precision


def profile_specs(cfg: Config) -> list[dict]:
    """The harness specs of the sweep, in the order they run (batch sizes ascending last)."""
    ev = cfg.eval
    for key in ("profile_batch_sizes", "profile_precision", "profile_fusion", "profile_low_memory"):
        if not getattr(ev, key):
            raise ConfigError(f"config key 'eval.{key}': give at least one value")
    for b in ev.profile_batch_sizes:
        if int(b) <= 0:
            raise ConfigError(f"config key 'eval.profile_batch_sizes': {b!r} must be > 0")
    words = to_dict(cfg)
    model = {**words["model"], "out_dim": len(cfg.data.targets)}
    limit = ev.profile_memory_limit_gb
    specs = []
    for precision in ev.profile_precision:
        for fusion in ev.profile_fusion:
            for low_memory in ev.profile_low_memory:
                for b in sorted({int(b) for b in ev.profile_batch_sizes}):
                    specs.append(
                        {
                            "model": {**model, "fusion": str(fusion), "low_memory": low_memory},
                            "precision": str(precision),
                            "batch_size": b,
                            "steps": ev.profile_steps,
                            "warmup_steps": ev.profile_warmup_steps,
                            "basis": str(ev.profile_basis),
                            "device": str(resolve_device(str(cfg.train.device))),
                            "seed": cfg.train.seed,
                            "lr": cfg.train.lr,
                            "memory_limit": int(limit * 2**30) if limit else None,
                            "data": words["data"],
                        }
                    )
    return specs


def _sweep(specs: list[dict], timeout: float, progress: bool) -> list[dict]:
    points: list[dict] = []
    oom_at: dict[str, int] = {}
    bar = tqdm(specs, desc="profile", unit="point", disable=not progress)
    for spec in bar:
        series = StepPoint.of_spec(spec).series
        bar.set_postfix_str(f"{series} batch {spec['batch_size']}")
        if series in oom_at:
            why = f"batch {oom_at[series]} already ran out of memory"
            points.append(StepPoint.of_spec(spec, "skipped", why).as_dict())
            continue
        point = run_fresh(spec, timeout)
        if point.status == "oom":
            oom_at[series] = point.batch_size
        points.append(point.as_dict())
        if progress and point.status == "ok":
            bar.write(
                f"  {series:>24} batch {point.batch_size:>5}: "
                f"{point.added_memory_bytes / 2**20:9.1f} MiB added, "
                f"{point.mol_per_s:9.1f} mol/s"
            )
        elif progress:
            bar.write(f"  {series:>24} batch {point.batch_size:>5}: {point.status}: {point.error}")
    return points


def profile(cfg: Config, out_dir: str | os.PathLike, *, progress: bool = True) -> dict:
    """Sweep the grid, write ``memory.json``, ``memory.png`` and ``throughput.png`` to ``out_dir``.

    Everything comes from ``cfg``: the grid and the harness settings from ``cfg.eval``
    (``profile_*``), the device from ``train.device``, the molecules from ``cfg.data``.
    ``eval.profile_memory_limit_gb`` caps each point's process: on CUDA through
    ``torch.cuda.set_per_process_memory_fraction``, on the CPU through ``RLIMIT_DATA``, which
    makes allocations beyond it fail like a real out-of-memory. Returns the JSON document
    (validated against :data:`se3t.eval.schema.PROFILE_SCHEMA`).
    """
    specs = profile_specs(cfg)  # checks the grid before anything is written
    dev = resolve_device(str(cfg.train.device))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = _sweep(specs, cfg.eval.profile_timeout, progress)
    per_series, per_precision = largest_batch(points)
    limit = cfg.eval.profile_memory_limit_gb
    model = to_dict(cfg.model)
    doc = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "se3t.profile",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": describe_environment(dev),
        "memory_metric": "cuda_max_memory_allocated" if dev.type == "cuda" else "cpu_peak_rss",
        "steps": cfg.eval.profile_steps,
        "warmup_steps": cfg.eval.profile_warmup_steps,
        "basis": str(cfg.eval.profile_basis),
        "memory_limit_bytes": int(limit * 2**30) if limit else None,
        "model": {k: v for k, v in model.items() if k not in ("fusion", "low_memory")},
        "config": to_dict(cfg),
        "points": points,
        "largest_batch": per_series,
        "largest_batch_per_precision": per_precision,
    }
    validate(doc, PROFILE_SCHEMA, "profile result")
    write_json(out_dir / "memory.json", doc)
    plots.plot_profile_memory(doc, out_dir / "memory.png")
    plots.plot_profile_throughput(doc, out_dir / "throughput.png")
    return doc
