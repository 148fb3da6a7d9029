"""DDP: two gloo ranks launched by torchrun follow the loss trajectory of one process with the
same global batch (the ranks split each global batch; gradients are averaged)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from train_helpers import REPO, as_args, empty_config, se3t, step_losses, tiny_overrides, weights

pytestmark = pytest.mark.slow

RUN = {
    "train.max_steps": 6,
    "train.batch_size": 32,
    "train.deterministic": True,
    "train.grad_clip": 5.0,
}
# Tolerance: the two runs add the same per-molecule gradients in a different order (per rank,
# then across ranks), so float32 rounding differs slightly and compounds over 6 Adam steps
RTOL = 1e-4  # measured: 4e-7 on the losses, 1.3e-5 on the weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process(qm9_store, tmp_path):
    cfg = empty_config(tmp_path)
    one = se3t(
        "train",
        "--no-progress",
        "--config",
        str(cfg),
        *as_args(tiny_overrides(qm9_store, tmp_path / "one", **RUN)),
    )
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc-per-node=2",
            f"--master-port={_free_port()}",
            "-m",
            "se3t.cli",
            "train",
            "--no-progress",
            "--config",
            str(cfg),
            *as_args(tiny_overrides(qm9_store, tmp_path / "two", **RUN)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert "world size 2" in log
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=RTOL), f"step {s}: {a[s]} vs {b[s]}"
    wa, wb = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=RTOL, atol=1e-4, msg=k)


def _torchrun(cfg, overrides: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc-per-node=2",
            f"--master-port={_free_port()}",
            "-m",
            "se3t.cli",
            "train",
            "--no-progress",
            "--config",
            str(cfg),
            *as_args(overrides),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_ranks_with_chunk_aware_sampling_resume_exactly(qm9_store, tmp_path):
    """basis.read=chunks under DDP: each rank draws its own chunks (half the global batch); a
    run stopped after epoch 0 and resumed for epoch 1 ends as the 2-epoch run does."""
    from train_helpers import metrics

    from se3t.basis import BasisSettings, finalize, precompute, write_manifest
    from se3t.train.checkpoint import load_checkpoint

    receipt = precompute(
        qm9_store,
        tmp_path / "cache",
        BasisSettings(max_degree=1, dtype="float32", chunk_edges=1024),
        progress=False,
    )
    finalize(receipt["store"])
    manifest = tmp_path / "manifest.json"
    write_manifest(receipt["store"], manifest)
    cfg = empty_config(tmp_path)
    run = {
        "train.batch_size": 32,
        "train.deterministic": True,
        "train.scheduler": "constant",
        "train.warmup_epochs": 0,
        "basis.use": "store",
        "basis.manifest": str(manifest),
        "basis.read": "chunks",
        "basis.buffer_chunks": 2,
    }
    ref = _torchrun(cfg, tiny_overrides(qm9_store, tmp_path / "ref", **run, **{"train.epochs": 2}))
    assert ref.returncode == 0, ref.stderr[-3000:]
    part = tmp_path / "part"
    for epochs in (1, 2):
        res = _torchrun(cfg, tiny_overrides(qm9_store, part, **run, **{"train.epochs": epochs}))
        assert res.returncode == 0, res.stderr[-3000:]
    assert "world size 2" in (part / "train.log").read_text()
    recs = metrics(part)
    assert all(r["device_name"].startswith("2 x ") for r in recs)
    state = load_checkpoint(part / "last.pt")
    assert state["sampler"]["kind"] == "chunks" and state["epoch"] == 2
    a, b = step_losses(tmp_path / "ref"), step_losses(part)
    assert a == b and sorted(a) == list(range(1, max(a) + 1))
    wa, wb = weights(tmp_path / "ref" / "last.pt"), weights(part / "last.pt")
    # the same ranks, shapes and machine resume bit for bit (gloo sums in a fixed order)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
