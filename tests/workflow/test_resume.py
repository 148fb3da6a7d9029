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

SHARDS = ("0", "1")


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

    # 1. kill the precompute job of one shard once the other shard is done
    first = start_snakemake(tmp_path, config, *args)
    done = wait_for(
        lambda: next((s for s in SHARDS if (receipts / f"{s}-of-2.json").exists()), None),
        300,
        "a finished basis shard",
        first,
    )
    (other,) = (s for s in SHARDS if s != done)
    victim = wait_for(
        lambda: find_process(first.pid, "basis", "precompute", "--shard", f"{other}/2"),
        120,
        f"the precompute job of shard {other}",
        first,
    )
    kill_tree([victim])
    out1 = _finish(first)
    assert first.returncode != 0, out1[-3000:]
    assert not (receipts / f"{other}-of-2.json").exists()
    done_mtime = (receipts / f"{done}-of-2.json").stat().st_mtime_ns

    # 2. the same command: the finished shard is kept, the other one is done; then kill
    #    training once it wrote its first checkpoint
    second = start_snakemake(tmp_path, config, *args)
    wait_for(lambda: (run_dir / "last.pt").exists(), 400, "the first checkpoint", second)
    trainer = find_process(second.pid, "launch")
    assert trainer is not None, "se3t launch is not running"
    kill_tree([trainer])
    out2 = _finish(second)
    assert second.returncode != 0, out2[-3000:]
    assert f"--shard {done}/2" not in out2  # the finished shard was not run again
    assert f"--shard {other}/2" in out2
    assert (receipts / f"{done}-of-2.json").stat().st_mtime_ns == done_mtime
    rerun = read_json(receipts / f"{other}-of-2.json")
    assert rerun["chunks_computed"] + rerun["chunks_reused"] == rerun["chunks_total"] > 0
    assert (results / "basis" / "manifest.json").exists()
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "train.done").exists()
    assert (run_dir / "last.pt").exists()  # Snakemake left the interrupted run's checkpoint
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
