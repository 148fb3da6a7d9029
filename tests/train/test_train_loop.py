"""The training loop on the real QM9 test store with the real (tiny) SE(3)-Transformer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import metrics, tiny_cfg, weights

from se3t.config import ConfigError, load
from se3t.errors import InputError
from se3t.train import load_model, train
from se3t.train.checkpoint import load_checkpoint


@pytest.mark.slow
def test_short_run_writes_the_run_folder(qm9_store, tmp_path):
    run = tmp_path / "run"
    summary = train(
        tiny_cfg(
            qm9_store, run, train__max_steps=4, train__batch_size=24, train__warmup_epochs=0.4
        ),
        progress=False,
    )
    assert summary["status"] == "completed" and summary["step"] == 4
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "train.log",
    }
    recs = metrics(run)
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert set(r) >= {"epoch", "step", "loss", "lr", "mol_per_s", "peak_mem_bytes", "time"}
        assert r["loss"] > 0 and r["mol_per_s"] > 0 and r["peak_mem_bytes"] > 0
    # warm-up: the learning rate rises over the first steps
    assert [r["lr"] for r in steps] == pytest.approx([0.0005, 0.001, 0.0015, 0.002])
    epoch = [r for r in recs if r["kind"] == "epoch"][-1]
    assert set(epoch["val_mae"]) == {"homo"} and epoch["val_mae"]["homo"] > 0
    assert set(epoch["train_mae"]) == {"homo"}
    # the checkpoint holds what evaluation needs, and loads safely
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 4 and state["target_stats"]["targets"] == ["homo"]
    assert {"optimizer", "scheduler", "scaler", "rng", "batch_in_epoch"} <= set(state)
    model, cfg, stats = load_model(run / "best.pt")
    assert not model.training and cfg.model.out_dim == 1
    assert torch.is_tensor(stats["mean"]) and stats["std"].shape == (1,)
    assert "starting" in (run / "train.log").read_text()
    # every record names the device (the report's device column reads it from here)
    from types import SimpleNamespace

    from se3t.eval.runs import training_device as _training_device

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        None,
    )
    names = {r["device_name"] for r in recs}
    assert len(names) == 1 and names.pop().endswith(f"({torch.get_num_threads()} threads)")
    if cpu:
        assert recs[0]["device_name"].startswith(cpu)
    assert (
        _training_device(SimpleNamespace(records=recs, folder=run, config={}))
        == recs[0]["device_name"]
    )


@pytest.mark.slow
def test_accumulation_equals_the_larger_batch(qm9_store, tmp_path):
    """2 micro-batches of 16 accumulated = 1 batch of 32 (same molecules, same update)."""
    common = {
        "train__max_steps": 3,
        "train__optimizer": "sgd",
        "train__lr": 0.05,
        "train__scheduler": "constant",
        "model__norm": False,
    }
    # one epoch of 16-batches pairs up into the 32-batches only when 32 divides the split
    big = train(tiny_cfg(qm9_store, tmp_path / "a", train__batch_size=32, **common), progress=False)
    acc = train(
        tiny_cfg(qm9_store, tmp_path / "b", train__batch_size=16, train__accumulate=2, **common),
        progress=False,
    )
    assert big["step"] == acc["step"] == 3
    wa, wb = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32"])
def test_precisions_train(qm9_store, tmp_path, precision, recwarn):
    summary = train(
        tiny_cfg(
            qm9_store,
            tmp_path / precision,
            train__max_steps=2,
            train__precision=precision,
            train__grad_clip=1.0,
        ),
        progress=False,
    )
    assert summary["step"] == 2
    state = load_checkpoint(tmp_path / precision / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0  # the gradient scaler's state is kept
    # fp16's first step overflows and is skipped: torch's misordered-loop warning is not shown
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


@pytest.mark.slow
def test_bases_from_the_store_match_computed(qm9_store, tmp_path):
    from se3t.basis import BasisSettings, finalize, precompute, write_manifest

    receipt = precompute(
        qm9_store,
        tmp_path / "cache",
        BasisSettings(max_degree=1, dtype="float32", chunk_edges=1024),
        progress=False,
    )
    finalize(receipt["store"])
    manifest = tmp_path / "manifest.json"
    write_manifest(receipt["store"], manifest)
    kw = {"train__max_steps": 3, "basis__dtype": "float32"}
    train(tiny_cfg(qm9_store, tmp_path / "computed", basis__use="compute", **kw), progress=False)
    train(
        tiny_cfg(
            qm9_store, tmp_path / "stored", basis__use="store", basis__manifest=str(manifest), **kw
        ),
        progress=False,
    )
    assert "from store" in (tmp_path / "stored" / "train.log").read_text()
    wa, wb = weights(tmp_path / "computed" / "last.pt"), weights(tmp_path / "stored" / "last.pt")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_resume_continues_in_process(qm9_store, tmp_path):
    """A finished run asked for more epochs continues from last.pt, not from scratch."""
    run = tmp_path / "run"
    train(tiny_cfg(qm9_store, run, train__epochs=1, train__batch_size=64), progress=False)
    first = load_checkpoint(run / "last.pt")["step"]
    summary = train(tiny_cfg(qm9_store, run, train__epochs=2, train__batch_size=64), progress=False)
    assert summary["step"] == 2 * first and summary["epoch"] == 2
    assert "resuming from" in (run / "train.log").read_text()
    epochs = [r["epoch"] for r in metrics(run) if r["kind"] == "epoch"]
    assert epochs == [0, 1]


# ---- bad input: each a clear error naming it, before any training work --------------------


def test_bad_config_values_are_named():
    for override, key in [
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.targets=[foo]", "data.targets"),
        ("train.optimzer=adam", "optimzer"),
        ("train.epochs=many", "train.epochs"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load(None, [override])


def test_missing_dataset_is_named(tmp_path):
    cfg = tiny_cfg(tmp_path / "nowhere.zarr", tmp_path / "run")
    with pytest.raises(InputError, match="nowhere.zarr"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_basis_store_is_named(qm9_store, tmp_path):
    cfg = tiny_cfg(
        qm9_store,
        tmp_path / "run",
        basis__use="store",
        basis__manifest=str(tmp_path / "manifest.json"),
    )
    with pytest.raises(InputError, match="manifest.json"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_model_shape_is_named(qm9_store, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(qm9_store, run, train__max_steps=1), progress=False)
    with pytest.raises(InputError, match=r"last\.pt.*model\.channels=8 there, 16 here"):
        train(tiny_cfg(qm9_store, run, model__channels=16), progress=False)
    # a checkpoint whose weights do not fit the model it claims
    state = torch.load(run / "last.pt", weights_only=True)
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
    torch.save(state, run / "last.pt")
    with pytest.raises(InputError, match=r"last\.pt.*another model shape"):
        train(tiny_cfg(qm9_store, run, train__max_steps=2), progress=False)


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line(qm9_store, tmp_path):
    from train_helpers import empty_config, se3t

    proc = se3t(
        "train",
        "--config",
        str(empty_config(tmp_path)),
        f"data.path={tmp_path / 'x.zarr'}",
        f"run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2
    assert "x.zarr" in proc.stderr and "Traceback" not in proc.stderr
    proc = se3t("train", "--config", str(empty_config(tmp_path)), "train.lr=-0.1")
    assert proc.returncode == 2 and "train.lr" in proc.stderr
    proc = se3t("train", "--help")
    assert proc.returncode == 0 and "run.dir" in proc.stdout


@pytest.mark.slow
def test_launch_debug_runs_in_process(qm9_store, tmp_path):
    """submitit's debug executor: the same checkpointable job, in this process."""
    from se3t.train.launch import launch

    cfg = tiny_cfg(qm9_store, tmp_path / "run", train__max_steps=2, launch__cluster="debug")
    assert launch(cfg) == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert (tmp_path / "run" / "submitit").is_dir()
