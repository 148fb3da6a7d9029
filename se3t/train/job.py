"""The submitted callable: :class:`TrainJob`, one task = one DDP rank.

Each task exports the DDP variables with ``submitit.helpers.TorchDistributedEnvironment`` and
runs :func:`se3t.train.train` as one rank. When SLURM preempts the job or its time runs out,
the job receives SIGUSR2; the trainer finishes the current optimizer step, writes ``last.pt``
and returns; rank 0 then hands over to submitit, which calls :meth:`TrainJob.checkpoint` and
requeues the job. The new allocation resumes from ``last.pt``.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any

from se3t.config import Config, from_dict
from se3t.train import submitit_api

__all__ = ["TrainJob", "checkpointable", "log_to_stderr"]


class TrainJob:
    """The submitted callable: ``TrainJob()(config_dict) -> summary`` (one task = one rank).

    Inherits :class:`submitit.helpers.Checkpointable` at runtime (so importing this module does
    not need submitit): its ``checkpoint`` resubmits the same call; ``run.dir/last.pt`` carries
    the state.
    """

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        # deferred: the trainer pulls in torch and the model (the launcher needs neither)
        from se3t.train import distributed as D
        from se3t.train.loop import Trainer

        log_to_stderr()
        dist_env = submitit_api.dist_env()
        cfg = from_dict(config)
        trainer = self.make_trainer(Trainer, cfg, dist_env.rank)
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

    def make_trainer(self, trainer_class: type, cfg: Config, rank: int):
        """This rank's trainer (a subclass of TrainJob may wrap it, e.g. to inject a fault)."""
        return trainer_class(cfg, progress=rank == 0)

    def _requeue(self, summary: dict[str, Any], rank: int) -> None:
        """Hand a run stopped by SIGUSR2 (preemption, time limit) to submitit's handler
        (checkpoint() + requeue + exit) on rank 0; the other ranks wait to be ended by the
        requeue. A run stopped by SIGTERM is being ended by SLURM (scancel, or a node of the
        job failed and SLURM requeues it itself): every rank exits without a result, so the
        launcher reads the job's state, not an error of this attempt."""
        sig = summary.get("signal")
        if sig == int(signal.SIGTERM):
            raise SystemExit(128 + int(signal.SIGTERM))  # submitit writes no result for it
        handler = signal.getsignal(signal.SIGUSR2)
        if rank == 0 and sig == int(signal.SIGUSR2) and callable(handler):
            handler(signal.SIGUSR2, None)  # requeues and exits (SystemExit)
        if rank != 0:
            time.sleep(300)
        raise RuntimeError(f"training stopped by signal {sig} at step {summary['step']}")

    def checkpoint(self, config: dict[str, Any]):
        # the state is in run.dir/last.pt (written by the trainer): resubmit the same call
        return submitit_api.delayed(type(self)(), config)


def log_to_stderr() -> None:
    """In a job task: se3t's log records to the task's stderr (its submitit log), every rank.
    Rank 0's trainer adds train.log and its own stderr handler to ``se3t.train``."""
    root = logging.getLogger("se3t")
    if not any(getattr(h, "_se3t_job", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._se3t_job = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def checkpointable(base: type | None = None) -> type:
    return submitit_api.checkpointable(base or TrainJob)
