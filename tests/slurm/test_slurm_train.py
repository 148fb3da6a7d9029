"""``se3t launch`` on the real multi-node SLURM cluster (tests/slurm/cluster.sh): a two-task
DDP job on one node, a 2-node job preempted mid-run (SIGUSR2) that requeues and resumes, a job
that fails, ``srun`` ranks, a relaunch that attaches instead of submitting twice."""

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
from train_helpers import as_args, empty_config, metrics, sacct_ids, tiny_overrides  # noqa: E402

from se3t.train.launch import read_record  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _launch_args(cluster, store, run_dir, name, **kw) -> list[str]:
    over = tiny_overrides(
        store,
        run_dir,
        **{
            "launch.cluster": "slurm",
            "launch.partition": cluster.partition,
            "launch.account": cluster.account,
            "launch.cpus_per_task": 1,
            "launch.time": 60,
            "run.name": name,
            **kw,
        },
    )
    return as_args(over)


def _se3t_launch(args, **popen_kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "se3t.cli", "launch", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen_kw,
    )


def _job_id(name: str, proc, timeout: float = 300) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(
                f"se3t launch ended before job se3t-{name} was seen:\n{proc.stderr.read()[-3000:]}"
            )
        out = subprocess.run(
            ["squeue", "-h", "-n", f"se3t-{name}", "-o", "%i"], capture_output=True, text=True
        ).stdout.split()
        if out:
            return out[0]
        time.sleep(0.3)
    pytest.fail(f"job se3t-{name} never appeared in squeue")


