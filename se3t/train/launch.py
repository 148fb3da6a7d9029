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
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

from se3t.config import Config, from_dict, to_dict

__all__ = ["TrainJob", "launch", "make_executor"]


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


def launch(cfg: Config, *, wait: bool = True, poll_s: float = 2.0) -> int:
    """Check the inputs, submit the training job, stream its progress and wait for it.

    Returns 0 when every task finished, 1 when the job failed (its log tail printed), and with
    ``wait=False`` 0 right after submission (the job id printed)."""
    from se3t.train.loop import check_inputs

    check_inputs(cfg, world_size=1, model=True)  # bad input fails here, before submission
    executor = make_executor(cfg)
    job = executor.submit(_checkpointable()(), to_dict(cfg))
    print(f"se3t launch: submitted job {job.job_id} ({cfg.launch.cluster}); logs in "
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
