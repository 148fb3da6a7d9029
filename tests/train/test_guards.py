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
from se3t.train.guards import NonFiniteError, strict_record


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


def test_an_infinite_learning_rate_stops_before_saving(qm9_store, tmp_path, capsys):
    """Before: train.lr=inf trained on, wrote NaN into metrics.jsonl and exited 0. Now the
    first update makes the parameters non-finite and the run stops before the checkpoint that
    train.checkpoint_every=1 would write after it."""
    run = tmp_path / "run"
    over = tiny_overrides(
        qm9_store, run, **{"train.max_steps": 4, "train.checkpoint_every": 1, "train.lr": "inf"}
    )
    code, _, err = cli(
        capsys, *config_args(["train"], empty_config(tmp_path)), *as_args(over), "--no-progress"
    )
    assert code == 2 and "Traceback" not in err
    assert "training stopped at epoch 0, step 1" in err and "non-finite" in err
    assert "last.pt" in err and not (run / "last.pt").exists()
    assert not (run / "metrics.jsonl").exists() or _strict(run / "metrics.jsonl") is not None


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
