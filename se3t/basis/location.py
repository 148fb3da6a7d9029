"""Where a basis cache lives and who writes it: local paths versus fsspec URLs, the
``user@host`` stamp, and the writability probe run before any work starts."""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from pathlib import Path

from se3t.errors import InputError

__all__ = ["ensure_writable_cache", "is_url", "local_path", "who"]


def is_url(path: str | os.PathLike) -> bool:
    """True for fsspec URLs other than ``file://`` (``s3://bucket/x``, ``memory://x``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    """A local path from a path or ``file://`` URL; raises InputError for other URLs."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif is_url(text):
        raise InputError(
            f"{text!r}: this operation writes to the basis store and needs a local (or shared "
            "POSIX) folder; for an s3:// cache use se3t basis precompute/finalize/publish "
            "with basis.cache set to the URL (docs/basis.md, sharing across sites)"
        )
    return Path(text)


def who() -> str:
    """``user@host`` for the created-by fields."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def ensure_writable_cache(cache: str | os.PathLike) -> Path:
    """Create ``CACHE/basis`` and prove it writable with a probe file; return the folder.

    Runs before any work so that a cache the user cannot write (read-only mount, missing
    permission, a file where the folder should be, immutable folder, full disk) fails at once
    with a message naming the folder, instead of after minutes of computation. Permission bits
    alone are not trusted (root ignores them): the probe really creates, writes and removes a file.
    """
    root = local_path(cache)
    target = root / "basis"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise InputError(
            f"basis cache {str(root)!r} cannot be used: {err.filename or target} is not a folder "
            "(set basis.cache or --cache to a writable folder)"
        ) from err
    except OSError as err:
        raise InputError(
            f"basis cache {str(root)!r} cannot be created: {err.strerror} ({err.filename}); "
            "set basis.cache or --cache to a writable folder"
        ) from err
    if not target.is_dir():
        raise InputError(f"basis cache {str(root)!r}: {target} is not a folder")
    probe = target / f".probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"se3t")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        raise InputError(
            f"basis cache {str(root)!r} is not writable: {err.strerror} ({target}); "
            "set basis.cache or --cache to a folder you can write"
        ) from err
    return target
