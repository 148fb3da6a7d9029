"""Errors that reach the user: each message names the input (file, record, field, key)."""

from __future__ import annotations

__all__ = ["DiskFullError", "InputError", "Se3tError", "Terminated"]


class Se3tError(Exception):
    """Base class of errors the command line prints as one clear line (no traceback)."""


class InputError(Se3tError, ValueError):
    """Bad input: a file, record or field that cannot be used; the message names it."""


class DiskFullError(Se3tError):
    """The filesystem filled up while writing; the message names the path and says that a
    rerun continues (every writer is atomic: nothing half-written was left behind)."""

    def __init__(self, path: str, free_bytes: int | None = None) -> None:
        free = "" if free_bytes is None else f", {free_bytes / 1e6:,.1f} MB free now"
        super().__init__(
            f"no space left on the device while writing {path}{free}. Nothing half-written "
            "was kept; free space (or point the output elsewhere) and rerun the same command: "
            "finished work (downloads, complete basis shards, checkpoints) is reused"
        )
        self.path = path


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that cleanup runs as for Ctrl-C."""
