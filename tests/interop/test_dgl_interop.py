"""``se3t.interop.dgl.from_dgl`` on real DGLGraphs: the batches it produced from QM9 molecules
built the way NVIDIA's data module builds them (benchmarks/nvidia/dgl_interop.py, in NVIDIA's
venv, which also checked every field and the DGL round trip) give se3t NVIDIA's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from se3t.graph import Batch, Graph
from se3t.interop import nvidia

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def fx() -> dict:
    return torch.load(FIXTURES / "dgl_interop.pt", weights_only=True)


@pytest.mark.parametrize("batch_name", ["mixed", "symmetric"])
@pytest.mark.parametrize("name", ["pooled_partial", "pooled_full", "pooled_none"])
def test_from_dgl_batches_give_nvidia_outputs(fx, batch_name, name):
    weights = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    model = nvidia.from_state_dict(weights["state_dict"], **weights["meta"]["kwargs"])
    b = fx["batches"][batch_name]
    graph = Graph(b["src"], b["dst"], b["node_graph"], int(b["num_nodes"]), int(b["num_graphs"]))
    batch = Batch(graph, b["pos"], b["node_feats"], b["edge_feats"])
    with torch.no_grad():
        got = model(batch)
    want = fx["outputs"][f"{batch_name}/{name}"]
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-5, f"{batch_name}/{name}: relative error {err:.3g}"
    # the fixtures' weights are NVIDIA's at the same seed: same outputs on the mixed batch
    if batch_name == "mixed":
        assert torch.allclose(weights["output"], want, rtol=1e-6, atol=0)


def test_fixture_records_nvidia_commit(fx):
    assert fx["meta"]["nvidia_commit"] == nvidia.NVIDIA_COMMIT