def test_two_task_ddp_job_completes(slurm_cluster, qm9_store, tmp_path):
    run = tmp_path / "run"
    args = [
        "--config",
        str(empty_config(tmp_path)),
        *_launch_args(
            slurm_cluster,
            qm9_store,
            run,
            f"ddp-{uuid.uuid4().hex[:6]}",
            **{"launch.tasks_per_node": 2, "train.max_steps": 4},
        ),
    ]
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
    """A 2-node job (one rank per node). ``usr2``: ``scancel --signal=USR2`` (what SLURM sends
    before a time limit: submitit asks for it 90 s ahead); ``partition``: a job on the
    higher-priority partition asks for the free CPUs and ours, so SLURM preempts ours
    (preempt_send_user_signal: USR2, GraceTime, requeue)."""
    run = tmp_path / "run"
    name = f"rq-{uuid.uuid4().hex[:6]}"
    # long enough (checkpoints at every step) that an unloaded machine is still training when
    # the signal lands, about a second after the third step
    total = 60
    args = [
        "--config",
        str(empty_config(tmp_path)),
        *_launch_args(
            slurm_cluster,
            qm9_store,
            run,
            name,
            **{
                "train.max_steps": total,
                "train.batch_size": 16,
                "train.checkpoint_every": 1,
                "launch.partition": slurm_cluster.preemptable_partition,
                "launch.nodes": 2,
            },
        ),
    ]
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
                [
                    "sbatch",
                    "--parsable",
                    "-p",
                    slurm_cluster.urgent_partition,
                    "-A",
                    slurm_cluster.account,
                    "-n",
                    str(slurm_cluster.idle_cpus() + 1),
                    "-c",
                    "1",
                    "-J",
                    f"se3t-urgent-{name}",
                    "-o",
                    str(tmp_path / "urgent.out"),
                    "--wrap",
                    "sleep 3",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
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
    restarts = subprocess.run(
        ["scontrol", "show", "job", job], capture_output=True, text=True
    ).stdout
    assert "Restarts=1" in restarts, restarts
    assert len(slurm_cluster.job_nodes(job)) == 2
    assert "world size 2" in log


def _safe_metrics(run):
    try:
        return metrics(run)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_failing_job_reports_its_log_tail(slurm_cluster, qm9_store, tmp_path):
    # the launcher cannot know the compute node has no GPU; the job fails there
    args = [
        "--config",
        str(empty_config(tmp_path)),
        *_launch_args(
            slurm_cluster,
            qm9_store,
            tmp_path / "run",
            f"fail-{uuid.uuid4().hex[:6]}",
            **{"train.device": "cuda"},
        ),
    ]
    proc = _se3t_launch(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "failed" in err and "last lines of" in err
    assert "cuda requested but no CUDA device" in err.split("last lines of")[1]


def test_bad_input_fails_before_submission(slurm_cluster, tmp_path):
    args = [
        "--config",
        str(empty_config(tmp_path)),
        f"data.path={tmp_path / 'none.zarr'}",
        "launch.cluster=slurm",
        f"run.dir={tmp_path / 'run'}",
    ]
    proc = _se3t_launch(args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "none.zarr" in err and "submitted" not in err


def test_srun_two_tasks_train_as_ddp_ranks(slurm_cluster, qm9_store, tmp_path):
    """`srun -n 2 se3t train` without submitit: the ranks come from SLURM_PROCID/NTASKS."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            "srun",
            "-p",
            slurm_cluster.partition,
            "-A",
            slurm_cluster.account,
            "-n",
            "2",
            "-c",
            "1",
            "--kill-on-bad-exit=1",
            "-J",
            f"se3t-srun-{uuid.uuid4().hex[:6]}",
            sys.executable,
            "-m",
            "se3t.cli",
            "train",
            "--no-progress",
            "--config",
            str(empty_config(tmp_path)),
            *as_args(tiny_overrides(qm9_store, run, **{"train.max_steps": 3})),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 2 (slurm)" in (run / "train.log").read_text()
    assert [r["step"] for r in metrics(run) if r["kind"] == "step"] == [1, 2, 3]


def test_relaunch_attaches_to_running_job_never_submits_twice(slurm_cluster, qm9_store, tmp_path):
    """Snakemake (or the user) killed while ``se3t launch`` waits: the job goes on; the same
    command again attaches to it (one job in sacct) instead of submitting a second job into the
    run folder. Once that job has ended, a new launch submits a new job that resumes."""
    run = tmp_path / "run"
    name = f"once-{uuid.uuid4().hex[:6]}"
    common = {"train.max_steps": 6, "train.checkpoint_every": 1}
    # held by SLURM (sbatch --hold): certainly still PENDING when launched again
    args = [
        "--config",
        str(empty_config(tmp_path)),
        *_launch_args(
            slurm_cluster, qm9_store, run, name, **{**common, "launch.extra": "{hold: true}"}
        ),
    ]
    first = _se3t_launch(args)
    procs, job = [first], None
    try:
        job = _job_id(name, first)
        # the complete record (the intent record, written before sbatch, has no job id yet)
        end = time.monotonic() + 60
        while read_record(run) is None and time.monotonic() < end:
            time.sleep(0.1)
        first.kill()  # SIGKILL, as Snakemake's cancel or a lost terminal would
        first.communicate(timeout=60)
        record = json.loads((run / "launch.json").read_text())
        assert record["job_id"] == job and record["cluster"] == "slurm"
        assert Path(record["folder"]).is_dir() and record["tasks"] == 1
        assert slurm_cluster.job_state(job) == "PENDING"
        # the same command with --no-wait: attaches (prints the same id), submits nothing
        again = subprocess.run(
            [sys.executable, "-m", "se3t.cli", "launch", "--no-wait", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.split() == [job] and "attaching" in again.stderr
        # the same command, waiting: attaches, streams, returns the job's outcome
        waiting = _se3t_launch(args)
        procs.append(waiting)
        time.sleep(3)
        subprocess.run(["scontrol", "release", job], check=True, capture_output=True)
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err[-3000:]
        assert "attaching" in err and "submitted job" not in err and "done: step 6" in err
        assert slurm_cluster.wait_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"
        assert sacct_ids(f"se3t-{name}") == [job]
        assert [r["step"] for r in metrics(run) if r["kind"] == "step"] == list(range(1, 7))
        # the job has ended: a new launch submits a new job, which resumes from last.pt
        args_free = [
            "--config",
            str(empty_config(tmp_path)),
            *_launch_args(slurm_cluster, qm9_store, run, name, **common),
        ]
        last = _se3t_launch(args_free)
        procs.append(last)
        out, err = last.communicate(timeout=300)
        assert last.returncode == 0, err[-3000:]
        assert f"previous job {job} is COMPLETED" in err and "submitted job" in err
        second = err.split("submitted job ")[1].split()[0]
        assert second != job and json.loads((run / "launch.json").read_text())["job_id"] == second
        assert "resuming from" in (run / "train.log").read_text()
        assert slurm_cluster.wait_state(second, {"COMPLETED"}, timeout=60) == "COMPLETED"
        assert sacct_ids(f"se3t-{name}") == sorted([job, second])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        rec = (
            json.loads((run / "launch.json").read_text()) if (run / "launch.json").is_file() else {}
        )
        for jid in {job, rec.get("job_id")} - {None}:
            if slurm_cluster.job_state(jid) in ("PENDING", "RUNNING"):
                slurm_cluster.cancel(jid)
