"""``launch(cfg)``: run training through submitit on SLURM, locally, or in-process (debug).

The job is :class:`TrainJob`, a checkpointable callable: one task per GPU (or
``launch.tasks_per_node`` CPU processes), each exporting the DDP variables with
``submitit.helpers.TorchDistributedEnvironment`` and running :func:`se3t.train.train` as one
rank. When SLURM preempts the job or its time runs out, the job receives SIGUSR2 (submitit asks
for it ``signal_delay_s`` before the end, and ``preempt_send_user_signal`` sends it on
preemption); the trainer finishes the current optimizer step, writes ``last.pt`` and returns;
rank 0 then hands over to submitit, which calls :meth:`TrainJob.checkpoint` and requeues the job.
The new allocation resumes from ``last.pt``. submitit gives up after ``launch.max_num_timeout``
time-outs (preemptions do not count).

The launcher checks every input first (as ``se3t train`` would: dataset, basis store, the
checkpoint to resume), submits, streams rank 0's log while waiting, and returns 0 on success;
on failure it prints the tail of the job's log and returns 1.

One job per run folder: the launcher reads and writes the folder's job record
(:mod:`se3t.train.job_records`) before it submits, and asks SLURM (:mod:`se3t.train.slurm`)
whether the recorded job still runs; while waiting it follows rank 0's log
(:mod:`se3t.train.log_follow`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from se3t.config import Config, to_dict
from se3t.errors import Se3tError
from se3t.train import submitit_api
from se3t.train.job import TrainJob, checkpointable
from se3t.train.job_records import (
    active_job,
    read_record,
    run_lock,
    submitit_folder,
    task_count,
    write_record,
)
from se3t.train.log_follow import Follower, failed_rank_log, tail
from se3t.train.slurm import ACTIVE_STATES, finished, live_jobs, run_tag, slurm_state

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVE_STATES",
    "TrainJob",
    "launch",
    "live_jobs",
    "make_executor",
    "read_record",
    "run_tag",
    "slurm_state",
]


def make_executor(cfg: Config):
    """The submitit executor for ``cfg.launch``: one task per GPU, or ``tasks_per_node`` CPU
    processes per node; partition, account, qos, constraint and ``extra`` (sbatch options)."""
    lc = cfg.launch
    executor = submitit_api.executor(submitit_folder(cfg), lc.cluster, lc.max_num_timeout)
    tasks = lc.gpus_per_node if lc.gpus_per_node > 0 else lc.tasks_per_node
    params: dict[str, Any] = {
        "name": f"se3t-{cfg.run.name}",
        "timeout_min": lc.time,
        "nodes": lc.nodes,
        "tasks_per_node": tasks,
        "cpus_per_task": lc.cpus_per_task,
    }
    if lc.gpus_per_node > 0:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.mem_gb is not None:
        params["mem_gb"] = lc.mem_gb
    if lc.cluster == "slurm":
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(lc, key)
            if value:
                params[f"slurm_{key}"] = value
        extra = dict(lc.extra)
        # the run folder's tag goes first in the comment (a comment of the user's follows it):
        # a relaunch finds the job by it even when no job id was recorded
        own = extra.pop("comment", None)
        params["slurm_comment"] = f"{run_tag(cfg.run.dir)} {own}" if own else run_tag(cfg.run.dir)
        if extra:
            params["slurm_additional_parameters"] = extra
        # one rank that exits with an error ends the job step at once: its peers would
        # otherwise wait in a collective until train.collective_timeout
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    executor.update_parameters(**params)
    return executor


def _submit(cfg: Config, run_dir: Path, job_class: type | None = None):
    """Submit the training job. On SLURM the intent record goes first (state "submitting", the
    folder's tag, no job id), so that a launcher killed inside ``sbatch`` or right after it
    leaves a record the next launch resolves through ``squeue``; then the complete record."""
    lc = cfg.launch
    rec = {
        "cluster": lc.cluster,
        "folder": str(submitit_folder(cfg)),
        "tasks": task_count(cfg),
        "name": f"se3t-{cfg.run.name}",
    }
    executor = make_executor(cfg)
    if lc.cluster == "slurm":
        rec["tag"] = run_tag(run_dir)
        rec["submitting"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # the submitted config too: a job whose launcher died before submitit put its pickle
        # in place gets it from here (see _ensure_pickle)
        write_record(
            run_dir,
            {**rec, "state": "submitting", "submitting_at": time.time(), "config": to_dict(cfg)},
        )
    try:
        job = executor.submit(checkpointable(job_class)(), to_dict(cfg))
    except Exception as err:  # submitit: FailedJobError with sbatch's message
        msg = " ".join(str(err).split())[:500]
        if lc.cluster == "slurm":  # sbatch answered: no job (a later launch still asks squeue)
            write_record(run_dir, {**rec, "state": "failed", "error": msg})
        raise Se3tError(
            f"run folder {str(run_dir)!r}: submitting job {rec['name']} "
            f"({lc.cluster}) failed: {msg}"
        ) from err
    write_record(
        run_dir,
        {
            "job_id": str(job.job_id),
            **rec,
            "state": "submitted",
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    log.info(f"submitted job {job.job_id} ({lc.cluster}); logs in {job.paths.folder}")
    return job


def launch(
    cfg: Config,
    *,
    wait: bool = True,
    poll_s: float = 2.0,
    job_class: type | None = None,
    stream: TextIO | None = None,
) -> int:
    """Check the inputs, submit the training job (or attach to the run folder's job that is
    still queued or running, see the module docstring), stream its progress and wait for it.

    Returns 0 when every task finished, 1 when the job failed (the log tail of the rank that
    failed printed), and with ``wait=False`` 0 right after submission (the job id printed).
    ``job_class``: the callable submitted, :class:`TrainJob` or a subclass of it (the tests
    inject a fault into one rank with one). ``stream``: where rank 0's log is copied while
    waiting (default: stderr). The launcher's own messages go to the ``se3t.train.launch``
    logger (``se3t launch`` prints them to stderr)."""
    from se3t.train.loop import check_inputs

    run_dir = Path(cfg.run.dir).absolute()
    with run_lock(run_dir):
        job = active_job(cfg, run_dir)
        if job is None:
            check_inputs(cfg, world_size=1, model=True)  # bad input fails before submission
            job = _submit(cfg, run_dir, job_class)
    if not wait:
        print(job.job_id)
        return 0
    follow = Follower(Path(job.paths.stderr), sys.stderr if stream is None else stream)
    try:
        while not finished(job):
            follow.poll()
            time.sleep(poll_s)
        follow.poll()
        results = job.results()
    except KeyboardInterrupt:
        log.warning(f"interrupted; job {job.job_id} keeps running (scancel it to stop)")
        raise
    except Exception as err:  # submitit raises FailedJobError / UncompletedJobError
        rank, log_path = failed_rank_log(job)
        log.error(
            "job %s failed: %s\n---- last lines of %s (rank %d) ----\n%s",
            job.job_id,
            str(err).splitlines()[0],
            log_path,
            rank,
            tail(log_path),
        )
        return 1
    summary = results[0] if results else {}
    log.info(
        f"job {job.job_id} done: step {summary.get('step')}, epoch "
        f"{summary.get('epoch')}, val MAE {summary.get('val_mae')}"
    )
    return 0
