"""SLURM's view of a run's jobs: their state, the live jobs of a run folder (found by the tag
in their comment, :func:`run_tag`), and whether a job has ended for good.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from se3t.errors import Se3tError
from se3t.train import submitit_api

__all__ = ["ACTIVE_STATES", "finished", "live_jobs", "run_tag", "slurm_state"]

# SLURM states of a job that will still run (or runs): a new launch attaches to it
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "RESV_DEL_HOLD",
    }
)


def run_tag(run_dir: str | Path) -> str:
    """``se3t-run:<12 hex>``: the first 12 hex digits of sha256 of the run folder's real path
    (symlinks resolved), put in the comment of every SLURM job of that folder. Deterministic,
    so a launch finds the job that an earlier, killed launch submitted."""
    real = os.path.realpath(Path(run_dir).absolute())
    return "se3t-run:" + hashlib.sha256(real.encode()).hexdigest()[:12]


def slurm_state(job_id: str) -> str:
    """The SLURM job's state: squeue (the controller's view, current), else sacct (the
    accounting record of a job that left the queue); '' when neither knows it."""
    for cmd in (
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
        ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
    ):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
        if out.returncode == 0 and lines:
            return lines[-1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return ""


def live_jobs(tag: str) -> list[tuple[str, str]]:
    """``(job id, state)`` of this user's SLURM jobs that are queued or running (a state in
    :data:`ACTIVE_STATES`) and whose comment carries ``tag`` (see :func:`run_tag`).

    Raises :class:`Se3tError` when ``squeue`` cannot answer: the caller cannot tell then
    whether such a job exists, and must not submit another one."""
    cmd = ["squeue", "-h", "-u", str(os.getuid()), "-o", "%i|%T|%k"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Se3tError(f"cannot list SLURM jobs ({' '.join(cmd)}): {err}") from None
    if out.returncode != 0:
        raise Se3tError(
            f"cannot list SLURM jobs ({' '.join(cmd)}, exit {out.returncode}): "
            f"{out.stderr.strip() or out.stdout.strip()}"
        )
    jobs = []
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")  # the comment last: it may hold '|'
        if tag in comment.split() and state.strip() in ACTIVE_STATES:
            jobs.append((job_id.strip(), state.strip()))
    return jobs


def finished(job) -> bool:
    """The job has ended for good. submitit's ``done()`` trusts the tasks' result files, but a
    SLURM job requeued after a node failure keeps the files of the attempt that was cut short
    (a rank that saw its peer vanish wrote an error) while it waits to run again: on SLURM it
    must also have left the queue (a state outside :data:`ACTIVE_STATES`)."""
    if not job.done():
        return False
    if not isinstance(job, submitit_api.slurm_job_class()):
        return True
    return slurm_state(job.job_id) not in ACTIVE_STATES
