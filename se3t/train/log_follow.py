"""Following a job's log while it runs, and the log of the rank that failed when it fails."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TextIO

from se3t.train import submitit_api

__all__ = ["Follower", "failed_rank_log", "tail"]


class Follower:
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


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def failed_rank_log(job) -> tuple[int, Path]:
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
