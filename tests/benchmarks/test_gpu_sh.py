"""``benchmarks/gpu.sh --cpu``: the GPU table's script runs end to end where no GPU is, its
training-step part and its RoseTTAFold part, so that a lent GPU's one call is not spent on a
broken script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_sh_cpu_smoke_writes_both_tables(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--cpu", "--python", sys.executable, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = [json.loads(line) for line in (out / "rosettafold/points.jsonl").open()]
    assert {(p["impl"], p["mode"], p["size"]) for p in points} == {
        ("se3t", "forward", 64),
        ("se3t", "train", 64),
    }
    assert all(p["status"] == "ok" and p["time_s"] > 0 and p["device"] == "cpu" for p in points)
    assert all(p["edges"] == 64 * 63 for p in points)  # the full residue graph
    table = (out / "table.md").read_text()
    assert "| 32 | pairwise |" in table and "| 32 | full |" in table  # the training steps
    assert "| 64 | 4032 | forward | se3t |" in table and "| 64 | 4032 | train | se3t |" in table
    assert "device: cpu; memory columns: process RSS" in table


def test_rosettafold_timing_refuses_vendored_points_without_their_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/rosettafold/timing.py", "run", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--impls se3t" in proc.stderr
