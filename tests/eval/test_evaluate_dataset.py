"""A model is scored only on the dataset and split it was trained with, unless the user says
otherwise, and then the metrics say what was evaluated."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from faults import QM9PACK, cli

from se3t.data.sources.qm9 import build_qm9
from se3t.errors import InputError
from se3t.eval import evaluate


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    """The first 200 of the test molecules: a different store, whose "test" split overlaps the
    training molecules of a model trained on all 275."""
    out = tmp_path_factory.mktemp("other") / "qm9.zarr"
    build_qm9(QM9PACK, out, limit=200, processes=1, progress=False)
    return out


def test_the_training_dataset_is_checked_and_recorded(trained_run, tmp_path):
    doc = evaluate(trained_run, "test", tmp_path, progress=False)
    assert doc["dataset_check"]["matches_training"] is True


def test_another_dataset_is_refused(trained_run, other_dataset, tmp_path, capsys):
    """Before: scored on the other store with exit 0, its test split overlapping training."""
    with pytest.raises(InputError, match=r"trained on dataset .* not on .*--allow-other-dataset"):
        evaluate(trained_run, "test", tmp_path, dataset=other_dataset, progress=False)
    out = tmp_path / "cli"
    code, _, err = cli(capsys, "evaluate", trained_run, "--dataset", other_dataset, "--out", out)
    assert code == 2 and "--allow-other-dataset" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_allowed_explicitly_and_then_said(trained_run, other_dataset, tmp_path, capsys):
    code, stdout, _ = cli(
        capsys,
        "evaluate",
        trained_run,
        "--dataset",
        other_dataset,
        "--out",
        tmp_path,
        "--allow-other-dataset",
        "--quiet",
    )
    assert code == 0 and "NOT the training dataset" in stdout
    check = json.loads((tmp_path / "metrics.json").read_text())["dataset_check"]
    assert check["matches_training"] is False and check["path"] == str(other_dataset)
    assert check["training"]["fingerprint"] != check["fingerprint"]


def test_a_checkpoint_without_a_record(trained_run, other_dataset, tmp_path):
    """Checkpoints made before the record: their own dataset still evaluates; another one
    cannot be checked, so it needs the flag."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        del state["dataset"]
        torch.save(state, run / name)
    doc = evaluate(run, "test", tmp_path / "a", progress=False)
    assert doc["dataset_check"]["matches_training"] is None
    with pytest.raises(InputError, match="records no dataset"):
        evaluate(run, "test", tmp_path / "b", dataset=other_dataset, progress=False)
