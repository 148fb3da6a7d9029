"""Peak training memory and throughput per batch size, mode and convolution path.

``profile(cfg, ...)`` sweeps a grid of (mode, path, batch size) points. Each point runs in a
**fresh Python process** (``python -m se3t.eval._profile_point``), so that its peak memory is its
own: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps, on the CPU the peak
resident set size of that process (``getrusage(RUSAGE_SELF).ru_maxrss``, which includes the
interpreter, torch and the dataset — ``baseline_memory_bytes`` is the same figure measured just
before the first step). A point does ``warmup_steps`` untimed and ``steps`` timed training steps
(forward, L1 loss on the standardized targets, backward, Adam step) on one fixed batch of real
molecules from the training split (cycled when the split is smaller than the batch), so data
loading is not in the figure.

Modes: ``fp32``; ``tf32`` (TF32 matmuls on CUDA, the same as fp32 on the CPU); ``amp`` (CUDA:
fp16 autocast with gradient scaling, NVIDIA's AMP; CPU: bf16 autocast); ``fp16``/``bf16``
explicitly; each optionally ``+lowmem`` (``model.low_memory=True``). Paths: ``pairwise`` (the
unfused reference, ``model.fusion=pairwise``) and ``fused`` (``model.fusion=auto``).

An out-of-memory point (``torch.OutOfMemoryError``, an allocator failure, or the process killed
by the kernel's OOM killer) is recorded with ``status="oom"`` and the sweep goes on; larger
batches of the same mode and path are then recorded as ``skipped`` without running them, since
they cannot fit either. ``largest_batch`` gives, per ``mode/path``, the largest batch that fit.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from se3t.choices import ProfileBasis
from se3t.config import Config, ConfigError, to_dict
from se3t.eval import plots
from se3t.eval.environment import describe_environment, resolve_device
from se3t.eval.schema import PROFILE_SCHEMA, PROFILE_SCHEMA_VERSION, validate
from se3t.io import write_json

__all__ = ["BASE_MODES", "PATHS", "largest_batch", "parse_mode", "profile"]

BASE_MODES = ("fp32", "tf32", "amp", "fp16", "bf16")
# profile path name -> model.fusion value
PATHS = {"pairwise": "pairwise", "fused": "auto"}


def parse_mode(mode: str) -> tuple[str, bool]:
    """``"amp+lowmem"`` -> ``("amp", True)``; raises ConfigError for an unknown mode."""
    base, plus, suffix = mode.partition("+")
    if base not in BASE_MODES or (plus and suffix != "lowmem"):
        raise ConfigError(
            f"profile mode {mode!r} is not one of {list(BASE_MODES)}, optionally with '+lowmem' "
            "(e.g. fp32,amp,amp+lowmem)"
        )
    return base, bool(plus)


def _check_args(batch_sizes, modes, paths, steps, basis) -> None:
    if not batch_sizes:
        raise ConfigError("profile: give at least one batch size")
    for b in batch_sizes:
        if int(b) <= 0:
            raise ConfigError(f"profile batch size {b!r}: must be > 0")
    if not modes:
        raise ConfigError("profile: give at least one mode")
    for m in modes:
        parse_mode(m)
    if not paths:
        raise ConfigError("profile: give at least one path")
    for p in paths:
        if p not in PATHS:
            raise ConfigError(f"profile path {p!r} is not one of {list(PATHS)}")
    if steps <= 0:
        raise ConfigError(f"profile steps: must be > 0, got {steps}")
    if basis not in [b.value for b in ProfileBasis]:
        raise ConfigError(
            f"profile basis {basis!r} is not one of {[b.value for b in ProfileBasis]}"
        )


def largest_batch(points: Sequence[dict]) -> tuple[dict, dict]:
    """Per ``mode/path`` and per mode: the largest batch size with status ok (None if none)."""
    per_path: dict[str, int | None] = {}
    per_mode: dict[str, int | None] = {}
    for p in points:
        key = f"{p['mode']}/{p['path']}"
        per_path.setdefault(key, None)
        per_mode.setdefault(p["mode"], None)
        if p["status"] == "ok":
            b = p["batch_size"]
            per_path[key] = max(b, per_path[key] or 0)
            per_mode[p["mode"]] = max(b, per_mode[p["mode"]] or 0)
    return per_path, per_mode


def _empty_point(mode: str, path: str, batch_size: int, status: str, error: str | None) -> dict:
    return {
        "mode": mode,
        "path": path,
        "batch_size": int(batch_size),
        "status": status,
        "peak_memory_bytes": None,
        "baseline_memory_bytes": None,
        "mol_per_s": None,
        "step_time_s": None,
        "num_atoms": None,
        "num_edges": None,
        "error": error,
        "wall_s": 0.0,
    }


def _run_point(spec: dict, timeout: float, workdir: Path) -> dict:
    """Run one point in a fresh interpreter and return its record (never raises for the point)."""
    name = f"{spec['mode']}_{spec['path']}_{spec['batch_size']}".replace("+", "-")
    spec_file = workdir / f"{name}.spec.json"
    result_file = workdir / f"{name}.result.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "se3t.eval._profile_point", str(spec_file), str(result_file)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        point = _empty_point(
            spec["mode"],
            spec["path"],
            spec["batch_size"],
            "timeout",
            f"did not finish within {timeout:g} s",
        )
        point["wall_s"] = time.perf_counter() - t0
        return point
    wall = time.perf_counter() - t0
    if result_file.is_file():
        point = json.loads(result_file.read_text())
    else:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        if proc.returncode == -signal.SIGKILL:
            # the kernel's OOM killer sends SIGKILL, and nothing else here does
            status, error = "oom", "process killed (SIGKILL), most likely by the OOM killer"
        else:
            status = "error"
            error = f"process exited with {proc.returncode}: " + " | ".join(tail)
        point = _empty_point(spec["mode"], spec["path"], spec["batch_size"], status, error)
    point["wall_s"] = wall
    return point


def profile(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    batch_sizes: Sequence[int] | None = None,
    modes: Sequence[str] | None = None,
    paths: Sequence[str] | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    device: str | None = None,
    basis: str | None = None,
    timeout: float | None = None,
    memory_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Sweep the grid, write ``memory.json``, ``memory.png`` and ``throughput.png`` to ``out_dir``.

    Every argument left None comes from ``cfg.eval`` (``profile_batch_sizes``, ``profile_modes``,
    ``profile_paths``, ``profile_steps``, ``profile_warmup_steps``, ``profile_basis``,
    ``profile_timeout``, ``profile_memory_limit_gb``) or ``cfg.train.device``.
    ``memory_limit`` (bytes) caps each point's process: on CUDA through
    ``torch.cuda.set_per_process_memory_fraction``, on the CPU through ``RLIMIT_DATA``, which
    makes allocations beyond it fail like a real out-of-memory. Returns the JSON document
    (validated against :data:`se3t.eval.schema.PROFILE_SCHEMA`).
    """
    batch_sizes = sorted({int(b) for b in (batch_sizes or cfg.eval.profile_batch_sizes)})
    modes = list(modes or cfg.eval.profile_modes)
    paths = list(paths or cfg.eval.profile_paths)
    ev = cfg.eval
    steps = int(steps if steps is not None else ev.profile_steps)
    warmup_steps = int(warmup_steps if warmup_steps is not None else ev.profile_warmup_steps)
    basis = basis or ev.profile_basis
    timeout = float(timeout if timeout is not None else ev.profile_timeout)
    if memory_limit is None and ev.profile_memory_limit_gb is not None:
        memory_limit = int(ev.profile_memory_limit_gb * 2**30)
    if memory_limit is not None and memory_limit <= 0:
        raise ConfigError(f"profile memory limit: must be > 0, got {memory_limit} bytes")
    _check_args(batch_sizes, modes, paths, steps, basis)
    dev = resolve_device(device or cfg.train.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = [(m, p, b) for m in modes for p in paths for b in batch_sizes]
    points: list[dict] = []
    oom_at: dict[tuple[str, str], int] = {}
    # specs and results of the points: outside out_dir, so a killed sweep leaves nothing there
    with tempfile.TemporaryDirectory(prefix="se3t-profile-") as work:
        bar = tqdm(grid, desc="profile", unit="point", disable=not progress)
        for mode, path, b in bar:
            bar.set_postfix_str(f"{mode} {path} batch {b}")
            if (mode, path) in oom_at:
                points.append(
                    _empty_point(
                        mode,
                        path,
                        b,
                        "skipped",
                        f"batch {oom_at[mode, path]} already ran out of memory",
                    )
                )
                continue
            spec = {
                "config": to_dict(cfg),
                "mode": mode,
                "path": path,
                "batch_size": b,
                "steps": steps,
                "warmup_steps": warmup_steps,
                "device": str(dev),
                "basis": basis,
                "memory_limit": memory_limit,
                "seed": cfg.train.seed,
            }
            point = _run_point(spec, timeout, Path(work))
            if point["status"] == "oom":
                oom_at[mode, path] = b
            points.append(point)
            if point["status"] == "ok" and progress:
                bar.write(
                    f"  {mode:>11} {path:>8} batch {b:>5}: "
                    f"{point['peak_memory_bytes'] / 2**20:9.1f} MiB, "
                    f"{point['mol_per_s']:9.1f} mol/s"
                )
            elif progress:
                bar.write(
                    f"  {mode:>11} {path:>8} batch {b:>5}: {point['status']}: {point['error']}"
                )
    per_path, per_mode = largest_batch(points)
    doc = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "kind": "se3t.profile",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": describe_environment(dev),
        "memory_metric": "cuda_max_memory_allocated" if dev.type == "cuda" else "cpu_peak_rss",
        "steps": steps,
        "warmup_steps": warmup_steps,
        "basis": basis,
        "memory_limit_bytes": memory_limit,
        "model": {k: v for k, v in to_dict(cfg.model).items() if k not in ("fusion", "low_memory")},
        "config": to_dict(cfg),
        "points": points,
        "largest_batch": per_path,
        "largest_batch_per_mode": per_mode,
    }
    validate(doc, PROFILE_SCHEMA, "profile result")
    write_json(out_dir / "memory.json", doc)
    plots.plot_profile_memory(doc, out_dir / "memory.png")
    plots.plot_profile_throughput(doc, out_dir / "throughput.png")
    return doc
