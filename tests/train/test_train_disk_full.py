"""``se3t train`` on a full disk: one line naming the path, nothing half-written left behind
(no empty lock temporaries, no partial checkpoint). A real small filesystem (tmpfs: root)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from train_helpers import as_args, empty_config, se3t, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def _fill(disk, leave: int) -> None:
    (disk / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(disk).free - leave))


def _train(store, run, tmp_path):
    over = tiny_overrides(store, run, **{"train.epochs": 1})
    return se3t("train", "--no-progress", "--config", str(empty_config(tmp_path)), *as_args(over))


def _error_line(proc) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("se3t train:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_a_full_disk_at_the_run_lock_names_it_and_leaves_nothing(qm9_store, small_disk, tmp_path):
    _fill(small_disk, 0)
    run = small_disk / "run"
    line = _error_line(_train(qm9_store, run, tmp_path))
    assert f"no space left on the device while writing {run / '.se3t-run.lock'}" in line
    assert list(run.iterdir()) == []  # no empty lock temporary


def test_a_full_disk_at_the_checkpoint_names_it_and_leaves_nothing(qm9_store, small_disk, tmp_path):
    # a checkpoint of this model on a real disk: the small one gets room for the logs and
    # half of it
    ref = _train(qm9_store, tmp_path / "ref", tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    size = (tmp_path / "ref" / "last.pt").stat().st_size
    _fill(small_disk, 16384 + size // 2)
    run = small_disk / "run"
    line = _error_line(_train(qm9_store, run, tmp_path))
    assert f"no space left on the device while writing {run / 'last.pt'}" in line
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl", "train.log"]
