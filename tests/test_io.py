"""se3t.io: atomic writes (temporary file + rename), with and without fsync, on the real disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from se3t import io


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(data: bytes):
    def writer(tmp: str) -> None:
        assert Path(tmp).parent.is_dir() and Path(tmp).name.startswith(".")
        Path(tmp).write_bytes(data)

    return writer


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_write_creates_the_file_with_open_mode(tmp_path, fsync):
    path = tmp_path / "sub" / "a.json"  # the folder is created
    assert io.atomic_write(path, _write(b"hello"), fsync=fsync) == path
    assert path.read_bytes() == b"hello"
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary file left


def test_fsync_produces_the_same_file(tmp_path):
    data = os.urandom(3 << 20)
    a = io.atomic_write(tmp_path / "a.bin", _write(data))
    b = io.atomic_write(tmp_path / "b.bin", _write(data), fsync=True)
    assert a.read_bytes() == b.read_bytes() == data
    assert os.stat(a).st_mode == os.stat(b).st_mode


def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        io.write_text(tmp_path / "x.txt", "x")
        io.atomic_write(tmp_path / "y.txt", _write(b"y"), fsync=True)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "x.txt").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "y.txt").st_mode & 0o777 == 0o640


@pytest.mark.parametrize("fsync", [False, True])
def test_a_failing_writer_leaves_no_file_and_no_temporary(tmp_path, fsync):
    def writer(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(tmp_path / "new.pt", writer, fsync=fsync)
    assert list(tmp_path.iterdir()) == []
    # an existing file is kept as it was
    io.write_bytes(tmp_path / "old.pt", b"old")
    with pytest.raises(RuntimeError):
        io.atomic_write(tmp_path / "old.pt", writer, fsync=fsync)
    assert (tmp_path / "old.pt").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.pt"]


def test_keyboard_interrupt_cleans_up_too(tmp_path):
    def writer(tmp: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(tmp_path / "f.txt", writer)
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_keeps_the_suffix(tmp_path):
    seen = []
    io.atomic_write(tmp_path / "plot.png", lambda tmp: (seen.append(tmp), Path(tmp).touch()))
    assert seen[0].endswith(".png") and Path(seen[0]).parent == tmp_path


@pytest.mark.parametrize("fsync", [False, True])
def test_replace_moves_a_finished_file_into_place(tmp_path, fsync):
    part = tmp_path / "a.tar.part"
    part.write_bytes(b"all of it")
    mode = os.stat(part).st_mode
    (tmp_path / "a.tar").write_bytes(b"older")
    assert io.replace(part, tmp_path / "a.tar", fsync=fsync) == tmp_path / "a.tar"
    assert (tmp_path / "a.tar").read_bytes() == b"all of it"
    assert os.stat(tmp_path / "a.tar").st_mode == mode
    assert not part.exists()


def test_replace_of_a_missing_file_fails_and_keeps_the_target(tmp_path):
    (tmp_path / "a").write_bytes(b"kept")
    for fsync in (False, True):
        with pytest.raises(FileNotFoundError):
            io.replace(tmp_path / "missing", tmp_path / "a", fsync=fsync)
    assert (tmp_path / "a").read_bytes() == b"kept"


def test_text_and_json_helpers(tmp_path):
    io.write_json(tmp_path / "m.json", {"a": [1, 2.5]})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1,\n    2.5\n  ]\n}\n'
    with pytest.raises(ValueError):  # NaN is not JSON; nothing is written
        io.write_json(tmp_path / "n.json", {"a": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    io.write_text(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\n".encode()


def test_fsync_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A spy around the real os.fsync and os.replace records the order of the calls."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(("fsync", "dir" if target.is_dir() else "file"))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.atomic_write(tmp_path / "last.pt", _write(b"state"), fsync=True)
    assert calls == [("fsync", "file"), ("replace", "last.pt"), ("fsync", "dir")]
    calls.clear()
    io.atomic_write(tmp_path / "metrics.json", _write(b"{}"))
    assert calls == [("replace", "metrics.json")]


@pytest.mark.parametrize("fsync", [False, True])
def test_exclusive_write_keeps_the_first_file(tmp_path, fsync):
    """Two racing writers of one record: the first file stays, the second gets
    FileExistsError, and neither leaves a temporary behind."""
    target = tmp_path / "checksums.json"
    io.write_bytes(target, b"first", exclusive=True, fsync=fsync)
    with pytest.raises(FileExistsError):
        io.write_bytes(target, b"second", exclusive=True, fsync=fsync)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checksums.json"]


def test_write_buffers_writes_the_concatenation(tmp_path):
    parts = [b"ab", bytearray(b"cd"), memoryview(b"ef"), b""] * 600  # > one writev's 1,024
    target = tmp_path / "shard"
    assert io.write_buffers(target, parts) == 6 * 600
    assert target.read_bytes() == b"abcdef" * 600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard"]


def _fill(text):
    def build(tmp):
        (tmp / "a").mkdir()
        (tmp / "a" / "x").write_text(text)

    return build


def test_atomic_dir_replaces_a_folder_only_when_the_new_one_is_whole(tmp_path):
    target = tmp_path / "store.zarr"
    io.atomic_dir(target, _fill("one"))
    assert (target / "a" / "x").read_text() == "one"

    def failing(tmp):
        _fill("two")(tmp)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_dir(target, failing)
    assert (target / "a" / "x").read_text() == "one"
    io.atomic_dir(target, _fill("three"))
    assert (target / "a" / "x").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]  # no temporaries


def test_exclusive_atomic_dir_keeps_the_first_folder(tmp_path):
    target = tmp_path / "store.zarr"
    io.atomic_dir(target, _fill("first"), exclusive=True)
    with pytest.raises(FileExistsError):
        io.atomic_dir(target, _fill("second"), exclusive=True)
    assert (target / "a" / "x").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_an_interrupted_zarr_build_leaves_no_temporary_behind(tmp_path):
    """Zarr 3 writes chunks on its own event-loop thread. A signal that interrupts the builder
    while it waits (SIGTERM, Ctrl-C) leaves those writes running; before the fix they recreated
    ``.store.zarr.tmp-*`` after it was removed (CI, test_sigterm_during_data_build...[writing])."""
    import asyncio

    import numpy as np
    import zarr
    from zarr.core.sync import _get_loop

    data = np.arange(400_000, dtype=np.float32)
    in_flight = []

    def interrupted(tmp):
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arr = group.create_array("x", shape=data.shape, dtype=data.dtype, chunks=(1_000,))
        # what zarr's sync() leaves running when the wait in the main thread is interrupted
        in_flight.append(
            asyncio.run_coroutine_threadsafe(arr._async_array.setitem(..., data), _get_loop())
        )
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.atomic_dir(tmp_path / "store.zarr", interrupted)
    in_flight[0].result(timeout=60)  # every write has landed (or been refused) by now
    assert sorted(p.name for p in tmp_path.iterdir()) == []
