"""Kill and resume with real kills: a run whose basis precompute is killed (SIGKILL, as the OOM
killer or a lost node does), then, started again with the same command, whose training is
killed, then started a third time with the same command, finishes -- keeping the finished basis
shard and continuing training from its checkpoint instead of starting over."""

from __future__ import annotations

import pytest
from wf_helpers import (
    find_process,
    kill_tree,
    read_json,
    read_jsonl,
    start_snakemake,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def _finish(proc, timeout=600):
    proc.wait(timeout=timeout)
    return proc.output_file.read_text()


def test_killed_twice_resumes_with_the_same_command(tmp_path, shared_data):
    config = write_config(
        tmp_path / "config.yaml",
        **shared_data,
        **{
            "basis.chunk_edges": 64,
            "basis.chunks_per_shard": 1,
            "train.epochs": 6,  # long enough to be killed after the first checkpoint
            "workflow.profile_memory": False,  # not about profiling: keep the test short
        },
    )
    args = ("--cores", "1")  # jobs one after another: shard 0 finishes before shard 1 starts
    results = tmp_path / "results"
    receipts = results / "basis" / "shards"
    run_dir = results / "runs" / "ci"

    # 1. kill the precompute job of shard 1 once shard 0 is done
    first = start_snakemake(tmp_path, config, *args)
    wait_for(lambda: (receipts / "0-of-2.json").exists(), 300, "basis shard 0", first)
    victim = wait_for(
        lambda: find_process(first.pid, "basis", "precompute", "--shard", "1/2"),
        120,
        "the precompute job of shard 1",
        first,
    )
    kill_tree([victim])
    out1 = _finish(first)
    assert first.returncode != 0, out1[-3000:]
    assert not (receipts / "1-of-2.json").exists()
    shard0_mtime = (receipts / "0-of-2.json").stat().st_mtime_ns

    # 2. the same command: shard 0 is kept, shard 1 is done; kill training after a checkpoint
    second = start_snakemake(tmp_path, config, *args)
    wait_for(lambda: (run_dir / "last.pt").exists(), 400, "the first checkpoint", second)
    trainer = find_process(second.pid, "launch")
    assert trainer is not None, "se3t launch is not running"
    kill_tree([trainer])
    out2 = _finish(second)
    assert second.returncode != 0, out2[-3000:]
    assert "--shard 0/2" not in out2  # the finished shard was not run again
    assert (receipts / "0-of-2.json").stat().st_mtime_ns == shard0_mtime
    shard1 = read_json(receipts / "1-of-2.json")
    assert shard1["chunks_computed"] + shard1["chunks_reused"] == shard1["chunks_total"] > 0
    assert (results / "basis" / "manifest.json").exists()
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "last.pt").exists()  # Snakemake kept the interrupted run's checkpoint
    lines_before = len(read_jsonl(run_dir / "metrics.jsonl"))
    steps_before = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]

    # 3. the same command again finishes; training continued from its checkpoint
    third = start_snakemake(tmp_path, config, *args)
    out3 = _finish(third)
    assert third.returncode == 0, out3[-5000:]
    assert "precompute" not in out3 and "finalize" not in out3
    records = read_jsonl(run_dir / "metrics.jsonl")
    resumed = records[lines_before:]
    assert resumed, "training wrote nothing after the restart"
    assert resumed[0]["step"] > 1, (steps_before, [r["step"] for r in resumed])
    epochs = [r["epoch"] for r in records if r.get("kind") == "epoch"]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 5, epochs
    assert (run_dir / "metrics.json").exists() and (results / "report.html").exists()
