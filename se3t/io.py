"""Atomic file output for every stage: a temporary file in the target folder, then a rename.

A crash (or Ctrl-C) never leaves a half-written ``metrics.json``, CSV or PNG behind: readers see
either the previous file or the complete new one. With ``fsync=True`` this also holds across a
power loss: the file's bytes reach the disk before the rename, and the rename (the folder
entry) right after it; without it the kernel may commit the rename first and leave a
renamed-but-empty file. Checkpoints and downloads use it; small reports need not pay for it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "replace", "write_bytes", "write_json", "write_text"]


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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
