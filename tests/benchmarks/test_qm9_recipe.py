"""benchmarks/qm9_recipe.py and ``benchmarks/gpu.sh --qm9``: the packed dataset gives the
batches se3t's own loader gives, and the recipe's CPU smoke mode runs end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from se3t.config import load
from se3t.data import MoleculeDataset, collate

REPO = Path(__file__).resolve().parents[2]


def recipe():
    spec = importlib.util.spec_from_file_location("qm9_recipe", REPO / "benchmarks/qm9_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def packed(qm9_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "pack.npz"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/qm9_recipe.py"),
            "pack",
            "--store",
            str(qm9_store),
            "--out",
            str(out),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


def test_packed_batches_equal_se3t_collate(qm9_store, packed):
    """The recipe's vectorized collate (the fast path) against se3t's collate (the reference),
    on the splits se3t makes of the same store with config/config.yaml's data section."""
    m = recipe()
    data = m.Data(packed, torch.device("cpu"))
    cfg = load(REPO / "config" / "config.yaml", [f"data.path={qm9_store}", "data.targets=[homo]"])
    for split in ("train", "val", "test"):
        ds = MoleculeDataset.from_config(cfg.data, split)
        assert torch.equal(data.split[split], torch.from_numpy(ds.indices).long()), split
    train = MoleculeDataset.from_config(cfg.data, "train")
    rows = [5, 0, 17, 3, 120]
    got = data.batch(data.split["train"][rows])
    want = collate([train[i] for i in rows])
    for name in ("src", "dst", "node_graph"):
        assert torch.equal(getattr(got.graph, name), getattr(want.graph, name).long()), name
    assert got.graph.num_nodes == want.graph.num_nodes and got.num_graphs == len(rows)
    assert torch.equal(got.pos, want.pos)
    assert torch.equal(got.node_feats, want.node_feats.float())
    assert torch.equal(got.edge_feats, want.edge_feats.float())
    # NVIDIA's standardization (unbiased std) differs from se3t's by sqrt(n / (n - 1)) only
    n = len(train)
    scale = math.sqrt(n / (n - 1))
    assert torch.allclose(got.y * scale, want.y, atol=1e-4)


@pytest.mark.slow
def test_gpu_sh_qm9_cpu_smoke(packed, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            "benchmarks/gpu.sh",
            "--cpu",
            "--qm9",
            str(packed),
            "--budget-s",
            "5",
            "--python",
            sys.executable,
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "qm9" / "result.json").read_text())
    # as many epochs as the budget holds (the first one timed to plan the rest)
    assert res["epochs_done"] >= 1 and len(res["epoch_s"]) == res["epochs_done"]
    assert res["precision"] == "fp32" and res["batch_size"] == 32
    assert math.isfinite(res["test_mae_mev"]) and res["test_mae_mev"] > 0
    assert res["mol_per_ms"] > 0
    assert "test MAE homo (meV)" in (out / "table.md").read_text()


def test_gpu_sh_qm9_names_a_missing_pack(tmp_path):
    proc = subprocess.run(
        [
            "bash",
            "benchmarks/gpu.sh",
            "--cpu",
            "--qm9",
            str(tmp_path / "none.npz"),
            "--python",
            sys.executable,
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "none.npz missing" in proc.stderr
