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

One job per run folder. Every SLURM job carries the run folder's tag in its comment
(``se3t-run:<first 12 hex of sha256(real path of run.dir)>``, see :func:`run_tag`). Before
``sbatch`` the launcher writes an intent record ``run.dir/launch.json`` (``"state":
"submitting"``, the tag, no job id); right after submission it completes it (job id, cluster,
submitit folder, tasks; ``"state": "submitted"``); both writes are atomic. A later launch for
the same run folder, say after Snakemake or the user killed the waiting launcher, reads it
first: if the recorded SLURM job is still queued or running (PENDING, RUNNING, REQUEUED, ...)
it attaches to it (streams its log, waits, returns its outcome) instead of submitting a second
job into the same folder; if it ended (completed, failed, cancelled, unknown to SLURM) it
submits a new job, which resumes from ``last.pt``. When the record has no job id (a launcher
killed between ``sbatch`` returning and the record being completed) or there is no record, it
asks ``squeue`` for this user's live jobs carrying the tag (after a grace of
:data:`SBATCH_GRACE_S` for a fresh intent record, whose launcher's ``sbatch`` may still be
running), attaches to the one it finds (completes the record, and writes the job's submitit
pickle if the dead launcher had not yet), and submits only when there is none. A lock file
(``run.dir/.launch.lock``, ``flock``) makes the check-and-submit atomic between launchers
started at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from se3t.config import Config, from_dict, to_dict
from se3t.errors import InputError, Se3tError
from se3t.io import atomic_write, write_text
from se3t.train import submitit_api

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

RECORD = "launch.json"
# an intent record younger than this may be from a launcher killed while its sbatch child was
# still running (the child goes on and submits): wait that long before trusting squeue's "none"
SBATCH_GRACE_S = 10.0
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

        _log_to_stderr()
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


