"""``se3t data fetch`` for QM9: put its raw files into a folder, with a sha256 for every file.

Sources:

- ``qm9pack``: the CSV files of the installed PyPI package qm9pack (``qm9_part{1,2,3}.csv``),
  located through its distribution metadata (importing qm9pack fails on current setuptools:
  its ``__init__`` needs ``pkg_resources``) and checked against the sha256 its wheel's RECORD
  lists, then copied.
- ``figshare``: ``dsgdb9nsd.xyz.tar.bz2`` and ``uncharacterized.txt`` downloaded from
  configurable URLs (:func:`se3t.data.fetch.download`: retries with exponential backoff, resume
  through HTTP Range, sha256 check, atomic rename).
- a local path: a tar archive of QM9 XYZ files (copied), or a folder of XYZ files (packed into
  one uncompressed tar, so the folder holds one checksummed file) or of qm9pack CSVs (copied).

The folder gets ``SOURCE.json``: the source, and per file its sha256, size and origin. Every
file is written under a temporary name and renamed when complete; a file already present with
the expected sha256 is not fetched again.
"""

from __future__ import annotations

import base64
import datetime as _dt
import importlib.metadata
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from se3t.data.fetch import copy_file, download, sha256_file
from se3t.errors import InputError
from se3t.io import atomic_write, write_json

__all__ = ["fetch", "qm9pack_files"]

QM9PACK_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
ARCHIVE_NAME = "dsgdb9nsd.xyz.tar.bz2"
UNCHARACTERIZED_NAME = "uncharacterized.txt"


# ------------------------------------------------------------------------------------- qm9pack


def qm9pack_files() -> dict[str, tuple[Path, str | None]]:
    """name -> (installed path, sha256 from the wheel's RECORD) for qm9pack's CSV parts."""
    try:
        dist = importlib.metadata.distribution("qm9pack")
    except importlib.metadata.PackageNotFoundError:
        raise InputError(
            "source 'qm9pack': the package qm9pack is not installed "
            "(pip install 'qm9pack==1.0.3', or the extra se3t[qm9])"
        ) from None
    found: dict[str, tuple[Path, str | None]] = {}
    for f in dist.files or []:
        if f.name in QM9PACK_PARTS and f.parent.name == "data":
            digest = None
            if f.hash is not None and f.hash.mode == "sha256":
                pad = "=" * (-len(f.hash.value) % 4)
                digest = base64.urlsafe_b64decode(f.hash.value + pad).hex()
            found[f.name] = (Path(str(dist.locate_file(f))), digest)
    missing = [p for p in QM9PACK_PARTS if p not in found or not found[p][0].is_file()]
    if missing:
        raise InputError(f"source 'qm9pack': installed package lacks {missing}; reinstall it")
    return found


def _fetch_qm9pack(out: Path, previous: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = {}
    for name, (src, expected) in qm9pack_files().items():
        dest = out / name
        old = previous.get(name, {})
        if (
            dest.is_file()
            and expected
            and old.get("sha256") == expected
            and sha256_file(dest) == expected
        ):
            digest = expected
        else:
            digest = copy_file(src, dest)
            if expected and digest != expected:
                dest.unlink(missing_ok=True)
                raise InputError(
                    f"{src}: sha256 {digest} disagrees with qm9pack's RECORD ({expected}): "
                    "the installed package is corrupt; reinstall qm9pack"
                )
        files[name] = {"sha256": digest, "bytes": dest.stat().st_size, "from": str(src)}
    return files


# ------------------------------------------------------------------------------- local paths


def _copied(p: Path, out: Path) -> dict[str, Any]:
    """Copy ``p`` into ``out``; its record in the raw manifest."""
    return {"sha256": copy_file(p, out / p.name), "bytes": p.stat().st_size, "from": str(p)}


def _fetch_path(path: Path, out: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        raise InputError(f"source {str(path)!r}: no such file or directory")
    files: dict[str, dict[str, Any]] = {}
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise InputError(f"{path}: not a tar archive (give a folder or a tar of XYZ files)")
        return {path.name: _copied(path, out)}
    csvs = sorted(path.glob("*.csv"))
    xyz = sorted(p for p in path.rglob("*.xyz") if p.is_file())
    archives = sorted(p for p in path.iterdir() if p.is_file() and ".tar" in p.name)
    if csvs:
        files |= {p.name: _copied(p, out) for p in csvs}
    elif xyz:
        dest = out / "qm9_xyz.tar"

        def pack(tmp: str) -> None:
            with tarfile.open(tmp, "w") as tar:
                for p in xyz:
                    data = p.read_bytes()
                    info = tarfile.TarInfo(str(p.relative_to(path)))
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))

        atomic_write(dest, pack)
        files[dest.name] = {
            "sha256": sha256_file(dest),
            "bytes": dest.stat().st_size,
            "from": f"{path} ({len(xyz)} .xyz files)",
        }
    elif archives:
        files |= {p.name: _copied(p, out) for p in archives}
    else:
        raise InputError(f"{path}: no .xyz files, tar archives or qm9pack CSVs in the folder")
    unc = path / UNCHARACTERIZED_NAME
    if unc.is_file():
        files[unc.name] = {
            "sha256": copy_file(unc, out / unc.name),
            "bytes": unc.stat().st_size,
            "from": str(unc),
        }
    return files


# -------------------------------------------------------------------------------------- entry


def _previous_files(manifest_path: Path) -> dict[str, Any]:
    """The files a previous fetch into the folder recorded (none when unreadable)."""
    if not manifest_path.is_file():
        return {}
    try:
        return json.loads(manifest_path.read_text()).get("files", {})
    except (json.JSONDecodeError, AttributeError):
        return {}


def _fetch_figshare(
    out: Path, urls: dict[str, tuple[str | None, str | None]], how: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Download each name's ``(url, sha256)`` into ``out`` (``how``: :func:`download`'s
    retries, backoff, timeout and progress)."""
    if not all(url for url, _ in urls.values()):
        raise InputError(
            "source 'figshare': data.figshare_url and data.uncharacterized_url must be set"
        )
    files = {}
    for name, (url, digest) in urls.items():
        got = download(url, out / name, sha256=digest, **how)
        files[name] = {
            "sha256": got,
            "bytes": (out / name).stat().st_size,
            "from": url,
            "sha256_checked": digest is not None,
        }
    return files


def fetch(
    source: str,
    out: str | os.PathLike,
    *,
    figshare_url: str | None = None,
    figshare_sha256: str | None = None,
    uncharacterized_url: str | None = None,
    uncharacterized_sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch raw QM9 from ``source`` (qm9pack | figshare | a local path) into ``out``.

    Returns the manifest written to ``out/SOURCE.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "SOURCE.json"
    if source == "qm9pack":
        files = _fetch_qm9pack(out, _previous_files(manifest_path))
    elif source == "figshare":
        urls = {
            ARCHIVE_NAME: (figshare_url, figshare_sha256),
            UNCHARACTERIZED_NAME: (uncharacterized_url, uncharacterized_sha256),
        }
        how = {"retries": retries, "backoff": backoff, "timeout": timeout, "progress": progress}
        files = _fetch_figshare(out, urls, how)
    else:
        files = _fetch_path(Path(source), out)
    manifest = {
        "source": source if source in ("qm9pack", "figshare") else "path",
        "origin": source,
        "files": files,
        "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path, manifest)
    return manifest
