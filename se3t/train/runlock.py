"""One training run per run folder: an advisory lock file that works on shared filesystems.

Two ``se3t train`` runs on one ``run.dir`` would interleave ``metrics.jsonl`` and overwrite each
other's checkpoints, both exiting 0. :class:`RunLock` makes the second one fail at once with a
message naming the holder (host, pid, SLURM job).

The lock is the file ``RUN/.se3t-run.lock``, created by writing a private file and hard-linking
it to that name: ``link`` is atomic and fails on an existing name on NFS and Lustre as on local
disks (``O_EXCL`` was not, on old NFS clients), and a link whose reply was lost shows as a link
count of 2. ``fcntl`` locks are not used: several clusters' shared filesystems do not carry them
between nodes.

A holder is alive while its process exists (same host: probed with signal 0) or, from another
host, while it refreshes the file's time (every ``HEARTBEAT_S``, from a daemon thread). A lock
whose holder is gone is stale and taken over. A holder with this process's job identity is this
job's own lock: a SLURM job requeued after preemption (same ``SLURM_JOB_ID``, possibly another
node) re-acquires it, and the ranks of one DDP job share it (rank 0 holds it, the others check
that nobody else does).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from se3t.errors import DiskFullError, InputError

__all__ = ["LOCK_FILE", "RunLock", "RunLocked", "hold_run_folder", "job_identity"]

LOCK_FILE = ".se3t-run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats: a holder on another host is presumed dead


class RunLocked(InputError):
    """The run folder is held by another live training run."""


def job_identity(environ: Mapping[str, str] | None = None) -> str | None:
    """What all processes of one training job share and no other job has: the SLURM job (kept
    across requeues), else torchrun's rendezvous; None for a lone process (its pid decides)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}"
    return None


def _free(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """The lock of one run folder; ``with RunLock(run_dir):`` holds it for the block."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        job: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.path = self.run_dir / LOCK_FILE
        self.job = job
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the holder ----------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "job": self.job,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "token": self.token,
        }

    def holder(self) -> dict[str, Any] | None:
        """The lock file's record, with ``age_s`` since its last heartbeat; None when free."""
        try:
            record = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"unreadable": True, "age_s": 0.0}  # being written: treat as held
        if not isinstance(record, dict):
            return {"unreadable": True, "age_s": age}
        return {**record, "age_s": age}

    def _ours(self, h: dict[str, Any]) -> bool:
        return h.get("token") == self.token or (self.job is not None and h.get("job") == self.job)

    def _stale(self, h: dict[str, Any]) -> bool:
        if h.get("unreadable"):
            return h["age_s"] > self.stale_after_s
        if h.get("host") == self.host:
            return not _alive(int(h.get("pid", -1)))
        return h["age_s"] > self.stale_after_s

    def describe(self, h: dict[str, Any]) -> str:
        if h.get("unreadable"):
            return f"an unreadable lock file {self.path}"
        job = f", job {h['job']}" if h.get("job") else ""
        return (
            f"host {h.get('host')}, pid {h.get('pid')}{job}, since {h.get('since')} "
            f"(lock file {self.path})"
        )

    # ---- acquire and release ---------------------------------------------------------------
    def _create(self) -> bool:
        tmp = self.run_dir / f".{LOCK_FILE}.{self.token}"
        try:
            tmp.write_text(json.dumps(self._record()))
        except OSError as err:
            tmp.unlink(missing_ok=True)  # an empty file left by a full disk
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(str(self.path), _free(self.run_dir)) from None
            raise InputError(
                f"run folder {self.run_dir}: cannot write the lock file {self.path}: "
                f"{err.strerror or err}"
            ) from None
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return tmp.stat().st_nlink == 2  # NFS: the link was made, its reply was lost
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a stale (or this job's old) lock aside; a concurrent taker loses the rename."""
        aside = self.run_dir / f".{LOCK_FILE}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved.get("token") != stale.get("token") and not stale.get("unreadable"):
            # another taker replaced it between our read and our rename: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)

    def acquire(self) -> RunLock:
        """Hold the lock, taking over a stale one or this job's own; RunLocked naming the
        holder when another live run holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return self
            h = self.holder()
            if h is None:
                continue  # released meanwhile
            if self._ours(h) or self._stale(h):
                self._take_over(h)
                continue
            raise RunLocked(
                f"run folder {self.run_dir} is in use by another training run: "
                f"{self.describe(h)}. Wait for it to finish, set another run.dir, or remove "
                "the lock file if that run is gone"
            )
        raise RunLocked(f"run folder {self.run_dir}: the lock file {self.path} keeps changing")

    def check_free(self) -> None:
        """For ranks other than 0: RunLocked when a live run of another job holds the folder
        (rank 0 of this job takes the lock itself)."""
        h = self.holder()
        if h is not None and not self._ours(h) and not self._stale(h):
            raise RunLocked(
                f"run folder {self.run_dir} is in use by another training run: {self.describe(h)}"
            )

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                h = self.holder()
                if h is None or h.get("token") != self.token:
                    return  # taken over (we were presumed dead): stop touching it
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="se3t-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        h = self.holder()
        if h is not None and h.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_folder(run_dir: str | os.PathLike, *, is_main: bool) -> Iterator[RunLock]:
    """The lock for one rank of a run: rank 0 holds it for the block, the other ranks of the
    job only check that no other job holds it."""
    lock = RunLock(run_dir, job=job_identity())
    if not is_main:
        lock.check_free()
        yield lock
        return
    with lock:
        yield lock
