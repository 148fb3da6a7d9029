"""train.init_weights: a fresh run starts from NVIDIA's weights (its own model code's fixtures)
or from a se3t checkpoint; train.eval_every_steps validates between epochs; TensorBoard's own
reader gets back the loss, learning rate and validation MAE the run logged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import metrics, tiny_cfg, weights

from se3t.errors import InputError
from se3t.graph import Batch, Graph
from se3t.train import train
from se3t.train.loop import Trainer

FIXTURES = Path(__file__).parents[1] / "interop" / "fixtures"

# the model of the NVIDIA fixture pooled_full (tensor_cores=True: fuse level FULL)
NV_MODEL = {
    "model__num_layers": 2,
    "model__max_degree": 2,
    "model__channels": 4,
    "model__heads": 2,
    "model__channels_div": 2,
    "model__radial_hidden": 32,
    "basis__max_degree": 2,
}


def nvidia_checkpoint(tmp_path: Path, name: str = "pooled_full") -> tuple[Path, dict]:
    fx = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    path = tmp_path / "nv.pth"
    torch.save({"state_dict": fx["state_dict"], "epoch": 0}, path)
    kw = fx["meta"]["kwargs"]
    keys = ("num_degrees", "num_channels", "num_layers", "num_heads", "tensor_cores")
    model = {k: kw[k] for k in keys}
    lines = [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in model.items()]
    path.with_suffix(".yaml").write_text(
        "model:\n" + "\n".join(lines) + "\ntarget: homo\nmean: -6.5\nstd: 0.6\n"
    )
    return path, fx


def test_nvidia_weights_start_se3t_model_on_nvidia_outputs(qm9_store, tmp_path):
    """se3t's own model (not the interop wrapper), started from NVIDIA's weights, gives the
    outputs NVIDIA's code gave on those weights."""
    path, fx = nvidia_checkpoint(tmp_path)
    cfg = tiny_cfg(qm9_store, tmp_path / "run", train__init_weights=str(path), **NV_MODEL)
    trainer = Trainer(cfg, progress=False)
    b = torch.load(FIXTURES / "inputs.pt", weights_only=True)["mixed"]
    graph = Graph(b["src"], b["dst"], b["node_graph"], int(b["num_nodes"]), int(b["num_graphs"]))
    batch = Batch(graph, b["pos"], b["node_feats"], b["edge_feats"], y=b["y"])
    with torch.no_grad():
        out = trainer.model(batch).reshape(-1)
    want = fx["output"]
    assert (out - want).abs().max() <= 1e-5 * want.abs().max()
    # a fresh start: the optimizer and the step count are this run's
    assert trainer.step == 0 and not trainer.optimizer.state


def test_nvidia_weights_of_another_function_are_named(qm9_store, tmp_path):
    path, _ = nvidia_checkpoint(tmp_path, "pooled_partial")  # tensor_cores off: another function
    cfg = tiny_cfg(qm9_store, tmp_path / "run", train__init_weights=str(path), **NV_MODEL)
    with pytest.raises(InputError, match=r"model\.radial_sharing': nvidia_partial"):
        Trainer(cfg, progress=False)


def test_missing_init_weights_are_named(qm9_store, tmp_path):
    cfg = tiny_cfg(qm9_store, tmp_path / "run", train__init_weights=str(tmp_path / "no.pt"))
    with pytest.raises(InputError, match=r"train\.init_weights.*no\.pt.*does not exist"):
        Trainer(cfg, progress=False)


def test_init_from_another_model_shape_is_named(qm9_store, tmp_path):
    path, _ = nvidia_checkpoint(tmp_path)
    cfg = tiny_cfg(qm9_store, tmp_path / "run", train__init_weights=str(path))  # degree 1
    with pytest.raises(InputError, match="nv.pth"):
        Trainer(cfg, progress=False)


@pytest.mark.slow
def test_fine_tune_from_se3t_run_and_read_scalars_back(qm9_store, tmp_path):
    # tensorboard is in the dev extra: this test runs in CI
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = tmp_path / "first"
    train(tiny_cfg(qm9_store, first, train__max_steps=2), progress=False)
    run = tmp_path / "tuned"
    cfg = tiny_cfg(
        qm9_store,
        run,
        train__init_weights=str(first),  # a run folder: its last.pt
        train__max_steps=4,
        train__eval_every_steps=2,
        train__tensorboard=True,
        train__lr=1e-3,
    )
    trainer = Trainer(cfg, progress=False)
    start = weights(first / "last.pt")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, start[k]), k
    del trainer
    summary = train(cfg, progress=False)
    assert summary["step"] == 4  # its own step count, not the first run's
    recs = metrics(run)
    val = {r["step"]: r["val_mae"]["homo"] for r in recs if r["kind"] == "val"}
    assert sorted(val) == [0, 2, 4] and all(v > 0 for v in val.values())
    assert all(r["eval_s"] >= 0 for r in recs if r["kind"] == "val")
    steps = {r["step"]: r for r in recs if r["kind"] == "step"}
    assert steps[1]["lr"] == pytest.approx(1e-3)

    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"step/loss", "step/lr", "val/val_mae/homo", "epoch/val_mae/homo"} <= tags

    def read(tag):
        return {e.step: e.value for e in ea.Scalars(tag)}

    assert read("val/val_mae/homo") == pytest.approx(val, rel=1e-6)
    assert read("step/loss") == pytest.approx({s: r["loss"] for s, r in steps.items()}, rel=1e-6)
    assert read("step/lr") == pytest.approx({s: r["lr"] for s, r in steps.items()}, rel=1e-6)
