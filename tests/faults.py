"""Fault injection for the stores' tests: damage one file the way disks, copies and people do.

``damage(file, fault)`` applies one of :data:`FAULTS` to a real file of a real store:

- ``delete``: the file is gone (Zarr would read a missing chunk as its fill value, zeros);
- ``truncate``: the file keeps its first half (an interrupted copy);
- ``flip``: 8 bytes in the middle are inverted (a bad disk or a bad edit).

``rewrite_values`` changes the values of a dataset array through Zarr itself, so the chunk still
decodes and only the content (checked against the recorded fingerprint) can tell.
``cli(capsys, *argv)`` runs the ``se3t`` entry point in process and returns (exit code, stdout,
stderr); ``config_args(path)`` spells "this config file" in the form the CLI takes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

FAULTS = ("delete", "truncate", "flip")
QM9PACK = Path(__file__).parent / "data" / "qm9" / "qm9pack"  # the committed real molecules


def writable(path: Path) -> None:
    """Undo a finalized store's read-only bits on ``path`` and its parents up to the store."""
    for p in [path, *path.parents][:6]:
        if p.exists():
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)


def damage(file: Path, fault: str) -> None:
    file = Path(file)
    assert file.is_file(), file
    writable(file)
    data = file.read_bytes()
    if fault == "delete":
        file.unlink()
    elif fault == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif fault == "flip":
        mid = len(data) // 2
        file.write_bytes(
            data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 8]) + data[mid + 8 :]
        )
    else:
        raise ValueError(fault)


def rewrite_values(store: Path, array: str) -> None:
    """Add 1 to the first entry of a dataset array, written back through Zarr (valid chunk)."""
    import zarr

    arr = zarr.open_array(str(Path(store) / array), mode="r+")
    first = np.asarray(arr[0:1])
    arr[0:1] = first + 1
    assert not np.array_equal(np.asarray(arr[0:1]), first)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from se3t.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse errors
        code = exit_.code if isinstance(exit_.code, int) else 2
    out = capsys.readouterr()
    return code, out.out, out.err


def config_args(command: list[str], config: Path) -> list[str]:
    """``[..command, CONFIG]`` or ``[..command, --config, CONFIG]``: whichever the command's
    parser takes (the CLI moves from a positional CONFIG to ``--config``)."""
    from se3t.cli import build_parser

    parser = build_parser()
    try:
        parser.parse_args([*command, "--config", str(config)])
        return [*command, "--config", str(config)]
    except SystemExit:
        return [*command, str(config)]
