"""``se3t launch`` across the nodes of the multi-node test cluster (tests/slurm/cluster.sh: each
node its own network and UTS namespace): 2 nodes x 1 task against one process, a node that fails
mid-training, a rank that crashes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import fault_jobs
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
from train_helpers import (  # noqa: E402
    as_args,
    empty_config,
    metrics,
    step_losses,
    tiny_overrides,
    weights,
)

from se3t.config import load  # noqa: E402
from se3t.train.checkpoint import load_checkpoint  # noqa: E402
from se3t.train.launch import launch, read_record  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 8
# deterministic, a checkpoint at every step (a failure loses at most the step under way)
RUN = {
    "train.max_steps": STEPS,
    "train.batch_size": 32,
    "train.deterministic": True,
    "train.checkpoint_every": 1,
    "train.eval_every": 100,
}
# Tolerance of 2 ranks vs 1 process: the same per-molecule gradients are added in another
# order (per rank, then across ranks), so float32 rounding differs: 1e-5 is ~80 float32 ulps
TOL = 1e-5


def _launch_over(cluster, store, run: Path, name: str, **kw) -> dict:
    return tiny_overrides(
        store,
        run,
        **{
            **RUN,
            "launch.cluster": "slurm",
            "launch.partition": cluster.partition,
            "launch.account": cluster.account,
            "launch.nodes": 2,
            "launch.tasks_per_node": 1,
            "launch.cpus_per_task": 1,
            "launch.time": 30,
            "run.name": name,
            **kw,
        },
    )


def _popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "se3t.cli", *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job_id(err: str) -> str:
    return err.split("submitted job ")[1].split()[0]


def _task_log(run: Path, job: str, rank: int) -> str:
    return (run / "submitit" / f"{job}_{rank}_log.err").read_text()


@pytest.fixture(scope="module")
def two_node_run(slurm_cluster, qm9_store, tmp_path_factory):
    """One uninterrupted 2-node x 1-task run and, beside it, the single process with the same
    global batch: ``(two-node run folder, job id, one-process run folder)``. Shared by the
    equality test and the node-failure test (its reference)."""
    tmp = tmp_path_factory.mktemp("two_node")
    cfg = empty_config(tmp)
    one = _popen(
        [
            "train",
            "--no-progress",
            "--config",
            str(cfg),
            *as_args(tiny_overrides(qm9_store, tmp / "one", **RUN)),
        ]
    )
    two = _popen(
        [
            "launch",
            "--config",
            str(cfg),
            *as_args(
                _launch_over(slurm_cluster, qm9_store, tmp / "two", f"2n-{uuid.uuid4().hex[:6]}")
            ),
        ]
    )
    _, err_one = one.communicate(timeout=600)
    _, err_two = two.communicate(timeout=600)
    assert one.returncode == 0, err_one[-3000:]
    assert two.returncode == 0, err_two[-3000:]
    job = _job_id(err_two)
    assert slurm_cluster.wait_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"
    return tmp / "two", job, tmp / "one"


def test_two_nodes_match_one_process(slurm_cluster, two_node_run):
    run, job, one = two_node_run
    # two hosts; each rank knows its place from SLURM and meets the others on the first node
    hosts = slurm_cluster.job_nodes(job)
    assert len(hosts) == 2 and set(hosts) <= set(slurm_cluster.nodes), hosts
    for rank, host in enumerate(hosts):
        line = re.search(
            r"rank (\d) of (\d) \(local rank (\d)\) on host (\S+),.* rendezvous at (\S+):",
            _task_log(run, job, rank),
        )
        assert line, _task_log(run, job, rank)[-2000:]
        assert line.groups() == (str(rank), "2", "0", host, hosts[0]), line.group(0)
    assert "localhost" not in _task_log(run, job, 1) and "127.0.0.1" not in _task_log(run, job, 1)
    assert "world size 2" in (run / "train.log").read_text()

    # the same training: losses to 1e-5 relative, weights to 1e-5, the same optimizer steps
    a, b = step_losses(one), step_losses(run)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=TOL), f"step {s}: {a[s]} vs {b[s]}"
    wa, wb = weights(one / "last.pt"), weights(run / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=TOL, atol=TOL, msg=k)
    sa, sb = load_checkpoint(one / "last.pt"), load_checkpoint(run / "last.pt")
    assert sa["step"] == sb["step"] == STEPS
    adam = [v["step"] for v in sb["optimizer"]["state"].values()]
    assert adam and all(int(x) == STEPS for x in adam)

    # checkpoints: written by rank 0 only, once per step, into the shared run folder, atomically
    # (no temporary file left behind)
    saves = re.findall(
        r"checkpoint last\.pt: epoch \d+, step (\d+)", (run / "train.log").read_text()
    )
    assert sorted({int(x) for x in saves}) == list(range(1, STEPS + 1))
    assert "checkpoint" not in _task_log(run, job, 1)
    assert (
        {"last.pt"}
        <= {p.name for p in run.iterdir() if p.suffix == ".pt"}
        <= {
            "best.pt",
            "last.pt",
        }
    )
    # se3t.io's temporary files are hidden (.last.XXXX.pt): none may remain
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [".launch.lock"]


def test_node_failure_requeues_and_resumes(slurm_cluster, qm9_store, two_node_run, tmp_path):
    """A node of the running job fails (its slurmd killed, the node DOWN): SLURM requeues the
    job (NODE_FAIL), it restarts on the nodes left, resumes from last.pt and ends with the same
    steps and the same weights as the uninterrupted run."""
    ref, _, _ = two_node_run
    run, name = tmp_path / "run", f"nf-{uuid.uuid4().hex[:6]}"
    proc = _popen(
        [
            "launch",
            "--config",
            str(empty_config(tmp_path)),
            *as_args(_launch_over(slurm_cluster, qm9_store, run, name)),
        ]
    )
    job, dead = None, None
    try:
        end = time.monotonic() + 300
        while time.monotonic() < end and proc.poll() is None:
            rec = read_record(run)
            done = [r for r in _safe_metrics(run) if r["kind"] == "step"]
            if rec and len(done) >= 3:
                job = rec["job_id"]
                break
            time.sleep(0.2)
        if job is None:
            ended = proc.communicate()[1][-3000:] if proc.poll() is not None else ""
            pytest.fail(f"training did not start: {ended}")
        assert len(done) < STEPS, "training finished before the node could fail"
        hosts = slurm_cluster.job_nodes(job)
        dead = hosts[1]
        slurm_cluster.kill_node(dead)
        slurm_cluster.wait_state(job, {"PENDING"}, timeout=120)  # requeued, held ~120 s
        slurm_cluster.release(job)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            if job:
                slurm_cluster.cancel(job)
        if dead:
            slurm_cluster.start_node(dead)
    assert proc.returncode == 0, err[-3000:]
    after = slurm_cluster.job_nodes(job)
    assert dead not in after and len(after) == 2, after
    history = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-j", job, "-o", "State,NodeList"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "NODE_FAIL" in history, history
    assert "resuming from" in (run / "train.log").read_text()
    assert [r["step"] for r in metrics(run) if r["kind"] == "step"] == list(range(1, STEPS + 1))
    assert step_losses(run) == step_losses(ref)
    # resume on the same machine promises bit-identity (docs/training.md, Determinism): the
    # ranks compute what they computed before, whichever hosts they land on
    wa, wb = weights(ref / "last.pt"), weights(run / "last.pt")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert load_checkpoint(run / "last.pt")["step"] == STEPS


def _safe_metrics(run):
    try:
        return metrics(run)
    except (OSError, ValueError):
        return []


def test_rank_crash_fails_the_job_promptly_with_its_error(
    slurm_cluster, qm9_store, tmp_path, caplog
):
    """An exception on rank 1 only, while rank 0 waits for it in a collective: srun's
    --kill-on-bad-exit ends the job at once (not at train.collective_timeout, nor at the time
    limit), and the launcher prints rank 1's log tail, traceback included."""
    caplog.set_level(logging.INFO, logger="se3t.train.launch")
    cloudpickle.register_pickle_by_value(fault_jobs)
    try:
        cfg = load(
            None,
            _launch_over(
                slurm_cluster,
                qm9_store,
                tmp_path / "run",
                f"crash-{uuid.uuid4().hex[:6]}",
                **{"train.max_steps": 50, "train.collective_timeout": 600},
            ),
        )
        start = time.monotonic()
        assert launch(cfg, poll_s=0.5, job_class=fault_jobs.CrashOnRank1) == 1
        took = time.monotonic() - start
    finally:
        cloudpickle.unregister_pickle_by_value(fault_jobs)
    err = caplog.text
    job = _job_id(err)
    assert "failed" in err and "(rank 1) ----" in err, err[-3000:]
    tail = err.split("(rank 1) ----")[1]
    assert "RuntimeError: injected fault on rank 1 at step 2" in tail, tail
    assert slurm_cluster.wait_state(job, {"FAILED"}, timeout=60) == "FAILED"
    assert took < 240, f"the job took {took:.0f} s to fail"
