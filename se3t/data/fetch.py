"""Moving raw input files: copy and download them with a sha256 for each.

:func:`download` retries with exponential backoff, resumes through HTTP Range, checks the sha256
and renames atomically; :func:`copy_file` copies atomically and returns the sha256 of what it
wrote. QM9's fetch (:mod:`se3t.data.sources.qm9.fetch`) and the copy of users' own input
(:func:`se3t.data.sources.own.fetch_molecules`) are built on them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from se3t.errors import InputError
from se3t.io import atomic_write, replace

__all__ = ["copy_file", "download", "sha256_file"]

_BUF = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def copy_file(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest`` atomically; returns the sha256 of what was written."""
    h = hashlib.sha256()

    def writer(tmp: str) -> None:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_BUF):
                h.update(chunk)
                fout.write(chunk)

    atomic_write(dest, writer)
    return h.hexdigest()


# -------------------------------------------------------------------------------------- HTTP


class _Permanent(Exception):
    pass


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest``; returns the file's sha256.

    The bytes go to ``dest + '.part'``; after a dropped connection the next attempt asks for the
    rest with ``Range: bytes=N-`` (a server that ignores it sends everything again, which is
    fine). Attempts are retried up to ``retries`` times with sleeps of ``backoff * 2**k`` s; an
    HTTP 4xx other than 408/429 fails at once. When all bytes are in, the sha256 is checked
    (when given): a mismatch deletes the partial file and raises InputError; otherwise the file
    is fsynced and renamed to ``dest`` (:func:`se3t.io.replace`). An existing ``dest`` with the
    expected sha256 is kept as it is.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256:
        return sha256
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _download_once(url, part, timeout, tqdm, progress)
            last = None
            break
        except _Permanent as err:
            raise InputError(str(err)) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            # URLError, ConnectionError and TimeoutError are OSErrors: a dropped or refused
            # connection, a timeout; all worth another attempt
            last = err
    if last is not None:
        raise InputError(
            f"{url}: download failed after {retries + 1} attempts ({last}); "
            f"{part} keeps the bytes received, the next run resumes from there"
        )
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise InputError(
            f"{url}: sha256 mismatch for {dest.name}: expected {sha256}, got {digest} "
            "(the downloaded file was deleted)"
        )
    # fsync: a large file renamed before its bytes reach the disk could survive a power loss
    # as a complete-looking, truncated archive
    replace(part, dest, fsync=True)
    return digest


def _download_once(url: str, part: Path, timeout: float, tqdm, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "se3t-fetch", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return  # nothing left to send: the partial file is complete (the hash decides)
        if 400 <= err.code < 500 and err.code not in (408, 429):
            raise _Permanent(f"{url}: HTTP {err.code} {err.reason}") from None
        raise
    with resp:
        total = resp.headers.get("Content-Length")
        total = int(total) if total is not None else None
        if resp.status == 206:
            rng = resp.headers.get("Content-Range", "")
            start = int(rng.split()[1].split("-")[0]) if rng.startswith("bytes ") else -1
            if start != have:
                raise http.client.HTTPException(f"unexpected Content-Range {rng!r}")
            mode = "ab"
        else:
            have, mode = 0, "wb"  # the server sends the whole file
        received = 0
        with (
            open(part, mode) as fh,
            tqdm(
                total=(total + have) if total is not None else None,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while True:
                chunk = resp.read(_BUF)
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received < total:
            raise http.client.IncompleteRead(b"", total - received)
