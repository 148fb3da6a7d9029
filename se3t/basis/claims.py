"""Claims on a store being written: the writer's lease, and per-shard claims that split the
shards between concurrent precomputes.

Both live in ``KEY.zarr/.claims`` (removed by ``finalize``):

- ``writer-HOST-PID-ID.json``: one per precompute at work on the store, from before its first
  shard until it returns, renewed every ``ttl_s / 3`` by a background thread. It names the
  user, host, process and start time, so ``se3t basis gc`` can skip the store and say who is
  writing it, and another user's precompute can wait for it or say whom to ask.
- ``U.claim``: shard ``U`` is being computed (``O_EXCL``), so processes sharing a store split
  the work; removed when the shard is written.

A claim is live while its process runs (same host: probed with signal 0) and, for another
host's process that cannot be probed, while its file was touched within ``ttl_s``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from se3t.basis.layout import CLAIMS_DIR

__all__ = ["Claims", "WriterLease", "alive", "describe", "live_claims", "owner_of", "who"]

WRITER_PREFIX = "writer-"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


def who() -> str:
    """``user@host`` for the created-by fields."""
    return f"{_user()}@{socket.gethostname()}"


def owner_of(path: Path) -> str:
    """The user name owning ``path`` (its uid when the name is unknown here)."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _claim_live(path: Path, info: dict[str, Any], ttl_s: float, now: float) -> bool:
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return False  # removed meanwhile: its writer is done
    if info.get("host") == socket.gethostname():
        return alive(int(info.get("pid", -1)))
    return age <= float(info.get("ttl_s", ttl_s))


def live_claims(store: Path, ttl_s: float = 600.0, now: float | None = None) -> list[dict]:
    """Who is at work on ``store``: one dict (``user``, ``host``, ``pid``, ``since``) per live
    writer lease or shard claim, writers first; empty when nobody is (or the store is gone)."""
    now = time.time() if now is None else now
    folder = store / CLAIMS_DIR
    try:
        names = sorted(os.listdir(folder), key=lambda n: not n.startswith(WRITER_PREFIX))
    except OSError:
        return []
    out, seen = [], set()
    for name in names:
        path = folder / name
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # half-written by a killed process, or removed meanwhile
        if not isinstance(info, dict) or not _claim_live(path, info, ttl_s, now):
            continue
        who = (info.get("host"), info.get("pid"))
        if who in seen:
            continue
        seen.add(who)
        out.append(
            {
                "user": info.get("user") or owner_of(path),
                "host": info.get("host", "?"),
                "pid": info.get("pid"),
                "since": float(info.get("since", info.get("time", 0.0))),
            }
        )
    return out


def describe(claim: dict) -> str:
    """``user, host, since 2026-12-06T19:00:00Z`` of a live claim."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claim["since"]))
    return f"{claim['user']}, {claim['host']}, since {since}"


def _record(ttl_s: float, since: float) -> dict[str, Any]:
    return {
        "user": _user(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": since,
        "time": time.time(),
        "ttl_s": ttl_s,
    }


class WriterLease:
    """This process's lease on a store it writes (``.claims/writer-*.json``), renewed in the
    background; use as a context manager. :meth:`lost` tells whether the file is gone: the
    store was finalized by another process, or removed."""

    def __init__(self, store: Path, ttl_s: float) -> None:
        self.store, self.ttl_s = store, ttl_s
        name = f"{WRITER_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.path = store / CLAIMS_DIR / name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WriterLease:
        self.path.parent.mkdir(exist_ok=True)
        since = time.time()
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "w") as fh:
            json.dump(_record(self.ttl_s, since), fh)

        def renew() -> None:
            while not self._stop.wait(max(0.05, self.ttl_s / 3)):
                with contextlib.suppress(OSError):  # gone: finalized or removed meanwhile
                    os.utime(self.path)

        self._thread = threading.Thread(target=renew, daemon=True, name="se3t-writer-lease")
        self._thread.start()
        return self

    def lost(self) -> bool:
        return not self.path.is_file()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


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
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                if self._stale(path):
                    path.unlink(missing_ok=True)
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                json.dump(_record(self.timeout_s, time.time()), fh)
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
            return not alive(int(info.get("pid", -1)))
        return age > self.timeout_s

    def release(self, u: int) -> None:
        self._file(u).unlink(missing_ok=True)
        self.held.discard(u)

    def release_all(self) -> None:
        """Release every claim still held (a failed precompute: others may take them now)."""
        for u in list(self.held):
            self.release(u)
