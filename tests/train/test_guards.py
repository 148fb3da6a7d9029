"""Non-finite training fails loudly and its metrics stay strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from faults import cli, config_args
from train_helpers import as_args, empty_config, tiny_cfg, tiny_overrides, weights

from se3t.config import ConfigError
from se3t.data.store import open_dataset, write_dataset
from se3t.train import train
from se3t.train.guards import NonFiniteError, NonFiniteGuard, strict_record


def _strict(path):
    """Every line of a metrics file parses as strict JSON (no NaN, Infinity)."""

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def nan_store(qm9_store, tmp_path_factory):
    """The test molecules with one position of molecule 5 set to NaN, written as a valid store
    (its checksums describe the NaN: this is bad data, not a damaged file)."""
    ds = open_dataset(qm9_store)
    arrays = {k: np.array(v) for k, v in ds.arrays().items()}
    arrays["pos"][int(ds.atom_offsets[5])] = np.nan
    keep = ("source", "graph", "target_names", "units", "parse_report", "build_key")
    out = tmp_path_factory.mktemp("nan") / "qm9.zarr"
    write_dataset(out, arrays, {k: ds.attrs[k] for k in keep if k in ds.attrs})
    return out


def test_strict_record_flags_what_it_drops():
    rec = strict_record(
        {"loss": float("nan"), "val_mae": {"homo": math.inf, "lumo": 0.5}, "step": 3}
    )
    assert rec == {
        "loss": None,
        "val_mae": {"homo": None, "lumo": 0.5},
        "step": 3,
        "nonfinite": ["loss", "val_mae.homo"],
    }
    json.dumps(rec, allow_nan=False)


def test_an_infinite_learning_rate_is_a_config_error(capsys, tmp_path):
    """train.lr=inf is refused when the config loads (as every non-finite number is), naming
    the key, before any step is taken."""
    code, _, err = cli(capsys, *config_args(["train"], empty_config(tmp_path)), "train.lr=inf")
    assert code == 2 and "train.lr" in err and "finite" in err and "Traceback" not in err


def test_an_overflowing_learning_rate_stops_the_run(qm9_store, tmp_path, capsys):
    """A learning rate that is finite in the config but blows the weights up: the run stops at
    the first non-finite loss with one line, and its metrics stay strict JSON."""
    run = tmp_path / "run"
    over = tiny_overrides(
        qm9_store, run, **{"train.max_steps": 4, "train.checkpoint_every": 1, "train.lr": 1e37}
    )
    code, _, err = cli(
        capsys, *config_args(["train"], empty_config(tmp_path)), *as_args(over), "--no-progress"
    )
    assert code == 2 and "Traceback" not in err
    assert "training stopped at epoch 0, step 2" in err and "the loss is nan" in err
    assert not (run / "metrics.jsonl").exists() or _strict(run / "metrics.jsonl") is not None


def test_a_parameter_that_became_non_finite_stops_before_saving():
    """After an update that overflowed a weight, the guard stops the run (and the trainer saves
    nothing after it: the checkpoint is written only after this check)."""
    guard = NonFiniteGuard("stop", amp_scaler=False, checkpoint="run/last.pt")
    model = torch.nn.Linear(3, 2)
    guard.check_parameters(model, step=1, epoch=0)  # finite: no error
    with torch.no_grad():
        model.weight[0, 1] = math.inf
    with pytest.raises(NonFiniteError, match="epoch 0, step 1: a parameter became non-finite"):
        guard.check_parameters(model, step=1, epoch=0)


def test_nan_positions_stop_the_run(nan_store, tmp_path):
    with pytest.raises(NonFiniteError, match="the loss is nan"):
        train(tiny_cfg(nan_store, tmp_path / "run", train__max_steps=12), progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_skip_policy_drops_the_bad_steps(nan_store, tmp_path):
    run = tmp_path / "run"
    summary = train(
        tiny_cfg(nan_store, run, train__max_steps=12, train__nan_policy="skip"), progress=False
    )
    assert summary["status"] == "completed"
    state = weights(run / "last.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    recs = _strict(run / "metrics.jsonl")  # the NaN molecule's losses are null, flagged
    flagged = [r for r in recs if "nonfinite" in r]
    assert flagged and all(r["loss"] is None or "loss" not in r["nonfinite"] for r in flagged)


def test_a_nan_learning_rate_is_a_config_error(capsys, tmp_path):
    """Before: train.lr=nan raised a ValueError traceback from the optimizer."""
    with pytest.raises(ConfigError, match="train.lr"):
        tiny_cfg(tmp_path / "x.zarr", tmp_path / "run", train__lr="nan")
    code, _, err = cli(capsys, *config_args(["train"], empty_config(tmp_path)), "train.lr=nan")
    assert code == 2 and "train.lr" in err and "Traceback" not in err


def test_an_unknown_policy_is_named(qm9_store, tmp_path):
    with pytest.raises(ConfigError, match="train.nan_policy"):
        train(tiny_cfg(qm9_store, tmp_path / "run", train__nan_policy="ignore"), progress=False)
