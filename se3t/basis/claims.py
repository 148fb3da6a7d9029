"""Shard claims: how concurrent precomputes of one store split its shards between them."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from se3t.basis.layout import CLAIMS_DIR


class Claims:
    """Per-shard claim files (``O_EXCL``) so that processes sharing a store split the work.

    A claim is stale when its process is gone (same host) or it is older than ``timeout_s`` (a
    shard takes seconds; another host's process cannot be probed); stale claims are taken over.
    """

    def __init__(self, store: Path, timeout_s: float) -> None:
        self.dir = store / CLAIMS_DIR
        self.timeout_s = timeout_s
        self.host = socket.gethostname()
        self.held: set[int] = set()
        self.dir.mkdir(exist_ok=True)

    def _file(self, u: int) -> Path:
        return self.dir / f"{u}.claim"

    def take(self, u: int) -> bool:
        path = self._file(u)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale(path):
                    path.unlink(missing_ok=True)
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": self.host, "pid": os.getpid(), "time": time.time()}, fh)
            self.held.add(u)
            return True
        return False

    def _stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return True  # unreadable or half-written by a killed process
        if info.get("host") == self.host:
            if int(info.get("pid", -1)) == os.getpid():
                # this process's own claim that it no longer holds: left by an earlier call
                # that failed (a full disk), not a shard being computed
                return int(path.stem) not in self.held
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
            return False  # alive: it is computing the shard
        return age > self.timeout_s

    def release(self, u: int) -> None:
        self._file(u).unlink(missing_ok=True)
        self.held.discard(u)

    def release_all(self) -> None:
        """Release every claim still held (a failed precompute: others may take them now)."""
        for u in list(self.held):
            self.release(u)
