"""Errors that reach the user: each message names the input (file, record, field, key)."""

from __future__ import annotations

__all__ = ["InputError", "Se3tError"]


class Se3tError(Exception):
    """Base class of errors the command line prints as one clear line (no traceback)."""


class InputError(Se3tError, ValueError):
    """Bad input: a file, record or field that cannot be used; the message names it."""
