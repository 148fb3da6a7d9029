"""benchmarks/accuracy/run.py: a run's own wall-clock is the sum of its turns, and the time to
an MAE leaves its validations out."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def harness():
    spec = importlib.util.spec_from_file_location("acc_run", REPO / "benchmarks/accuracy/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_own_clock_counts_only_the_runs_turns():
    m = harness()
    turns = [[100.0, 110.0], [130.0, 135.0], [200.0, None]]  # the last turn still running
    assert m.own_clock(turns, 105.0) == 5.0
    assert m.own_clock(turns, 120.0) == 10.0  # paused: the clock stands still
    assert m.own_clock(turns, 134.0) == 14.0
    assert m.own_clock(turns, 210.0) == 25.0


def test_curves_leave_validation_time_out(tmp_path):
    m = harness()
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    recs = [
        {"kind": "val", "step": 0, "val_mae": {"homo": 0.5}, "eval_s": 4.0, "time": 104.0},
        {"kind": "step", "step": 25, "loss": 0.8, "lr": 0.002, "time": 150.0},
        {"kind": "val", "step": 50, "val_mae": {"homo": 0.3}, "eval_s": 6.0, "time": 206.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    clock = {"a": {"intervals": [[100.0, 160.0], [180.0, 210.0]], "end": "done", "step": 50}}
    (tmp_path / "clock.json").write_text(json.dumps(clock))
    cv = m.curves(tmp_path)["a"]
    assert [p["wall_s"] for p in cv["val"]] == [4.0, 86.0]
    assert [p["train_s"] for p in cv["val"]] == [0.0, 76.0]
    assert cv["loss"][0]["train_s"] == 46.0
    assert m.time_to(cv["val"], 0.4) == 76.0 and m.time_to(cv["val"], 0.1) is None
