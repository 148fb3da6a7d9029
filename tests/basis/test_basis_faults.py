"""Faults with real processes: ``kill -9`` mid-way then resume, and two concurrent precomputes
of one key. The workers run the real basis maths, held at a gate so the test acts mid-way at a
known point however loaded the machine."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from basis_helpers import build, held, open_gate, se3t, shard_files, spawn_worker, stored_rows

from se3t.basis import basis_key, finalize, store_path, verify
from se3t.data.store import fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(qm9_store, tmp_path_factory):
    """The store computed in a single go, to compare the fault-tolerant ones with."""
    return stored_rows(build(qm9_store, tmp_path_factory.mktemp("reference")))


def _wait_for(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_then_resume(qm9_store, tmp_path, reference):
    store = store_path(tmp_path, basis_key(fingerprint(qm9_store), 3, "float32"))
    gate = tmp_path / "gate"  # held before its third chunk: the first shard (two) written
    proc = spawn_worker(qm9_store, tmp_path, tmp_path / "r0.json", gate=gate, gate_after=2)
    try:
        _wait_for(lambda: len(shard_files(store)) >= 1, what="the first shard")
        held(gate, [proc])
        os.kill(proc.pid, signal.SIGKILL)  # kill -9 mid-way: one shard written, one chunk begun
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(shard_files(store))
    assert done == 1, f"{done} shards written before the kill"
    assert not (tmp_path / "r0.json").exists()

    # the real command line resumes: only the missing chunks are computed
    se3t(
        "basis",
        "precompute",
        "--dataset",
        str(qm9_store),
        "--cache",
        str(tmp_path),
        "--receipt",
        str(tmp_path / "r1.json"),
        "--quiet",
        "basis.chunk_edges=512",
        "basis.chunks_per_shard=2",
    )
    receipt = json.loads((tmp_path / "r1.json").read_text())
    assert receipt["chunks_reused"] == 2 * done
    assert receipt["chunks_computed"] == 15 - 2 * done
    finalize(store)
    np.testing.assert_array_equal(stored_rows(store), reference)
    assert verify(store, sample=500).ok


def test_two_concurrent_precomputes_of_one_key(qm9_store, tmp_path, reference):
    # both held before their first chunk, then released together: neither can finish the
    # key before the other has begun, however slowly either process starts
    gate = tmp_path / "gate"
    procs = [
        spawn_worker(qm9_store, tmp_path, tmp_path / f"r{i}.json", delay=0.1, gate=gate)
        for i in range(2)
    ]
    held(gate, procs)
    open_gate(gate)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err  # neither fails
    receipts = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert receipts[0]["store"] == receipts[1]["store"]
    store = receipts[0]["store"]
    # each chunk computed once per process at most, all accounted for by each process
    for r in receipts:
        assert r["chunks_computed"] + r["chunks_reused"] + r["chunks_by_others"] == 15
    assert 15 <= sum(r["chunks_computed"] for r in receipts) <= 17
    assert all(r["chunks_computed"] > 0 for r in receipts), "the work was not shared"
    assert sorted(os.listdir(tmp_path / "basis")) == [os.path.basename(store)]  # one store
    finalize(store)
    np.testing.assert_array_equal(stored_rows(store), reference)
    assert verify(store, sample=500).ok


def test_cli_errors_are_one_line(qm9_store, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    proc = se3t(
        "basis", "precompute", "--dataset", str(qm9_store), "--cache", str(blocker), check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "basis cache" in proc.stderr
    assert "Traceback" not in proc.stderr
