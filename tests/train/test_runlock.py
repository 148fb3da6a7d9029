"""One training run per run folder: a second run fails at once naming the holder; a dead
holder's lock is taken over; a requeued SLURM job re-acquires its own lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from faults import config_args
from train_helpers import REPO, as_args, empty_config, se3t, tiny_overrides

from se3t.train.runlock import LOCK_FILE, RunLock, RunLocked, hold_run_folder, job_identity

HOLD = """
import sys, time
from se3t.train.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(run_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_fails_naming_the_holder_then_takes_over_a_dead_one(tmp_path):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        with pytest.raises(RunLocked) as err:
            RunLock(run).acquire()
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg and socket.gethostname() in msg and LOCK_FILE in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the holder died without releasing: its lock is stale and taken over
    with RunLock(run) as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert not (run / LOCK_FILE).exists()  # released on exit


def _foreign_lock(run, *, age_s: float, job=None):
    run.mkdir(parents=True, exist_ok=True)
    f = run / LOCK_FILE
    f.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "job": job, "token": "x"}))
    t = time.time() - age_s
    os.utime(f, (t, t))


def test_a_lock_from_another_host_is_stale_only_without_heartbeat(tmp_path):
    run = tmp_path / "run"
    _foreign_lock(run, age_s=10)
    with pytest.raises(RunLocked, match="host node-elsewhere, pid 1"):
        RunLock(run).acquire()
    _foreign_lock(run, age_s=3600)
    RunLock(run).acquire().release()


def test_the_heartbeat_keeps_a_lock_fresh(tmp_path):
    lock = RunLock(tmp_path / "run", heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 3600
        os.utime(lock.path, (old, old))
        time.sleep(0.3)
        assert lock.holder()["age_s"] < 60
    finally:
        lock.release()


def test_a_requeued_slurm_job_reacquires_its_own_lock(tmp_path, monkeypatch):
    """The job ran on another node before its preemption: same SLURM_JOB_ID, fresh lock."""
    run = tmp_path / "run"
    _foreign_lock(run, age_s=5, job="slurm:4242")
    monkeypatch.setenv("SLURM_JOB_ID", "999")
    with pytest.raises(RunLocked, match="job slurm:4242"):
        RunLock(run, job=job_identity()).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert job_identity() == "slurm:4242"
    with hold_run_folder(run, is_main=True) as lock:
        assert lock.holder()["job"] == "slurm:4242" and lock.holder()["pid"] == os.getpid()
    # other ranks of the job only check; another job's rank fails
    _foreign_lock(run, age_s=5, job="slurm:4242")
    with hold_run_folder(run, is_main=False):
        pass
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with pytest.raises(RunLocked), hold_run_folder(run, is_main=False):
        pass


@pytest.mark.slow
def test_two_train_commands_on_one_run_folder(qm9_store, tmp_path):
    """Before: both exited 0 and metrics.jsonl interleaved both runs."""
    run = tmp_path / "run"
    over = as_args(tiny_overrides(qm9_store, run, **{"train.max_steps": 400}))
    first = subprocess.Popen(
        [sys.executable, "-m", "se3t.cli", *config_args(["train"], empty_config(tmp_path)), *over],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (run / LOCK_FILE).exists()
        second = se3t(*config_args(["train"], empty_config(tmp_path)), *over)
        assert second.returncode == 2, second.stderr
        assert "in use by another training run" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