def _log_to_stderr() -> None:
    """In a job task: se3t's log records to the task's stderr (its submitit log), every rank.
    Rank 0's trainer adds train.log and its own stderr handler to ``se3t.train``."""
    root = logging.getLogger("se3t")
    if not any(getattr(h, "_se3t_job", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler._se3t_job = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _checkpointable(base: type | None = None) -> type:
    return submitit_api.checkpointable(base or TrainJob)


def make_executor(cfg: Config):
    """The submitit executor for ``cfg.launch``: one task per GPU, or ``tasks_per_node`` CPU
    processes per node; partition, account, qos, constraint and ``extra`` (sbatch options)."""
    lc = cfg.launch
    executor = submitit_api.executor(_submitit_folder(cfg), lc.cluster, lc.max_num_timeout)
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


def _submitit_folder(cfg: Config) -> Path:
    return Path(cfg.launch.folder or Path(cfg.run.dir) / "submitit").absolute()


def _tasks(cfg: Config) -> int:
    lc = cfg.launch
    return lc.nodes * (lc.gpus_per_node if lc.gpus_per_node > 0 else lc.tasks_per_node)


def run_tag(run_dir: str | Path) -> str:
    """``se3t-run:<12 hex>``: the first 12 hex digits of sha256 of the run folder's real path
    (symlinks resolved), put in the comment of every SLURM job of that folder. Deterministic,
    so a launch finds the job that an earlier, killed launch submitted."""
    real = os.path.realpath(Path(run_dir).absolute())
    return "se3t-run:" + hashlib.sha256(real.encode()).hexdigest()[:12]


def _finished(job) -> bool:
    """The job has ended for good. submitit's ``done()`` trusts the tasks' result files, but a
    SLURM job requeued after a node failure keeps the files of the attempt that was cut short
    (a rank that saw its peer vanish wrote an error) while it waits to run again: on SLURM it
    must also have left the queue (a state outside :data:`ACTIVE_STATES`)."""
    if not job.done():
        return False
    if not isinstance(job, submitit_api.slurm_job_class()):
        return True
    return slurm_state(job.job_id) not in ACTIVE_STATES


def _failed_rank_log(job) -> tuple[int, Path]:
    """``(rank, stderr log)`` of the task that failed first: of the tasks whose result pickle
    holds an error, the one that wrote it first. A rank that raises brings its peers down
    after it (their collectives fail when its process exits, or srun's --kill-on-bad-exit
    ends them), so the first error is the cause and the later ones its echo. Rank 0's log
    when no task recorded an error (the job was killed: time, memory, node)."""
    failed = []
    for rank in range(job.num_tasks):
        if submitit_api.outcome(job, rank) == "error":
            path = Path(job.task(rank).paths.result_pickle)
            with contextlib.suppress(OSError):
                failed.append((path.stat().st_mtime_ns, rank))
    rank = min(failed)[1] if failed else 0
    return rank, Path(job.task(rank).paths.stderr)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class _Follower:
    """Copies new lines of a growing log file to a stream (restarts after truncation)."""

    def __init__(self, path: Path, stream: TextIO) -> None:
        self.path, self.offset, self.stream = path, 0, stream

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
        self.stream.write(data.decode(errors="replace"))
        self.stream.flush()


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


def _read_raw(run_dir: Path) -> dict[str, Any] | None:
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
    rec = _read_raw(Path(run_dir))
    return rec if rec is not None and rec.get("job_id") else None


def _write_record(run_dir: Path, rec: dict[str, Any]) -> None:
    """Atomic and durable (temporary file, fsync, rename, fsync of the folder): readers see the
    old record or the new one, and an intent record survives a node reboot."""
    write_text(run_dir / RECORD, json.dumps(rec, indent=1) + "\n", fsync=True)


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
    """The SLURM job of this run folder when it is still queued or running, else None: the
    recorded job, or (record without job id, or no record) the live job carrying the folder's
    :func:`run_tag`, whose id is then written into the record. Raises InputError when such a
    job runs but this launch asks for another cluster, or when several run."""
    rec = _read_raw(run_dir)
    if rec is not None and rec.get("job_id"):
        return _recorded_job(cfg, run_dir, rec)
    submitting = rec is not None and rec.get("state") == "submitting"
    if submitting and rec.get("cluster") != "slurm":
        return None  # local/debug: the job died with (or is a child of) its launcher
    if not submitting and cfg.launch.cluster != "slurm":
        return None  # no record and no SLURM in sight: nothing to ask
    tag = run_tag(run_dir)
    if submitting:
        # we hold the lock, so the launcher that wrote it has died, perhaps inside sbatch
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
    base = rec if submitting else {}
    rec = {
        "job_id": job_id,
        "cluster": "slurm",
        "folder": base.get("folder") or str(_submitit_folder(cfg)),
        "tasks": int(base.get("tasks") or _tasks(cfg)),
        "tag": tag,
        "name": base.get("name") or f"se3t-{cfg.run.name}",
        "state": "submitted",
        "submitted": base.get("submitting", "?"),
        "found": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    job = _attach(rec, state)
    _ensure_pickle(job, base.get("config") or to_dict(cfg))
    _write_record(run_dir, rec)
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
        _checkpointable()(),
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


def _submit(cfg: Config, run_dir: Path, job_class: type | None = None):
    """Submit the training job. On SLURM the intent record goes first (state "submitting", the
    folder's tag, no job id), so that a launcher killed inside ``sbatch`` or right after it
    leaves a record the next launch resolves through ``squeue``; then the complete record."""
    lc = cfg.launch
    rec = {
        "cluster": lc.cluster,
        "folder": str(_submitit_folder(cfg)),
        "tasks": _tasks(cfg),
        "name": f"se3t-{cfg.run.name}",
    }
    executor = make_executor(cfg)
    if lc.cluster == "slurm":
        rec["tag"] = run_tag(run_dir)
        rec["submitting"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # the submitted config too: a job whose launcher died before submitit put its pickle
        # in place gets it from here (see _ensure_pickle)
        _write_record(
            run_dir,
            {**rec, "state": "submitting", "submitting_at": time.time(), "config": to_dict(cfg)},
        )
    try:
        job = executor.submit(_checkpointable(job_class)(), to_dict(cfg))
    except Exception as err:  # submitit: FailedJobError with sbatch's message
        msg = " ".join(str(err).split())[:500]
        if lc.cluster == "slurm":  # sbatch answered: no job (a later launch still asks squeue)
            _write_record(run_dir, {**rec, "state": "failed", "error": msg})
        raise Se3tError(
            f"run folder {str(run_dir)!r}: submitting job {rec['name']} "
            f"({lc.cluster}) failed: {msg}"
        ) from err
    _write_record(
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
    with _run_lock(run_dir):
        job = _active_job(cfg, run_dir)
        if job is None:
            check_inputs(cfg, world_size=1, model=True)  # bad input fails before submission
            job = _submit(cfg, run_dir, job_class)
    if not wait:
        print(job.job_id)
        return 0
    follow = _Follower(Path(job.paths.stderr), sys.stderr if stream is None else stream)
    try:
        while not _finished(job):
            follow.poll()
            time.sleep(poll_s)
        follow.poll()
        results = job.results()
    except KeyboardInterrupt:
        log.warning(f"interrupted; job {job.job_id} keeps running (scancel it to stop)")
        raise
    except Exception as err:  # submitit raises FailedJobError / UncompletedJobError
        rank, log_path = _failed_rank_log(job)
        log.error(
            "job %s failed: %s\n---- last lines of %s (rank %d) ----\n%s",
            job.job_id,
            str(err).splitlines()[0],
            log_path,
            rank,
            _tail(log_path),
        )
        return 1
    summary = results[0] if results else {}
    log.info(
        f"job {job.job_id} done: step {summary.get('step')}, epoch "
        f"{summary.get('epoch')}, val MAE {summary.get('val_mae')}"
    )
    return 0
