"""``se3t profile`` on the CPU: real training steps in fresh processes, real out-of-memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from se3t.config import ConfigError, load
from se3t.eval import largest_batch, parse_mode, profile
from se3t.eval.schema import PROFILE_SCHEMA, validate

PNG = b"\x89PNG\r\n\x1a\n"


def test_memory_grows_with_batch_size_and_the_json_validates(profiled):
    doc = json.loads((profiled / "memory.json").read_text())
    validate(doc, PROFILE_SCHEMA, "memory.json")  # the documented schema, read back from disk
    points = [p for p in doc["points"] if p["mode"] == "fp32" and p["path"] == "pairwise"]
    assert [p["batch_size"] for p in points] == [4, 256, 1024]
    assert all(p["status"] == "ok" for p in points), points
    peaks = [p["peak_memory_bytes"] for p in points]
    assert peaks[0] < peaks[1] < peaks[2], peaks
    atoms = [p["num_atoms"] for p in points]
    assert atoms[0] < atoms[1] < atoms[2]
    assert all(p["peak_memory_bytes"] >= p["baseline_memory_bytes"] for p in points)
    assert all(p["mol_per_s"] > 0 for p in points)
    assert doc["memory_metric"] == "cpu_peak_rss" and doc["environment"]["device"] == "cpu"
    assert doc["largest_batch"] == {"fp32/pairwise": 1024}
    for name in ("memory.png", "throughput.png"):
        assert (profiled / name).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tiny_config_file, tmp_path):
    # 0.8 GiB of data segment holds torch and 8 molecules, not 6,000 at once (~0.95 GiB)
    doc = profile(
        load(tiny_config_file), tmp_path, batch_sizes=[8, 6000, 12_000], modes=["fp32"],
        paths=["pairwise"], steps=1, warmup_steps=0, memory_limit=int(0.8 * 2**30),
        progress=False,
    )  # fmt: skip
    status = [p["status"] for p in doc["points"]]
    assert status == ["ok", "oom", "skipped"], doc["points"]
    assert "allocate" in doc["points"][1]["error"] or "memory" in doc["points"][1]["error"]
    assert doc["largest_batch"] == {"fp32/pairwise": 8}
    assert doc["largest_batch_per_mode"] == {"fp32": 8}
    validate(json.loads((tmp_path / "memory.json").read_text()), PROFILE_SCHEMA, "memory.json")


def test_modes_and_paths_are_checked(tiny_config_file, tmp_path):
    assert parse_mode("amp+lowmem") == ("amp", True) and parse_mode("fp32") == ("fp32", False)
    for bad in ("fp64", "amp+fast", "amp+lowmem+x"):
        with pytest.raises(ConfigError, match="profile mode"):
            parse_mode(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "profile", str(tiny_config_file), "--out",
         str(tmp_path), "--paths", "fastest"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "'fastest'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "memory.json").exists()


def test_largest_batch_per_mode_and_path():
    pts = [
        {"mode": "fp32", "path": "pairwise", "batch_size": 10, "status": "ok"},
        {"mode": "fp32", "path": "pairwise", "batch_size": 50, "status": "oom"},
        {"mode": "fp32", "path": "fused", "batch_size": 50, "status": "ok"},
        {"mode": "amp", "path": "fused", "batch_size": 10, "status": "error"},
    ]
    per_path, per_mode = largest_batch(pts)
    assert per_path == {"fp32/pairwise": 10, "fp32/fused": 50, "amp/fused": None}
    assert per_mode == {"fp32": 50, "amp": None}
