"""``launch(cfg)`` on the real SLURM cluster across the submit gap: a launcher killed between
``sbatch`` and the completed ``launch.json`` leaves an intent record (``"state": "submitting"``,
no job id) or none at all; the next launch finds the live job by the run folder's tag in its
comment and attaches to it, and submits only when SLURM runs none."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from train_helpers import REPO, as_args, empty_config, metrics, sacct_ids, tiny_overrides

from se3t.config import load
from se3t.errors import InputError, Se3tError
from se3t.train.launch import launch, live_jobs, run_tag

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _cfg(cluster, store, run: Path, name: str, **kw):
    return load(
        None,
        tiny_overrides(
            store,
            run,
            **{
                "launch.cluster": "slurm",
                "launch.partition": cluster.partition,
                "launch.account": cluster.account,
                "launch.cpus_per_task": 1,
                "launch.time": 60,
                "run.name": name,
                "train.max_steps": 3,
                **kw,
            },
        ),
    )


def _record(run: Path) -> dict:
    return json.loads((run / "launch.json").read_text())


def _intent(run: Path, rec: dict, age: float) -> None:
    """The intent record a launcher killed ``age`` seconds after writing it leaves behind."""
    rec = {**rec, "state": "submitting", "submitting_at": time.time() - age}
    (run / "launch.json").write_text(json.dumps(rec))


def _squeue(tag: str) -> list[str]:
    """Ids of every job in the queue (any state) whose comment carries ``tag``."""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, check=True
    ).stdout
    return [i for i, _, c in (x.partition("|") for x in out.splitlines()) if tag in c.split()]


def _cancel_all(cluster, tag: str) -> None:
    for job in _squeue(tag):
        cluster.cancel(job)


def _messages(caplog) -> str:
    """The launcher's messages since the last call (its logger, ``se3t.train.launch``)."""
    text = caplog.text
    caplog.clear()
    return text


def test_relaunch_attaches_to_the_job_of_an_interrupted_submission(
    slurm_cluster, qm9_store, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="se3t.train.launch")
    run, name = tmp_path / "run", f"gap-{uuid.uuid4().hex[:6]}"
    tag = run_tag(run)
    # the gap for real: `sbatch --wait --hold` submits the job (held: it stays PENDING) and then
    # blocks, so the launcher sits inside sbatch with a live job and no job id; kill it there
    over = tiny_overrides(
        qm9_store,
        run,
        **{
            "launch.cluster": "slurm",
            "launch.partition": slurm_cluster.partition,
            "launch.account": slurm_cluster.account,
            "launch.cpus_per_task": 1,
            "launch.time": 60,
            "run.name": name,
            "train.max_steps": 3,
            "launch.extra": "{hold: true, wait: true}",
        },
    )
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "se3t.cli",
            "launch",
            "--no-wait",
            "--config",
            str(empty_config(tmp_path)),
            *as_args(over),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    held = _cfg(slurm_cluster, qm9_store, run, name, **{"launch.extra": {"hold": True}})
    try:
        end = time.monotonic() + 120
        while not _squeue(tag) and first.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-3000:]
        [job] = _squeue(tag)
        inside = psutil.Process(first.pid).children(recursive=True)
        assert any(p.name() == "sbatch" for p in inside)
        for proc in [psutil.Process(first.pid), *inside]:
            proc.kill()  # SIGKILL: the launcher (and the sbatch it waits for), as a reboot would
        first.communicate(timeout=60)
        rec = _record(run)  # the intent record, written before sbatch
        assert rec["state"] == "submitting" and "job_id" not in rec and rec["tag"] == tag
        assert slurm_cluster.job_state(job) == "PENDING"
        # another cluster is refused while that job lives, naming the folder and the job
        local = _cfg(slurm_cluster, qm9_store, run, name, **{"launch.cluster": "local"})
        with pytest.raises(InputError, match=rf"{run}.*SLURM job {job}.*PENDING"):
            launch(local, wait=False)
        # the same launch again: waits out the grace for the killed launcher's sbatch, then
        # attaches (same id), completes the record, submits nothing
        assert launch(held, wait=False) == 0
        out, err = capsys.readouterr().out, _messages(caplog)
        assert out.split() == [job] and "waiting" in err and "attaching" in err
        assert "submitted job" not in err
        # submitit names the job's pickle after sbatch returns: the dead launcher never did
        assert f"no {job}_submitted.pkl" in err
        assert (Path(rec["folder"]) / f"{job}_submitted.pkl").is_file()
        assert _record(run)["job_id"] == job and _record(run)["state"] == "submitted"
        # no record at all (lost or deleted): found by the tag all the same; waits, completes
        (run / "launch.json").unlink()
        result: list = []
        waiting = threading.Thread(target=lambda: result.append(launch(held, poll_s=0.5)))
        waiting.start()
        end = time.monotonic() + 120
        while not (run / "launch.json").is_file() and time.monotonic() < end:
            time.sleep(0.1)
        assert _record(run)["job_id"] == job
        subprocess.run(["scontrol", "release", job], check=True, capture_output=True)
        waiting.join(timeout=300)
        assert not waiting.is_alive() and result == [0]
        err = _messages(caplog)
        assert "attaching" in err and "submitted job" not in err and "done: step 3" in err
        assert slurm_cluster.wait_state(job, {"COMPLETED"}, timeout=60) == "COMPLETED"
        assert sacct_ids(f"se3t-{name}") == [job]  # one job for this run folder, ever
        assert [r["step"] for r in metrics(run) if r["kind"] == "step"] == [1, 2, 3]
    finally:
        _cancel_all(slurm_cluster, tag)


def test_interrupted_submission_without_a_live_job_submits_again(
    slurm_cluster, qm9_store, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="se3t.train.launch")
    run, name = tmp_path / "run", f"stale-{uuid.uuid4().hex[:6]}"
    tag = run_tag(run)
    try:
        # sbatch refuses the job: one line naming the folder and the job; no job id recorded
        bad = _cfg(slurm_cluster, qm9_store, run, name, **{"launch.partition": "nosuchpart"})
        with pytest.raises(Se3tError, match=rf"{run}.*se3t-{name}.*failed.*nosuchpart"):
            launch(bad, wait=False)
        rec = _record(run)
        assert rec["state"] == "failed" and "job_id" not in rec and rec["tag"] == tag
        assert _squeue(tag) == []
        # the intent record of a launcher killed inside an sbatch that did not submit (a minute
        # ago): no job of the folder lives, so the next launch submits one (a comment of the
        # user's kept after the tag) and records it
        _intent(run, {k: v for k, v in rec.items() if k != "error"}, age=60)
        held = _cfg(
            slurm_cluster,
            qm9_store,
            run,
            name,
            **{"launch.extra": {"hold": True, "comment": "mine"}},
        )
        assert launch(held, wait=False) == 0
        out, err = capsys.readouterr().out, _messages(caplog)
        job = out.split()[-1]
        assert "interrupted submission" in err and f"submitted job {job}" in err
        assert _record(run)["job_id"] == job and _record(run)["state"] == "submitted"
        assert _squeue(tag) == [job] and live_jobs(tag) == [(job, "PENDING")]
        comment = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%k"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert comment == [tag, "mine"]
    finally:
        _cancel_all(slurm_cluster, tag)
