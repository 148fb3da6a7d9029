"""The run folder's job record ``run.dir/launch.json``: one job per run folder.

Before ``sbatch`` the launcher writes an intent record (``"state": "submitting"``, the folder's
:func:`se3t.train.slurm.run_tag`, no job id); right after submission it completes it (job id,
cluster, submitit folder, tasks; ``"state": "submitted"``); both writes are atomic. A later
launch for the same run folder reads it first (:func:`active_job`): if the recorded SLURM job
is still queued or running it attaches to it instead of submitting a second job into the same
folder; if it ended it submits a new job, which resumes from ``last.pt``. When the record has
no job id (a launcher killed between ``sbatch`` returning and the record being completed) or
there is no record, it asks ``squeue`` for this user's live jobs carrying the tag (after a grace
of :data:`SBATCH_GRACE_S` for a fresh intent record, whose launcher's ``sbatch`` may still be
running), attaches to the one it finds (completes the record, and writes the job's submitit
pickle if the dead launcher had not yet), and submits only when there is none. A lock file
(``run.dir/.launch.lock``, ``flock``, :func:`run_lock`) makes the check-and-submit atomic
between launchers started at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from pathlib import Path
from typing import Any

from se3t.config import Config, from_dict, to_dict
from se3t.errors import InputError, Se3tError
from se3t.io import atomic_write, write_text
from se3t.train import submitit_api
from se3t.train.job import checkpointable
from se3t.train.slurm import ACTIVE_STATES, live_jobs, run_tag, slurm_state

# the launcher's messages, one logger wherever they are made (se3t launch prints it)
log = logging.getLogger("se3t.train.launch")

__all__ = [
    "RECORD",
    "SBATCH_GRACE_S",
    "active_job",
    "read_raw",
    "read_record",
    "run_lock",
    "submitit_folder",
    "task_count",
    "write_record",
]

RECORD = "launch.json"


# an intent record younger than this may be from a launcher killed while its sbatch child was
# still running (the child goes on and submits): wait that long before trusting squeue's "none"
SBATCH_GRACE_S = 10.0


def submitit_folder(cfg: Config) -> Path:
    return Path(cfg.launch.folder or Path(cfg.run.dir) / "submitit").absolute()


def task_count(cfg: Config) -> int:
    lc = cfg.launch
    return lc.nodes * (lc.gpus_per_node if lc.gpus_per_node > 0 else lc.tasks_per_node)


def read_raw(run_dir: Path) -> dict[str, Any] | None:
    """``launch.json`` as written, intent records (no job id) included; None if absent or
    unreadable."""
    try:
        rec = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/launch.json``: the last job submitted for this run folder (None if none, if
    unreadable, or if it is an intent record without a job id: see :func:`launch`)."""
    rec = read_raw(Path(run_dir))
    return rec if rec is not None and rec.get("job_id") else None


def write_record(run_dir: Path, rec: dict[str, Any]) -> None:
    """Atomic and durable (temporary file, fsync, rename, fsync of the folder): readers see the
    old record or the new one, and an intent record survives a node reboot."""
    write_text(run_dir / RECORD, json.dumps(rec, indent=1) + "\n", fsync=True)


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Exclusive between launchers of one run folder (``flock``; released when the process
    dies, so a killed launcher never leaves it held)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".launch.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def active_job(cfg: Config, run_dir: Path):
    """The SLURM job of this run folder when it is still queued or running, else None: the
    recorded job, or (record without job id, or no record) the live job carrying the folder's
    :func:`run_tag`, whose id is then written into the record. Raises InputError when such a
    job runs but this launch asks for another cluster, or when several run."""
    rec = read_raw(run_dir)
    if rec is not None and rec.get("job_id"):
        return _recorded_job(cfg, run_dir, rec)
    submitting = rec is not None and rec.get("state") == "submitting"
    if submitting and rec.get("cluster") != "slurm":
        return None  # local/debug: the job died with (or is a child of) its launcher
    if not submitting and cfg.launch.cluster != "slurm":
        return None  # no record and no SLURM in sight: nothing to ask
    tag = run_tag(run_dir)
    if submitting:
        _wait_for_interrupted_sbatch(rec)
    try:
        jobs = live_jobs(tag)
    except Se3tError as err:
        raise Se3tError(
            f"run folder {str(run_dir)!r}: {err}; cannot tell whether a job of this folder "
            f"(comment {tag}) is already queued or running, so none is submitted"
        ) from None
    if not jobs:
        if submitting:
            log.warning(
                f"{RECORD} shows an interrupted submission (since "
                f"{rec.get('submitting', '?')}) and no job of this run folder ({tag}) is "
                "queued or running: submitting"
            )
        return None
    names = ", ".join(f"{j} ({st})" for j, st in jobs)
    if len(jobs) > 1:
        raise InputError(
            f"run folder {str(run_dir)!r}: several SLURM jobs of it are queued or running "
            f"({names}, comment {tag}); scancel all but one, then launch again"
        )
    job_id, state = jobs[0]
    if cfg.launch.cluster != "slurm":
        raise InputError(
            f"run folder {str(run_dir)!r}: SLURM job {job_id} (comment {tag}) is still "
            f"{state}; wait for it or scancel it before launching on {cfg.launch.cluster!r}"
        )
    return _adopt(cfg, run_dir, rec if submitting else {}, tag, job_id, state)


