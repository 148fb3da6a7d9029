"""Helpers of the training tests: a tiny real model config on the real QM9 test store, the
``se3t`` command as a subprocess, and reading a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from se3t.config import Config, load

REPO = Path(__file__).resolve().parents[2]

# the real SE(3)-Transformer, as small as it gets: 1 layer, degrees 0..1, 8 channels
TINY = {
    "model.num_layers": 1,
    "model.max_degree": 1,
    "model.channels": 8,
    "model.heads": 2,
    "model.radial_hidden": 8,
    "basis.max_degree": 1,
    "train.batch_size": 32,
    "train.log_every": 1,
    "train.eval_every": 1,
    "eval.batch_size": 64,
}


def tiny_overrides(store: Path, run_dir: Path, **kw) -> dict:
    return {**TINY, "data.path": str(store), "run.dir": str(run_dir), **kw}


def tiny_cfg(store: Path, run_dir: Path, **kw) -> Config:
    """``kw`` are dotted keys with '.' written as '__' (train__max_steps=4)."""
    extra = {k.replace("__", "."): v for k, v in kw.items()}
    return load(None, tiny_overrides(store, run_dir, **extra))


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


def se3t(*args: str, env: dict | None = None, timeout: float = 300, **kw):
    """Run ``python -m se3t.cli ARGS`` (the installed command) and return the process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "se3t.cli", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if r["kind"] == "step"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def empty_config(tmp_path: Path) -> Path:
    p = tmp_path / "empty.yaml"
    p.write_text("{}\n")
    return p


def sacct_ids(name: str, timeout: float = 60) -> list[str]:
    """Ids of the jobs SLURM's accounting knows by ``name`` (polled: it lags the queue)."""
    end = time.monotonic() + timeout
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "--name", name, "-o", "JobID"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ids = sorted({x.strip() for x in out.split() if x.strip()})
        if ids or time.monotonic() > end:
            return ids
        time.sleep(0.5)
