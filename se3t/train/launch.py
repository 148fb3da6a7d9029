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

One job per run folder. Right after submission the launcher records the job (id, cluster,
submitit folder, tasks) in ``run.dir/launch.json`` (written atomically). A later launch for the
same run folder, say after Snakemake or the user killed the waiting launcher, reads it first: if
that SLURM job is still queued or running (PENDING, RUNNING, REQUEUED, ...) it attaches to it
(streams its log, waits, returns its outcome) instead of submitting a second job into the same
folder; if it ended (completed, failed, cancelled, unknown to SLURM) it submits a new job, which
resumes from ``last.pt``. A lock file (``run.dir/.launch.lock``, ``flock``) makes the
check-and-submit atomic between launchers started at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from se3t.config import Config, from_dict, to_dict
from se3t.errors import InputError

__all__ = ["ACTIVE_STATES", "TrainJob", "launch", "make_executor", "read_record", "slurm_state"]

RECORD = "launch.json"
# SLURM states of a job that will still run (or runs): a new launch attaches to it
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
    "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD",
})  # fmt: skip


class TrainJob:
    """The submitted callable: ``TrainJob()(config_dict) -> summary`` (one task = one rank).

    Inherits :class:`submitit.helpers.Checkpointable` at runtime (so importing this module does
    not need submitit): its ``checkpoint`` resubmits the same call; ``run.dir/last.pt`` carries
    the state.
    """

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        import submitit

        from se3t.train import distributed as D
        from se3t.train.loop import Trainer

        dist_env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False
        )
        cfg = from_dict(config)
        trainer = Trainer(cfg, progress=dist_env.rank == 0)
        try:
            summary = trainer.run()
        finally:
            D.shutdown()
        if summary["status"] == "stopped":
            self._requeue(summary, dist_env.rank)
        # training is over: a preemption or time-limit signal arriving now must neither kill the
        # task (the job would read as failed) nor requeue finished work
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return summary

    def _requeue(self, summary: dict[str, Any], rank: int) -> None:
        """Hand a stopped run to submitit's handler (checkpoint() + requeue + exit) on rank 0;
        the other ranks wait to be ended by the requeue."""
        sig = summary.get("signal")
        handler = signal.getsignal(signal.SIGUSR2)
        if rank == 0 and sig == int(signal.SIGUSR2) and callable(handler):
            handler(signal.SIGUSR2, None)  # requeues and exits (SystemExit)
        if rank != 0:
            time.sleep(300)
        raise RuntimeError(f"training stopped by signal {sig} at step {summary['step']}")

    def checkpoint(self, config: dict[str, Any]):
        import submitit

        # the state is in run.dir/last.pt (written by the trainer): resubmit the same call
        return submitit.helpers.DelayedSubmission(type(self)(), config)


def _checkpointable() -> type:
    import submitit

    class _Job(TrainJob, submitit.helpers.Checkpointable):
        pass

    _Job.__name__ = _Job.__qualname__ = "TrainJob"
    return _Job


def make_executor(cfg: Config):
    """The submitit executor for ``cfg.launch``: one task per GPU, or ``tasks_per_node`` CPU
    processes per node; partition, account, qos, constraint and ``extra`` (sbatch options)."""
    import submitit

    lc = cfg.launch
    folder = Path(lc.folder or Path(cfg.run.dir) / "submitit").absolute()
    executor = submitit.AutoExecutor(folder=folder, cluster=lc.cluster,
                                     slurm_max_num_timeout=lc.max_num_timeout)  # fmt: skip
    # the executor behind (local too) counts time-outs before giving up
    executor._executor.max_num_timeout = lc.max_num_timeout
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
        if lc.extra:
            params["slurm_additional_parameters"] = dict(lc.extra)
    executor.update_parameters(**params)
    return executor


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class _Follower:
    """Copies new lines of a growing log file to our stderr (restarts after truncation)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self.offset:  # a requeued job starts a new log
            self.offset = 0
        if size == self.offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        sys.stderr.write(data.decode(errors="replace"))
        sys.stderr.flush()


def slurm_state(job_id: str) -> str:
    """The SLURM job's state: squeue (the controller's view, current), else sacct (the
    accounting record of a job that left the queue); '' when neither knows it."""
    for cmd in (["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"]):  # fmt: skip
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [x.strip() for x in out.stdout.splitlines() if x.strip()]
        if out.returncode == 0 and lines:
            return lines[-1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return ""


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/launch.json``: the last job submitted for this run folder (None if none, or
    unreadable: a launch then submits as if there were none)."""
    path = Path(run_dir) / RECORD
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("job_id") else None


