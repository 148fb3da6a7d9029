"""Every use se3t makes of submitit, in one place, checked against the versions it was tested with.

Most of it is submitit's public API (``AutoExecutor``, ``helpers.Checkpointable``,
``helpers.DelayedSubmission``, ``helpers.TorchDistributedEnvironment``, ``Job.task``). Four
things are not, and may change in any submitit release:

- ``AutoExecutor._executor.max_num_timeout``: the local executor takes no time-out count from
  ``AutoExecutor``; set on the executor behind it (:func:`executor`);
- ``submitit.slurm.slurm.SlurmJob(folder, job_id, tasks)``: a job object for a job id this
  process did not submit (:func:`attach`), and its class (:func:`slurm_job_class`);
- the task result pickle ``("success", value)`` / ``("error", traceback)`` (:func:`outcome`);
- ``DelayedSubmission.set_timeout`` and ``dump`` to the job's ``submitted_pickle`` path
  (:func:`write_submission`).

:func:`check_version` refuses a submitit outside :data:`TESTED`, and
``tests/train/test_submitit_api.py`` exercises each of the four against the installed submitit,
so an upgrade that changes them fails there, by name, rather than in a user's job.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

# submitit is imported inside the functions: importing se3t (and se3t.train) must not need it
from se3t.errors import Se3tError

__all__ = [
    "TESTED",
    "attach",
    "check_version",
    "checkpointable",
    "delayed",
    "dist_env",
    "executor",
    "outcome",
    "slurm_job_class",
    "write_submission",
]

# [lowest, first untested) versions of submitit whose internals above se3t was tested with
TESTED = ((1, 5), (1, 6))


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_version(version: str | None = None) -> str:
    """The installed submitit's version; raises :class:`Se3tError` when it is outside
    :data:`TESTED` (``version`` given: check that string instead)."""
    if version is None:
        import submitit

        version = submitit.__version__
    low, high = TESTED
    if not low <= _version(version) < high:
        raise Se3tError(
            f"submitit {version} is installed, but se3t's launcher was tested with submitit "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))} and uses internals of it "
            "(se3t/train/submitit_api.py): install a tested version "
            f"(pip install 'submitit>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}')"
        )
    return version


def executor(folder: Path, cluster: str, max_num_timeout: int):
    """``submitit.AutoExecutor`` for ``cluster`` (slurm | local | debug) whose executor gives
    up after ``max_num_timeout`` time-outs (the local one too)."""
    check_version()
    import submitit

    ex = submitit.AutoExecutor(
        folder=folder, cluster=cluster, slurm_max_num_timeout=max_num_timeout
    )
    inner = ex._executor
    if cluster == "debug":
        # runs in this process: nothing times out, so there is no counter to set
        return ex
    if not hasattr(inner, "max_num_timeout"):
        raise Se3tError(
            f"submitit {submitit.__version__}: {type(inner).__name__} has no max_num_timeout "
            "(se3t/train/submitit_api.py)"
        )
    inner.max_num_timeout = max_num_timeout
    return ex


def attach(folder: str | Path, job_id: str, tasks: int):
    """A submitit job object for SLURM job ``job_id`` (submitted by another process) with
    ``tasks`` tasks, its files in ``folder``: ``done()``, ``results()``, ``paths``, ``task(i)``."""
    check_version()
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob(folder=folder, job_id=str(job_id), tasks=tuple(range(int(tasks))))


def slurm_job_class() -> type:
    """The class of submitit's SLURM jobs (those of :func:`attach` and of a SLURM executor)."""
    from submitit.slurm.slurm import SlurmJob

    return SlurmJob


def outcome(job, rank: int) -> str | None:
    """``"success"`` or ``"error"`` as task ``rank`` of ``job`` recorded it in its result
    pickle; None when it wrote none (still running, or killed before it could)."""
    try:
        with open(job.task(rank).paths.result_pickle, "rb") as fh:
            result = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        return None
    if isinstance(result, tuple) and result and result[0] in ("success", "error"):
        return result[0]
    return None


def checkpointable(base: type) -> type:
    """``base`` made a ``submitit.helpers.Checkpointable`` (its ``checkpoint`` is called on
    preemption and time-out), keeping ``base``'s name."""
    import submitit

    class _Job(base, submitit.helpers.Checkpointable):
        pass

    _Job.__name__ = _Job.__qualname__ = base.__name__
    return _Job


def delayed(fn, *args: Any):
    """``submitit.helpers.DelayedSubmission(fn, *args)``: what ``checkpoint`` returns."""
    import submitit

    return submitit.helpers.DelayedSubmission(fn, *args)


def write_submission(job, fn, args: tuple, timeout_min: int, max_num_timeout: int, writer) -> Path:
    """Write the pickle of the call ``fn(*args)`` where ``job`` reads it when it starts
    (``job.paths.submitted_pickle``), as submitit's own submission would; ``writer(path,
    dump)`` writes the file (atomically: ``se3t.io.atomic_write``)."""
    path = Path(job.paths.submitted_pickle)
    sub = delayed(fn, *args)
    sub.set_timeout(timeout_min, max_num_timeout)
    writer(path, sub.dump)
    return path


def dist_env():
    """This task's place in the job, exported as torchrun's variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) from SLURM's (or the
    local executor's) environment; variables inherited from the submitting shell are
    overwritten: the allocation is the truth."""
    import submitit

    return submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
