"""``se3t launch`` on the real single-node SLURM cluster (tests/slurm/cluster.sh): a two-task
DDP job, a job preempted mid-run (SIGUSR2) that requeues and resumes, a job that fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
from train_helpers import as_args, empty_config, metrics, tiny_overrides  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _launch_args(cluster, store, run_dir, name, **kw) -> list[str]:
    over = tiny_overrides(store, run_dir, **{
        "launch.cluster": "slurm", "launch.partition": cluster.partition,
        "launch.account": cluster.account, "launch.cpus_per_task": 1, "launch.time": 60,
        "run.name": name, **kw,
    })  # fmt: skip
    return as_args(over)


def _se3t_launch(args, **popen_kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "se3t.cli", "launch", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen_kw)  # fmt: skip


def _job_id(name: str, proc, timeout: float = 300) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"se3t launch ended before job se3t-{name} was seen:\n"
                        f"{proc.stderr.read()[-3000:]}")  # fmt: skip
        out = subprocess.run(["squeue", "-h", "-n", f"se3t-{name}", "-o", "%i"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        if out:
            return out[0]
        time.sleep(0.3)
    pytest.fail(f"job se3t-{name} never appeared in squeue")


def test_two_task_ddp_job_completes(slurm_cluster, qm9_store, tmp_path):
    run = tmp_path / "run"
    args = [str(empty_config(tmp_path)),
            *_launch_args(slurm_cluster, qm9_store, run, f"ddp-{uuid.uuid4().hex[:6]}",
                          **{"launch.tasks_per_node": 2, "train.max_steps": 4})]  # fmt: skip
    proc = _se3t_launch(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "submitted job" in err and "done: step 4" in err  # progress streamed
    log = (run / "train.log").read_text()
    assert "world size 2" in log
    steps = [r["step"] for r in metrics(run) if r["kind"] == "step"]
    assert steps == [1, 2, 3, 4]
    job = err.split("submitted job ")[1].split()[0]
    # SLURM's own record agrees (sacct lags the job's end by a moment)
    assert slurm_cluster.wait_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"


@pytest.mark.parametrize("how", ["usr2", "partition"])
def test_preempted_job_requeues_and_resumes(slurm_cluster, qm9_store, tmp_path, how):
    """``usr2``: ``scancel --signal=USR2`` (what SLURM sends before a time limit);
    ``partition``: a job on the higher-priority partition asks for the free CPUs and ours, so
    SLURM preempts ours (preempt_send_user_signal: USR2, GraceTime, requeue)."""
    run = tmp_path / "run"
    name = f"rq-{uuid.uuid4().hex[:6]}"
    # long enough (checkpoints at every step) that an unloaded machine is still training when
    # the signal lands, about a second after the third step
    total = 60
    args = [str(empty_config(tmp_path)),
            *_launch_args(slurm_cluster, qm9_store, run, name,
                          **{"train.max_steps": total, "train.batch_size": 16,
                             "train.checkpoint_every": 1,
                             "launch.partition": slurm_cluster.preemptable_partition})]  # fmt: skip
    proc = _se3t_launch(args)
    try:
        job = _job_id(name, proc)
        # wait until training is under way (a few steps logged), then preempt: USR2
        end = time.monotonic() + 180
        while time.monotonic() < end:
            done = [r for r in _safe_metrics(run) if r["kind"] == "step"]
            if len(done) >= 3:
                assert len(done) < total, "training finished before it could be preempted"
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not start")
        urgent = None
        if how == "usr2":
            slurm_cluster.signal(job, "USR2")
        else:
            urgent = subprocess.run(
                ["sbatch", "--parsable", "-p", slurm_cluster.urgent_partition, "-A",
                 slurm_cluster.account, "-n", str(slurm_cluster.idle_cpus() + 1), "-c", "1", "-J",
                 f"se3t-urgent-{name}", "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 3"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
        slurm_cluster.wait_state(job, {"PENDING"}, timeout=120)  # requeued, held ~120 s
        if urgent:
            slurm_cluster.wait_state(urgent, {"COMPLETED"}, timeout=120)
        slurm_cluster.release(job)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            slurm_cluster.cancel(job)
    assert proc.returncode == 0, err[-3000:]
    log = (run / "train.log").read_text()
    assert "stopped by signal 12" in log and "resuming from" in log
    steps = [r["step"] for r in metrics(run) if r["kind"] == "step"]
    assert steps == list(range(1, total + 1))  # same total, each step once
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True,
                              text=True).stdout  # fmt: skip
    assert "Restarts=1" in restarts, restarts


def _safe_metrics(run):
    try:
        return metrics(run)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_failing_job_reports_its_log_tail(slurm_cluster, qm9_store, tmp_path):
    # the launcher cannot know the compute node has no GPU; the job fails there
    args = [str(empty_config(tmp_path)),
            *_launch_args(slurm_cluster, qm9_store, tmp_path / "run",
                          f"fail-{uuid.uuid4().hex[:6]}", **{"train.device": "cuda"})]  # fmt: skip
    proc = _se3t_launch(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "failed" in err and "last lines of" in err
    assert "cuda requested but no CUDA device" in err.split("last lines of")[1]


def test_bad_input_fails_before_submission(slurm_cluster, tmp_path):
    args = [str(empty_config(tmp_path)), f"data.path={tmp_path / 'none.zarr'}",
            "launch.cluster=slurm", f"run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = _se3t_launch(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "none.zarr" in err and "submitted" not in err


def test_srun_two_tasks_train_as_ddp_ranks(slurm_cluster, qm9_store, tmp_path):
    """`srun -n 2 se3t train` without submitit: the ranks come from SLURM_PROCID/NTASKS."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        ["srun", "-p", slurm_cluster.partition, "-A", slurm_cluster.account, "-n", "2", "-c", "1",
         "--kill-on-bad-exit=1", "-J", f"se3t-srun-{uuid.uuid4().hex[:6]}", sys.executable,
         "-m", "se3t.cli", "train", "--no-progress", str(empty_config(tmp_path)),
         *as_args(tiny_overrides(qm9_store, run, **{"train.max_steps": 3}))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2 (slurm)" in (run / "train.log").read_text()
    assert [r["step"] for r in metrics(run) if r["kind"] == "step"] == [1, 2, 3]