def _wait_for_interrupted_sbatch(rec: dict[str, Any]) -> None:
    """The intent record's launcher has died (we hold the lock), perhaps inside ``sbatch``,
    whose child goes on and submits: wait until the record is :data:`SBATCH_GRACE_S` old."""
    try:
        age = time.time() - float(rec.get("submitting_at", 0))
    except (TypeError, ValueError):
        age = SBATCH_GRACE_S
    if 0 <= age < SBATCH_GRACE_S:
        log.warning(
            f"{RECORD} shows a submission interrupted {age:.0f} s ago; "
            f"waiting {SBATCH_GRACE_S - age:.0f} s for its sbatch to finish"
        )
        time.sleep(SBATCH_GRACE_S - age)


def _adopt(cfg: Config, run_dir: Path, base: dict[str, Any], tag: str, job_id: str, state: str):
    """Attach to the live job ``job_id`` found by its tag and complete the record with it
    (``base``: the intent record it was submitted under, else empty)."""
    rec = {
        "job_id": job_id,
        "cluster": "slurm",
        "folder": base.get("folder") or str(submitit_folder(cfg)),
        "tasks": int(base.get("tasks") or task_count(cfg)),
        "tag": tag,
        "name": base.get("name") or f"se3t-{cfg.run.name}",
        "state": "submitted",
        "submitted": base.get("submitting", "?"),
        "found": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    job = _attach(rec, state)
    _ensure_pickle(job, base.get("config") or to_dict(cfg))
    write_record(run_dir, rec)
    log.warning(
        f"{RECORD} had no job id, but SLURM job {job_id} of this run folder "
        f"({tag}) is {state}: recorded it"
    )
    return job


def _ensure_pickle(job, config: dict[str, Any]) -> None:
    """Put the job's ``<id>_submitted.pkl`` in place when it is missing.

    submitit pickles the call under a temporary name, runs sbatch, and only then renames the
    pickle after the job id; a launcher killed in between leaves a job that, once started,
    waits 60 s for its pickle and fails. The call is ``TrainJob()(config)`` with the config
    the killed launcher submitted (kept in the intent record), so it is rebuilt from that."""
    path = Path(job.paths.submitted_pickle)
    if path.exists():
        return
    cfg = from_dict(config)
    submitit_api.write_submission(
        job,
        checkpointable()(),
        (config,),
        cfg.launch.time,
        cfg.launch.max_num_timeout,
        lambda target, dump: atomic_write(target, dump, fsync=True),
    )
    log.warning(
        f"job {job.job_id} had no {path.name} (its launcher died inside the submission): wrote it"
    )


def _recorded_job(cfg: Config, run_dir: Path, rec: dict[str, Any]):
    """The job of a complete record when it is still queued or running, else None."""
    if rec.get("cluster") != "slurm":
        return None  # local/debug jobs end with (or are children of) their launcher
    state = slurm_state(rec["job_id"])
    if state not in ACTIVE_STATES:
        if state:
            log.info(
                f"the run's previous job {rec['job_id']} is {state}; submitting "
                "a new one (it resumes from last.pt)"
            )
        return None
    if cfg.launch.cluster != "slurm":
        raise InputError(
            f"run folder {str(run_dir)!r}: SLURM job {rec['job_id']} ({RECORD}) is still "
            f"{state}; wait for it or scancel it before launching on {cfg.launch.cluster!r}"
        )
    return _attach(rec, state)


def _attach(rec: dict[str, Any], state: str):
    job = submitit_api.attach(rec["folder"], rec["job_id"], int(rec.get("tasks", 1)))
    log.info(
        f"job {job.job_id} of this run folder is {state} (submitted "
        f"{rec.get('submitted', '?')}): attaching to it instead of submitting; this "
        f"command's overrides do not apply to it"
    )
    return job
