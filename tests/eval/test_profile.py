"""``se3t profile`` on the CPU: real training steps in fresh processes, real out-of-memory."""

from __future__ import annotations

import json

import pytest

from se3t.config import ConfigError, load
from se3t.eval import largest_batch, parse_mode, profile
from se3t.eval.schema import PROFILE_SCHEMA, validate

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_memory_grows_with_batch_size_and_the_json_validates(profiled):
    doc = json.loads((profiled / "memory.json").read_text())
    validate(doc, PROFILE_SCHEMA, "memory.json")  # the documented schema, read back from disk
    points = doc["points"]
    assert [p["batch_size"] for p in points] == [4, 256, 1024, 6000, 12_000]
    ok = [p for p in points if p["status"] == "ok"]
    assert [p["batch_size"] for p in ok] == [4, 256, 1024], points
    peaks = [p["peak_memory_bytes"] for p in ok]
    assert peaks[0] < peaks[1] < peaks[2], peaks
    atoms = [p["num_atoms"] for p in ok]
    assert atoms[0] < atoms[1] < atoms[2]
    assert all(p["peak_memory_bytes"] >= p["baseline_memory_bytes"] for p in ok)
    assert all(p["mol_per_s"] > 0 and p["step_time_s"] > 0 for p in ok)
    assert doc["memory_metric"] == "cpu_peak_rss" and doc["environment"]["device"] == "cpu"
    for name in ("memory.png", "throughput.png"):
        assert (profiled / name).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_sweep_goes_on(profiled):
    doc = json.loads((profiled / "memory.json").read_text())
    oom, skipped = doc["points"][3], doc["points"][4]
    # a real allocation failure under the 0.8 GiB cap, caught in the point's own process
    assert oom["status"] == "oom" and "allocate" in oom["error"], oom
    assert skipped["status"] == "skipped" and "6000" in skipped["error"]
    assert skipped["peak_memory_bytes"] is None
    assert doc["largest_batch"] == {"fp32/pairwise": 1024}
    assert doc["largest_batch_per_mode"] == {"fp32": 1024}
    assert doc["memory_limit_bytes"] == int(0.8 * 2**30)


def test_modes_and_paths_are_checked(tiny_config_file, tmp_path):
    assert parse_mode("amp+lowmem") == ("amp", True) and parse_mode("fp32") == ("fp32", False)
    for bad in ("fp64", "amp+fast", "amp+lowmem+x"):
        with pytest.raises(ConfigError, match="profile mode"):
            parse_mode(bad)
    with pytest.raises(ConfigError, match="profile path 'fastest'"):
        profile(load(tiny_config_file), tmp_path, paths=["fastest"], progress=False)
    with pytest.raises(ConfigError, match="batch size 0"):
        profile(load(tiny_config_file), tmp_path, batch_sizes=[0], progress=False)
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
