"""``se3t profile`` on the CPU: real training steps in fresh processes, real out-of-memory."""

from __future__ import annotations

import json

import pytest

from se3t.config import ConfigError, load
from se3t.eval import largest_batch, profile
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
    added = [p["added_memory_bytes"] for p in ok]  # what the memory plot draws
    assert added[0] < added[1] < added[2], added
    assert all(
        p["added_memory_bytes"] == p["peak_memory_bytes"] - p["baseline_memory_bytes"] for p in ok
    )
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
    assert doc["largest_batch"] == {"fp32 pairwise": 1024}
    assert doc["largest_batch_per_precision"] == {"fp32": 1024}
    assert doc["memory_limit_bytes"] == int(0.8 * 2**30)


def test_precisions_and_fusions_are_checked(tiny_config_file, tmp_path):
    # the grid is in the config's words, checked when the config is loaded
    for bad, key in [
        ("eval.profile_precision=[fp64]", "eval.profile_precision"),
        ("eval.profile_fusion=[fastest]", "eval.profile_fusion"),
        ("eval.profile_low_memory=[maybe]", "eval.profile_low_memory"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(tiny_config_file, [bad])
    with pytest.raises(ConfigError, match="'eval.profile_fusion'"):
        profile(load(tiny_config_file, ["eval.profile_fusion=[]"]), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="0 must be > 0"):
        profile(load(tiny_config_file, ["eval.profile_batch_sizes=[0]"]), tmp_path, progress=False)
    assert not (tmp_path / "memory.json").exists()


def test_largest_batch_per_series_and_precision():
    def pt(precision, fusion, b, status, low_memory=False):
        return dict(
            precision=precision, fusion=fusion, low_memory=low_memory, batch_size=b, status=status
        )

    pts = [
        pt("fp32", "pairwise", 10, "ok"),
        pt("fp32", "pairwise", 50, "oom"),
        pt("fp32", "full", 50, "ok"),
        pt("fp16", "full", 10, "error", low_memory=True),
    ]
    per_series, per_precision = largest_batch(pts)
    assert per_series == {"fp32 pairwise": 10, "fp32 full": 50, "fp16 full low_memory": None}
    assert per_precision == {"fp32": 50, "fp16": None}
