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


# a stand-in trainer: writes se3t train's step and val records and the cores it may run on
_TRAINER = """
import json, os, sys, time
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "cpus"), "w") as fh:
    fh.write(" ".join(map(str, sorted(os.sched_getaffinity(0)))))
with open(os.path.join(out, "metrics.jsonl"), "a") as fh:
    for step in range(1, 51):
        time.sleep(0.02)
        fh.write(json.dumps({"kind": "step", "step": step}) + "\\n")
        if step % 25 == 0:
            fh.write(json.dumps({"kind": "val", "step": step}) + "\\n")
        fh.flush()
time.sleep(600)  # like se3t train at its last step: ended by the harness's SIGTERM
"""


def test_two_lanes_pin_each_implementation_and_keep_turns_within_a_lane(tmp_path):
    import argparse
    import os
    import sys

    m = harness()
    runs = []
    for impl, seed in [("nvidia", 0), ("se3t", 0), ("se3t", 1)]:
        d = tmp_path / "runs" / f"{impl}-s{seed}"
        argv = [sys.executable, "-c", _TRAINER, str(d)]
        runs.append(m.Run(f"{impl}-s{seed}", argv, d, dict(os.environ), impl))
    a = argparse.Namespace(steps=50, segment=25, eval_every=25, lanes=2)
    m.take_turns(runs, a, None, tmp_path / "clock.json")

    clock = json.loads((tmp_path / "clock.json").read_text())
    assert {r: c["end"] for r, c in clock.items()} == dict.fromkeys(clock, "completed 50 steps")
    cores = {r.name: (r.dir / "cpus").read_text() for r in runs}
    last = str(1 % (os.cpu_count() or 1))  # lane 1 on core 1 (core 0 on one CPU)
    assert cores == {"nvidia-s0": "0", "se3t-s0": last, "se3t-s1": last}
    s0, s1 = clock["se3t-s0"]["intervals"], clock["se3t-s1"]["intervals"]
    assert len(s0) == len(s1) == 2  # two turns of 25 steps each
    assert all(b1 <= a2 or b2 <= a1 for a1, b1 in s0 for a2, b2 in s1)  # one at a time
    nv = clock["nvidia-s0"]["intervals"]
    assert any(a1 < b2 and a2 < b1 for a1, b1 in nv for a2, b2 in s0 + s1)  # lanes overlap
