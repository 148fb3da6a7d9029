"""The command line under stress: SIGTERM, a full disk, overrides after options, unsafe
checkpoints. Each ends in one clear line and a non-zero exit, never a traceback, and leaves
nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import QM9PACK, cli

REPO = Path(__file__).resolve().parents[1]


def _se3t(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "se3t.cli", *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


def _qm9pack_folder() -> Path:
    from se3t.data.sources.qm9 import qm9pack_files
    from se3t.errors import InputError

    try:
        files = qm9pack_files()
    except InputError as err:
        pytest.skip(str(err))
    return next(iter(files.values()))[0].parent


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


# A SIGTERM that lands inside the constructor of zarr's asyncio event loop (after the base
# class's __init__, before the Unix loop sets its signal table) leaves a half-built loop whose
# __del__ printed a traceback under the one-line message. The test makes that landing certain
# instead of lucky: the real signal is sent from within the real constructor.
_SIGTERM_IN_LOOP_INIT = """
import asyncio.selector_events, os, signal, sys
import se3t.cli
base = asyncio.selector_events.BaseSelectorEventLoop.__init__
def init(self, *args, **kwargs):
    base(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
asyncio.selector_events.BaseSelectorEventLoop.__init__ = init
sys.exit(se3t.cli.main(sys.argv[1:]))
"""


def test_sigterm_inside_a_half_built_object_still_ends_in_one_line(tmp_path):
    out = tmp_path / "qm9.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGTERM_IN_LOOP_INIT, "data", "build", "--raw",
         str(_qm9pack_folder()), "--out", str(out), "--limit", "50", "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.startswith("se3t data: terminated (SIGTERM)"), proc.stderr
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("when", ["parsing", "writing"])
def test_sigterm_during_data_build_cleans_up_and_says_so(tmp_path, when):
    """Before: exit 143 with no message, and .qm9.zarr.tmp-* left behind."""
    out = tmp_path / "qm9.zarr"
    # parsing: long enough that the signal lands before the store is written (6,000 molecules
    # took under 3 s here, so a fixed sleep sometimes hit a finished build)
    limit = "60000" if when == "parsing" else "6000"
    proc = _se3t(
        "data", "build", "--raw", _qm9pack_folder(), "--out", out,
        "--limit", limit, "--processes", "2", "--quiet",
    )  # fmt: skip
    deadline = time.time() + 240
    if when == "parsing":  # the bond workers start with the first parsed chunk
        while not _children(proc.pid) and time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the build finished before it started its workers")
            time.sleep(0.005)
    else:  # the store's temporary folder appears only while the arrays are written
        while not list(tmp_path.glob(".qm9.zarr.tmp-*")) and time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the build finished before its store was being written")
            time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no temporaries


def test_overrides_may_follow_options(qm9_store, tmp_path, capsys):
    """Before: `se3t train CFG a=1 --no-progress b=2` failed in argparse."""
    from faults import config_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    code, _, err = cli(
        capsys,
        *config_args(["train"], cfg),
        f"data.path={tmp_path / 'none.zarr'}",
        "--no-progress",
        "train.lr=0.001",
    )
    assert code == 2 and "none.zarr" in err  # parsed: the run got as far as the dataset
    code, _, err = cli(capsys, *config_args(["train"], cfg), "--no-progress", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB filesystem (tmpfs), so that writes fail with ENOSPC."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_during_data_build_names_the_path(small_disk, tmp_path, capsys):
    """Before: an OSError traceback."""
    import shutil

    # leave 16 KB: the store's metadata fits, its arrays (~100 KB compressed) do not
    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 16384))
    code, _, err = cli(
        capsys, "data", "build", "--raw", QM9PACK, "--out", small_disk / "qm9.zarr", "--quiet"
    )
    assert code == 2 and "Traceback" not in err
    assert f"no space left on the device while writing {small_disk / 'qm9.zarr'}" in err
    assert "rerun the same command" in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_full_disk_during_precompute_names_the_path_and_a_rerun_resumes(
    qm9_store, small_disk, capsys
):
    args = [
        "basis",
        "precompute",
        "--dataset",
        qm9_store,
        "--cache",
        small_disk,
        "--quiet",
        "basis.chunk_edges=512",
        "basis.chunks_per_shard=1",
        "basis.max_degree=2",
    ]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "Traceback" not in err
    assert "no space left on the device while writing" in err and "basis/c/" in err
    shards = [p for p in small_disk.rglob("basis/c/*/0")]
    assert shards  # whole shards were kept ...
    assert not [p for p in small_disk.rglob(".*") if p.is_file()]  # ... and no partial one
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_disk)], check=True)
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert f"{len(shards)} reused" in out
