"""CUDA paths (run where a GPU is present): every precision trains on the GPU and the
checkpoint loads back on CPU."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_cfg

from se3t.train import load_model, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
def test_cuda_precisions_train_and_load_on_cpu(qm9_store, tmp_path, precision):
    run = tmp_path / precision
    summary = train(
        tiny_cfg(
            qm9_store, run, train__max_steps=3, train__device="cuda", train__precision=precision
        ),
        progress=False,
    )
    assert summary["step"] == 3 and all(v > 0 for v in summary["val_mae"].values())
    model, cfg, stats = load_model(run / "last.pt", map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert cfg.train.precision == precision
