"""Text files of unknown encoding: UTF-8 (with or without a byte-order mark), UTF-16 with its
byte-order mark, and Latin-1, which titles and names written by older tools (and spreadsheet
exports) often are. Every byte sequence is Latin-1, so a file that is not UTF-8 is read as
Latin-1 with a warning naming the file, the line and the record where UTF-8 first fails.
"""

from __future__ import annotations

import codecs
import logging
from pathlib import Path

from se3t.errors import InputError

__all__ = ["decode", "read_text"]

log = logging.getLogger("se3t.data")


def decode(data: bytes, path: Path, record_mark: bytes | None = None) -> tuple[str, str]:
    """``(text, encoding)`` of the bytes of ``path``; ``record_mark`` (``b"$$$$"`` for SDF)
    lets the warning name the record (0-based) as well as the line."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as err:
            raise InputError(
                f"{path}: starts as UTF-16 text but byte {err.start} is not UTF-16; "
                "save the file as UTF-8"
            ) from None
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as err:
        head = data[: err.start]
        line = head.count(b"\n") + 1
        record = f", record {head.count(record_mark)}" if record_mark else ""
        log.warning(
            "%s: line %d%s is not UTF-8 (byte 0x%02x); the file is read as Latin-1",
            path,
            line,
            record,
            data[err.start],
        )
        return data.decode("latin-1"), "latin-1"


def read_text(path: str | Path, record_mark: bytes | None = None) -> str:
    """The text of ``path`` (see :func:`decode`); InputError naming it when unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    return decode(data, path, record_mark)[0]
