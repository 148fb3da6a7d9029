"""``se3t evaluate`` / ``se3t predict`` on an NVIDIA DLE training checkpoint (real NVIDIA
weights from the committed fixtures, saved the way NVIDIA's runtime/training.py saves them)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from se3t.data import MoleculeDataset, collate, read_molecule
from se3t.errors import InputError
from se3t.interop import nvidia

FIXTURES = Path(__file__).parent / "fixtures"
XYZ_TAR = Path(__file__).parents[1] / "data" / "qm9" / "figshare" / "dsgdb9nsd.xyz.tar.bz2"
MEAN, STD = -6.5, 0.6  # a homo standardization (eV), as NVIDIA's datamodule stores it


@pytest.fixture(scope="module")
def dle(tmp_path_factory) -> tuple[Path, dict]:
    """NVIDIA's checkpoint layout: {'state_dict', 'optimizer_state_dict', 'epoch'} + sidecar."""
    fx = torch.load(FIXTURES / "pooled_full.pt", weights_only=True)
    folder = tmp_path_factory.mktemp("dle")
    model = nvidia.from_state_dict(fx["state_dict"], **fx["meta"]["kwargs"])
    opt = torch.optim.AdamW(model.parameters())
    ckpt = folder / "model_qm9.pth"
    torch.save(
        {"state_dict": fx["state_dict"], "optimizer_state_dict": opt.state_dict(), "epoch": 7},
        ckpt,
    )
    kwargs = {k: v for k, v in fx["meta"]["kwargs"].items()}
    side = {"model": kwargs, "target": "homo", "mean": MEAN, "std": STD}
    (folder / "model_qm9.yaml").write_text(yaml.safe_dump(side))
    return ckpt, fx


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "se3t.cli", *args], capture_output=True, text=True, check=False
    )


def test_evaluate_nvidia_checkpoint(dle, qm9_store, tmp_path):
    ckpt, fx = dle
    out = tmp_path / "eval"
    args = ["evaluate", "--nvidia-checkpoint", str(ckpt), "--dataset", str(qm9_store)]
    # NVIDIA's checkpoint records no training data: its test molecules may be se3t's training
    # molecules, so evaluating it needs the explicit flag, and the metrics say so
    proc = cli(*args, "--out", str(out))
    assert proc.returncode != 0 and "--allow-other-dataset" in proc.stderr
    proc = cli(*args, "--allow-other-dataset", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["dataset_check"]["matches_training"] is False
    assert doc["targets"] == ["homo"] and doc["count"] > 0
    # the predictions are NVIDIA's function on the test molecules, destandardized
    model = nvidia.from_state_dict(fx["state_dict"], **fx["meta"]["kwargs"])
    test = MoleculeDataset(qm9_store, split="test")
    batch = collate([test[i] for i in range(4)])
    with torch.no_grad():
        want = (model(batch).double() * STD + MEAN).tolist()
    with open(out / "predictions.csv", newline="") as fh:
        got = {int(r["row"]): float(r["prediction"]) for r in csv.DictReader(fh)}
    for row, w in zip(batch.index.tolist(), want, strict=True):
        assert got[row] == pytest.approx(w, rel=1e-5)


def test_predict_nvidia_checkpoint(dle, tmp_path):
    ckpt, fx = dle
    names = ["dsgdb9nsd_000005.xyz", "dsgdb9nsd_000021.xyz"]
    files = []
    with tarfile.open(XYZ_TAR) as tar:
        for name in names:
            (tmp_path / name).write_bytes(tar.extractfile(name).read())
            files.append(tmp_path / name)
    proc = cli("predict", "--nvidia-checkpoint", str(ckpt), *map(str, files))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    model = nvidia.from_state_dict(fx["state_dict"], **fx["meta"]["kwargs"])
    batch = collate([read_molecule(f) for f in files])
    with torch.no_grad():
        want = (model(batch).double() * STD + MEAN).tolist()
    assert [r["file"] for r in rows] == list(map(str, files))
    assert [float(r["prediction"]) for r in rows] == pytest.approx(want, rel=1e-5)


def test_nvidia_checkpoint_errors_name_the_file(dle, tmp_path):
    ckpt, fx = dle
    proc = cli("evaluate", "--nvidia-checkpoint", str(ckpt), "--out", str(tmp_path))
    assert proc.returncode != 0 and "give --dataset" in proc.stderr
    side = tmp_path / "side.yaml"
    side.write_text(yaml.safe_dump({"target": "homo", "mean": 0.0}))
    with pytest.raises(InputError, match="field 'std' is missing"):
        nvidia.load_dle_checkpoint(ckpt, side)
    wrong = {"model": {**fx["meta"]["kwargs"], "num_channels": 8, "fiber_out": {0: 24}}}
    side.write_text(yaml.safe_dump({**wrong, "target": "homo", "mean": 0.0, "std": 1.0}))
    with pytest.raises(InputError, match=r"model_qm9.pth.*key '.*' has shape"):
        nvidia.load_dle_checkpoint(ckpt, side)
    with pytest.raises(InputError, match="sidecar .* does not exist"):
        nvidia.load_dle_checkpoint(ckpt, tmp_path / "none.yaml")


def _one_line_refusal(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "weights_only=False" not in proc.stderr  # torch's advice is never passed on
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_wrong_files_as_nvidia_checkpoint_are_refused_in_one_line(dle, tmp_path):
    """An se3t checkpoint, a state dict holding a non-tensor, a pickled object and random
    bytes given as --nvidia-checkpoint: one line naming the file and what is wrong."""
    from se3t.config import load, to_dict
    from se3t.models import build
    from se3t.train.checkpoint import save_checkpoint

    ckpt, _ = dle
    side = ckpt.with_suffix(".yaml")
    xyz = tmp_path / "dsgdb9nsd_000005.xyz"
    with tarfile.open(XYZ_TAR) as tar:
        xyz.write_bytes(tar.extractfile(xyz.name).read())
    cfg = load()
    own = save_checkpoint(
        {"model": build(cfg.model).state_dict(), "config": to_dict(cfg)}, tmp_path / "last.pt"
    )
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"] = {**state["state_dict"], "note": "trained by hand"}
    torch.save(state, non_tensor := tmp_path / "non_tensor.pth")
    torch.save({"state_dict": tarfile.TarInfo("x")}, pickled := tmp_path / "pickled.pth")
    (noise := tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 8)
    for path, needle in [
        (own, "se3t checkpoint"),
        (non_tensor, "key 'note' holds a str, not a tensor"),
        (pickled, "Python objects other than tensors"),
        (noise, "not a torch checkpoint"),
    ]:
        proc = cli(
            "predict", "--nvidia-checkpoint", str(path), "--nvidia-config", str(side), str(xyz)
        )
        _one_line_refusal(proc, str(path), needle)
