"""``se3t evaluate`` on a tiny model really trained on real QM9 molecules."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from se3t.data import MoleculeDataset, collate, open_dataset
from se3t.errors import InputError
from se3t.eval import evaluate
from se3t.eval.metrics import compute_metrics

PNG = b"\x89PNG\r\n\x1a\n"
QM9PACK = Path(__file__).parents[1] / "data" / "qm9" / "qm9pack"  # the committed real molecules


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "se3t.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_mae_and_rmse_match_a_hand_computation_on_the_saved_predictions(evaluated_run, qm9_store):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    with open(evaluated_run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    errors = defaultdict(list)
    for r in rows:
        errors[r["target"]].append(float(r["prediction"]) - float(r["reference"]))
    assert set(errors) == set(metrics["targets"]) == {"homo"}
    for target, errs in errors.items():
        m = metrics["metrics"][target]
        mae = sum(abs(e) for e in errs) / len(errs)
        rmse = math.sqrt(sum(e * e for e in errs) / len(errs))
        assert m["count"] == len(errs) == metrics["count"]
        assert m["mae"] == pytest.approx(mae, rel=1e-6)
        assert m["rmse"] == pytest.approx(rmse, rel=1e-6)
        assert m["mae_mev"] == pytest.approx(1000 * mae, rel=1e-6)
        assert m["unit"] == "eV"
    # the references are the store's values of the test split's molecules, none missing
    store = open_dataset(qm9_store)
    test = MoleculeDataset(qm9_store, split="test", targets=("homo",))
    col = list(store.target_names).index("homo")
    assert [int(r["row"]) for r in rows] == test.indices.tolist()
    assert [int(r["mol_id"]) for r in rows] == store.mol_id[test.indices].tolist()
    np.testing.assert_allclose(
        [float(r["reference"]) for r in rows], store.targets[test.indices, col], rtol=1e-7
    )


def test_predictions_are_the_models_outputs_destandardized(evaluated_run, qm9_store):
    from se3t.train.checkpoint import load_model

    model, _cfg, stats = load_model(evaluated_run / "best.pt")
    test = MoleculeDataset(qm9_store, split="test", targets=("homo",))
    batch = collate([test[i] for i in range(5)])
    with torch.no_grad():
        out = model(batch).double()  # [5, 1]
    mean = torch.as_tensor(np.asarray(stats["mean"], dtype=np.float64))
    std = torch.as_tensor(np.asarray(stats["std"], dtype=np.float64))
    expected = (out * std + mean)[:, 0].numpy()
    with open(evaluated_run / "predictions.csv", newline="") as fh:
        saved = [float(r["prediction"]) for r in list(csv.DictReader(fh))[:5]]
    np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-6)


def test_figures_are_pngs(evaluated_run):
    for name in ("parity.png", "errors.png"):
        assert (evaluated_run / name).read_bytes()[:8] == PNG


def test_compute_metrics_by_hand():
    ref = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    pred = np.array([[1.5, 10.0], [1.0, 24.0], [3.0, 27.0]])
    m = compute_metrics(ref, pred, ["homo", "mu"])
    assert m["homo"]["mae"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["homo"]["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 3))
    assert m["homo"]["mae_mev"] == pytest.approx(500.0)
    assert m["mu"]["mae"] == pytest.approx(7 / 3) and "mae_mev" not in m["mu"]
    assert m["mu"]["max_abs_error"] == 4.0


@pytest.mark.slow
def test_cli_evaluates_the_val_split_into_another_folder(trained_run, tmp_path):
    out = tmp_path / "val"
    proc = _cli(
        "evaluate", str(trained_run / "last.pt"), "--split", "val", "--out", str(out), "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    assert "homo: MAE" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["checkpoint"].endswith("last.pt")
    assert sorted(p.name for p in out.iterdir()) == [
        "errors.png",
        "metrics.json",
        "parity.png",
        "predictions.csv",
    ]


@pytest.mark.slow
def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    proc = _cli("evaluate", str(bogus))
    assert proc.returncode == 2
    assert str(bogus) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "metrics.json").exists()


def test_run_folder_without_checkpoint(tmp_path):
    with pytest.raises(InputError, match="has no checkpoint"):
        evaluate(tmp_path, "test", progress=False)


def test_a_split_without_molecules_is_a_clear_error(trained_run, tmp_path):
    from se3t.data.sources.qm9 import build_qm9

    two = tmp_path / "two.zarr"
    build_qm9(QM9PACK, two, limit=2, processes=1, progress=False)
    with pytest.raises(InputError) as err:
        evaluate(trained_run, "test", tmp_path / "out", dataset=two, progress=False)
    assert str(two) in str(err.value) and "'test'" in str(err.value)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_parquet_without_pyarrow_fails_before_any_work(trained_run, tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="needs pyarrow"):
            evaluate(trained_run, "test", tmp_path, predictions_format="parquet", progress=False)
        assert not any(tmp_path.iterdir())
    else:
        doc = evaluate(trained_run, "test", tmp_path, predictions_format="parquet", progress=False)
        import pandas as pd

        assert len(pd.read_parquet(tmp_path / "predictions.parquet")) == doc["count"]
