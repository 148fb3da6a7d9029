"""Exact resume: a real ``se3t train`` process killed with SIGKILL at an arbitrary step and
resumed ends with the same weights as an uninterrupted run (CPU, deterministic settings), at
the thread count users run (2 threads: the fused kernel's reductions are threaded) and with
the default kernel evaluation (the compiled one on a CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import REPO, as_args, empty_config, metrics, se3t, tiny_overrides, weights

pytestmark = pytest.mark.slow

# 3 epochs of 7 steps (220 training molecules, batch 32): the kill lands mid-epoch
RUN = {
    "train.epochs": 3,
    "train.checkpoint_every": 1,
    "train.deterministic": True,
    "train.warmup_epochs": 0.5,
    "train.grad_clip": 5.0,
}
# threads of every process: more than one, so the kernel's threaded sums are exercised
THREADS = {"OMP_NUM_THREADS": "2"}
# two layers of 16 channels: the kernel's backward pass splits its K tiles between threads
WIDER = {"model.num_layers": 2, "model.channels": 16}


def _wait_for_step(run_dir, step: int, proc, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "training ended before it could be killed"
        try:
            if any(r["kind"] == "step" and r["step"] >= step for r in metrics(run_dir)):
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    pytest.fail(f"step {step} not reached in {timeout}s")


def _kill_9_then_resume(store, tmp_path, **extra) -> None:
    """An uninterrupted run and the same run SIGKILLed mid-epoch then resumed (``extra``:
    more overrides) end with bit-identical weights and the same per-step losses."""
    cfg = empty_config(tmp_path)
    env = {**os.environ, **THREADS}
    run_cfg = {**RUN, **WIDER, **extra}
    # uninterrupted reference
    ref = se3t(
        "train",
        "--no-progress",
        "--config",
        str(cfg),
        *as_args(tiny_overrides(store, tmp_path / "ref", **run_cfg)),
        env=THREADS,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    # the same run, SIGKILLed at step >= 10 (epoch 1, mid-epoch, maybe mid-checkpoint)
    run = tmp_path / "killed"
    args = as_args(tiny_overrides(store, run, **run_cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "se3t.cli", "train", "--no-progress", "--config", str(cfg), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_step(run, 10, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in metrics(run))
    assert killed_at < 21
    # resume: `se3t train --config RUN_DIR` continues from last.pt
    res = se3t("train", "--no-progress", "--config", str(run), env=THREADS)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (run / "train.log").read_text()
    assert "resuming from" in log and "epoch 1, step " in log
    a, b = weights(tmp_path / "ref" / "last.pt"), weights(run / "last.pt")
    assert a.keys() == b.keys()
    # resume promises bit-identity on the machine that ran the uninterrupted reference
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # the metrics read as one run: every step once, the same losses
    steps = [r["step"] for r in metrics(run) if r["kind"] == "step"]
    assert steps == list(range(1, 22))
    ref_loss = [r["loss"] for r in metrics(tmp_path / "ref") if r["kind"] == "step"]
    got_loss = [r["loss"] for r in metrics(run) if r["kind"] == "step"]
    assert got_loss == ref_loss


def test_kill_9_mid_epoch_then_resume_matches_uninterrupted(qm9_store, tmp_path):
    _kill_9_then_resume(qm9_store, tmp_path)


def test_two_deterministic_processes_at_two_threads_end_bit_identical(qm9_store, tmp_path):
    """train.deterministic: two processes of the same run at 2 threads, each with its own
    (empty) kernel tuning cache, end with bit-identical weights and losses: the kernel's
    threaded sums are combined in a fixed order and its tiles are fixed, not timed."""
    cfg = empty_config(tmp_path)
    runs = []
    for name in ("a", "b"):
        env = {**THREADS, "XDG_CACHE_HOME": str(tmp_path / f"xdg-{name}")}
        over = tiny_overrides(qm9_store, tmp_path / name, **{**RUN, **WIDER, "train.epochs": 2})
        res = se3t("train", "--no-progress", "--config", str(cfg), *as_args(over), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        log = (tmp_path / name / "train.log").read_text()
        assert "cpp (deterministic: fixed tiles)" in log  # the compiled kernel ran
        runs.append(tmp_path / name)
    a, b = (weights(r / "last.pt") for r in runs)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between two identical runs"
    assert [r["loss"] for r in metrics(runs[0]) if r["kind"] == "step"] == [
        r["loss"] for r in metrics(runs[1]) if r["kind"] == "step"
    ]


def test_kill_9_resume_with_chunk_aware_sampling(qm9_store, tmp_path):
    """basis.read=chunks: batches come from the store's chunk-aware sampler, whose position
    the checkpoint holds; kill -9 and resume still match the uninterrupted run."""
    from se3t.basis import BasisSettings, finalize, precompute, write_manifest
    from se3t.train.checkpoint import load_checkpoint

    # ~25 molecules per chunk: the 220 training molecules span ~10 chunks, 2-chunk windows
    receipt = precompute(
        store := qm9_store,
        tmp_path / "cache",
        BasisSettings(max_degree=1, dtype="float32", chunk_edges=1024),
        progress=False,
    )
    finalize(receipt["store"])
    manifest = tmp_path / "manifest.json"
    write_manifest(receipt["store"], manifest)
    _kill_9_then_resume(
        store,
        tmp_path,
        **{
            "basis.use": "store",
            "basis.manifest": str(manifest),
            "basis.read": "chunks",
            "basis.cache_chunks": 2,
            "basis.buffer_chunks": 2,
        },
    )
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["sampler"]["kind"] == "chunks" and state["sampler"]["buffer_chunks"] == 2
    assert "from store" in (tmp_path / "killed" / "train.log").read_text()
