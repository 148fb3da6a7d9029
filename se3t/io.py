"""Atomic file output for every stage: a temporary file in the target folder, then a rename.

The one writer of the project: files (:func:`atomic_write` and its ``write_*`` helpers, which
also stream many buffers with one ``writev``) and whole folders (:func:`atomic_dir`, for Zarr
stores built under a temporary name). No other module renames a temporary into place.

A crash (or Ctrl-C) never leaves a half-written ``metrics.json``, CSV or PNG behind: readers see
either the previous file or the complete new one. With ``fsync=True`` this also holds across a
power loss: the file's bytes reach the disk before the rename, and the rename (the folder
entry) right after it; without it the kernel may commit the rename first and leave a
renamed-but-empty file. Checkpoints and downloads use it; small reports need not pay for it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from se3t.errors import DiskFullError

__all__ = [
    "TMP_DIR_MARK",
    "atomic_dir",
    "atomic_write",
    "replace",
    "write_buffers",
    "write_bytes",
    "write_json",
    "write_text",
]

TMP_DIR_MARK = ".tmp-"  # in the name of a folder being built: ``.NAME.tmp-HEX``


def _fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str | os.PathLike, path: str | os.PathLike, *, fsync: bool = False) -> Path:
    """Rename the complete file ``tmp`` onto ``path`` (same folder: atomic on POSIX).

    With ``fsync``: fsync ``tmp`` before the rename and the folder after it, so that after a
    power loss ``path`` is either the old file or all of the new one. For files built in place
    over a long time (a download's ``.part``), whose mode is already the one ``open`` gave.
    """
    path = Path(path)
    if fsync:
        _fsync_path(tmp)
    os.replace(tmp, path)
    if fsync:
        _fsync_path(path.parent, directory=True)
    return path


def atomic_write(
    path: str | os.PathLike,
    writer: Callable[[str], None],
    *,
    fsync: bool = False,
    exclusive: bool = False,
) -> Path:
    """Call ``writer(tmp_path)`` to produce the file, then rename it onto ``path``.

    ``writer`` gets the path of an empty file in ``path``'s folder (hidden name, same suffix)
    and must have closed it when it returns. If it raises, the temporary file is removed and
    ``path`` is untouched. The file gets the mode a plain ``open`` would (0666 & ~umask).
    ``fsync``: see :func:`replace`. ``exclusive``: create ``path`` only if it does not exist
    (a hard link, which fails on an existing target, instead of the rename) and raise
    FileExistsError when another writer got there first, whose file then stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the suffix is kept so that writers choosing a format by extension (matplotlib) still can
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if exclusive:
            if fsync:
                _fsync_path(tmp)
            os.link(tmp, path)  # FileExistsError when the target exists: it is kept
            Path(tmp).unlink()
            if fsync:
                _fsync_path(path.parent, directory=True)
        else:
            replace(tmp, path, fsync=fsync)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err):
            raise _disk_full(err, path) from None
        raise
    return path


def _is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full(err: BaseException, path: Path) -> DiskFullError:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    return DiskFullError(str(path), free)


def write_text(
    path: str | os.PathLike, text: str, *, fsync: bool = False, exclusive: bool = False
) -> Path:
    return atomic_write(
        path,
        lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
        fsync=fsync,
        exclusive=exclusive,
    )


def write_bytes(
    path: str | os.PathLike, data: bytes, *, fsync: bool = False, exclusive: bool = False
) -> Path:
    return atomic_write(
        path, lambda tmp: Path(tmp).write_bytes(data), fsync=fsync, exclusive=exclusive
    )


def write_json(path: str | os.PathLike, obj: Any, *, fsync: bool = False) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text(path, text, fsync=fsync)


def write_buffers(path: str | os.PathLike, buffers: list[Any], *, fsync: bool = False) -> int:
    """Write the concatenation of ``buffers`` (bytes-like, any number) atomically with as few
    ``writev`` calls as the kernel allows (no joined copy of a large file in memory); returns
    the number of bytes written."""
    views = [memoryview(b).cast("B") for b in buffers]
    total = sum(len(v) for v in views)

    def writer(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            while views:  # one writev; loop only if the kernel wrote part of it
                done_now = os.writev(fd, views[:1024])
                while views and done_now >= len(views[0]):
                    done_now -= len(views[0])
                    views.pop(0)
                if views and done_now:
                    views[0] = views[0][done_now:]
        finally:
            os.close(fd)

    atomic_write(path, writer, fsync=fsync)
    return total


def _settle_background_writes(timeout: float = 120.0) -> None:
    """Wait for the writes Zarr still has in flight on its event-loop thread.

    Zarr 3 runs every store write on its own thread and the caller only waits for it. A signal
    (SIGTERM, Ctrl-C) raised in the caller during that wait leaves the writes running, and they
    recreate files inside a temporary folder after it has been removed. Nothing to do when zarr
    was never used in this process.
    """
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    import asyncio

    async def drain() -> None:
        me = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not me and not t.done()]:
            await asyncio.wait(pending)

    import concurrent.futures
    import contextlib

    # best effort: the builder's own error is what the caller must see
    with contextlib.suppress(concurrent.futures.TimeoutError):
        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout=timeout)


def atomic_dir(
    path: str | os.PathLike, builder: Callable[[Path], None], *, exclusive: bool = False
) -> Path:
    """Call ``builder(tmp)`` to fill an empty folder beside ``path`` (``.NAME.tmp-HEX``), then
    rename it onto ``path``, so readers see no folder or a complete one.

    An existing ``path`` is replaced (moved aside first, removed after the rename) unless
    ``exclusive``, which instead raises FileExistsError and keeps it: when two processes build
    one folder, the first complete one wins. If ``builder`` raises (KeyboardInterrupt included),
    the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_DIR_MARK}{uuid.uuid4().hex[:12]}")
    try:
        # inside the try: a signal that lands just after mkdir still removes the folder
        tmp.mkdir()
        try:
            builder(tmp)
        except OSError as err:
            _settle_background_writes()
            if _is_disk_full(err):
                raise _disk_full(err, path) from None
            raise
        except BaseException:
            _settle_background_writes()
            raise
        if exclusive:
            try:
                os.rename(tmp, path)  # fails on an existing non-empty folder
            except OSError as err:
                if path.is_dir():  # ENOTEMPTY/EEXIST: someone else created it first
                    raise FileExistsError(str(path)) from err
                raise
        elif path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