def _write_record(run_dir: Path, rec: dict[str, Any]) -> None:
    """Atomic: a temporary file in the folder, fsync, rename."""
    tmp = run_dir / f".{RECORD}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(rec, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_dir / RECORD)


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Exclusive between launchers of one run folder (``flock``; released when the process
    dies, so a killed launcher never leaves it held)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".launch.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _active_job(cfg: Config, run_dir: Path):
    """The recorded SLURM job of this run folder when it is still queued or running, else
    None. Raises InputError when it runs but this launch asks for another cluster."""
    rec = read_record(run_dir)
    if rec is None or rec.get("cluster") != "slurm":
        return None  # local/debug jobs end with (or are children of) their launcher
    state = slurm_state(rec["job_id"])
    if state not in ACTIVE_STATES:
        if state:
            print(f"se3t launch: the run's previous job {rec['job_id']} is {state}; submitting "
                  "a new one (it resumes from last.pt)", file=sys.stderr, flush=True)  # fmt: skip
        return None
    if cfg.launch.cluster != "slurm":
        raise InputError(
            f"run folder {str(run_dir)!r}: SLURM job {rec['job_id']} ({RECORD}) is still "
            f"{state}; wait for it or scancel it before launching on {cfg.launch.cluster!r}"
        )
    from submitit.slurm.slurm import SlurmJob

    job = SlurmJob(folder=rec["folder"], job_id=str(rec["job_id"]),
                   tasks=tuple(range(int(rec.get("tasks", 1)))))  # fmt: skip
    print(f"se3t launch: job {job.job_id} of this run folder is {state} (submitted "
          f"{rec.get('submitted', '?')}): attaching to it instead of submitting; this "
          f"command's overrides do not apply to it", file=sys.stderr, flush=True)  # fmt: skip
    return job


def launch(cfg: Config, *, wait: bool = True, poll_s: float = 2.0) -> int:
    """Check the inputs, submit the training job (or attach to the run folder's job that is
    still queued or running, see the module docstring), stream its progress and wait for it.

    Returns 0 when every task finished, 1 when the job failed (its log tail printed), and with
    ``wait=False`` 0 right after submission (the job id printed)."""
    from se3t.train.loop import check_inputs

    run_dir = Path(cfg.run.dir).absolute()
    with _run_lock(run_dir):
        job = _active_job(cfg, run_dir)
        if job is None:
            check_inputs(cfg, world_size=1, model=True)  # bad input fails before submission
            executor = make_executor(cfg)
            job = executor.submit(_checkpointable()(), to_dict(cfg))
            lc = cfg.launch
            tasks = lc.nodes * (lc.gpus_per_node if lc.gpus_per_node > 0 else lc.tasks_per_node)
            _write_record(run_dir, {
                "job_id": str(job.job_id), "cluster": lc.cluster,
                "folder": str(Path(job.paths.folder).absolute()), "tasks": tasks,
                "name": f"se3t-{cfg.run.name}",
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            })  # fmt: skip
            print(f"se3t launch: submitted job {job.job_id} ({lc.cluster}); logs in "
                  f"{job.paths.folder}", file=sys.stderr, flush=True)  # fmt: skip
    if not wait:
        print(job.job_id)
        return 0
    follow = _Follower(Path(job.paths.stderr))
    try:
        while not job.done():
            follow.poll()
            time.sleep(poll_s)
        follow.poll()
        results = job.results()
    except KeyboardInterrupt:
        print(f"se3t launch: interrupted; job {job.job_id} keeps running (scancel it to stop)",
              file=sys.stderr)  # fmt: skip
        raise
    except Exception as err:  # submitit raises FailedJobError / UncompletedJobError
        print(f"se3t launch: job {job.job_id} failed: {str(err).splitlines()[0]}",
              file=sys.stderr)  # fmt: skip
        print(f"---- last lines of {job.paths.stderr} ----", file=sys.stderr)
        print(_tail(Path(job.paths.stderr)), file=sys.stderr)
        return 1
    summary = results[0] if results else {}
    print(f"se3t launch: job {job.job_id} done: step {summary.get('step')}, epoch "
          f"{summary.get('epoch')}, val MAE {summary.get('val_mae')}", file=sys.stderr)  # fmt: skip
    return 0
