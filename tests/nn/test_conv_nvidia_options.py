"""ConvSE3's options for NVIDIA's function: per-layer fuse levels, the per-edge
self-interaction and NVIDIA's pairwise (0, 0) kernel (the end-to-end comparison with NVIDIA's
own outputs is tests/interop/test_nvidia.py)."""

import math

import pytest
import torch

from se3t.config import ModelConfig
from se3t.models import build
from se3t.nn import ConvSE3, Fusion, pairwise_reference
from se3t.nn.conv import nvidia_fusion
from se3t.so3 import Fiber
from se3t.testing import edge_inputs, random_batch, random_features

HIDDEN = Fiber.create(4, 32)


@pytest.mark.parametrize(
    ("fin", "fout", "level", "want"),
    [
        # the paper model's first attention layer: keys+values {0: 32, 1..3: 16} from {0: 6}
        (Fiber({0: 6}), Fiber({0: 32, 1: 16, 2: 16, 3: 16}), "full", Fusion.PAIRWISE),
        (HIDDEN, HIDDEN, "full", Fusion.FULL),
        (HIDDEN, HIDDEN, "partial", Fusion.PER_OUTPUT),
        (HIDDEN, HIDDEN, "none", Fusion.PAIRWISE),
        # the final convolution to {0: 128}: FULL needs all output degrees, so PARTIAL
        (HIDDEN, Fiber({0: 128}), "full", Fusion.PER_OUTPUT),
        # unequal input channels, output spans the degrees: per input degree
        (Fiber({0: 4, 1: 2, 2: 2, 3: 2}), HIDDEN, "partial", Fusion.PER_INPUT),
    ],
)
def test_nvidia_fusion_downgrades_per_layer(fin, fout, level, want):
    assert nvidia_fusion(fin, fout, Fiber({0: 4}), 3, level) is want


def test_nvidia_fusion_counts_edge_channels_of_higher_degree():
    # degree-1 edge features are concatenated to degree-1 inputs: unequal input channels
    fin = Fiber.create(2, 4)
    assert nvidia_fusion(fin, fin, Fiber({0: 2}), 1, "full") is Fusion.FULL
    assert nvidia_fusion(fin, fin, Fiber({0: 2, 1: 1}), 1, "full") is Fusion.PER_INPUT
    with pytest.raises(ValueError, match="fuse level must be one of"):
        nvidia_fusion(fin, fin, None, 1, "fast")


def test_self_interaction_per_edge_scales_by_in_degree():
    batch = random_batch(num_graphs=3, dtype=torch.float64)
    basis, scalars = edge_inputs(batch, 2)
    fin, fout = Fiber({0: 3, 1: 2}), Fiber({0: 2, 1: 2})
    node = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=2, self_interaction=True).double()
    edge = ConvSE3(
        fin,
        fout,
        Fiber({0: 4}),
        max_degree=2,
        self_interaction=True,
        self_interaction_per_edge=True,
    ).double()
    edge.load_state_dict(node.state_dict())
    feats = random_features(fin, batch.graph.num_nodes)
    a = node(feats, batch.graph, basis, scalars)
    b = edge(feats, batch.graph, basis, scalars)
    deg = torch.bincount(batch.graph.dst, minlength=batch.graph.num_nodes).double()
    for d in fout:
        si = torch.matmul(node.self_weights[str(d)], feats[d])
        torch.testing.assert_close(b[d], a[d] + (deg[:, None, None] - 1) * si)


def test_unit_scalar_kernel_drops_the_constant_basis_value():
    batch = random_batch(num_graphs=2, dtype=torch.float64)
    basis, scalars = edge_inputs(batch, 1)
    fin, fout = Fiber({0: 3}), Fiber({0: 2})
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=1, fusion="pairwise").double()
    unit = ConvSE3(
        fin, fout, Fiber({0: 4}), max_degree=1, fusion="pairwise", unit_scalar_kernel=True
    ).double()
    unit.load_state_dict(conv.state_dict())
    feats = random_features(fin, batch.graph.num_nodes)
    y0 = 1 / math.sqrt(4 * math.pi)  # e3nn's integral-normalized Y_0
    torch.testing.assert_close(
        unit(feats, batch.graph, basis, scalars)[0],
        conv(feats, batch.graph, basis, scalars)[0] / y0,
    )


@pytest.mark.parametrize("fusion", [Fusion.FULL, Fusion.PER_INPUT], ids=lambda f: f.value)
def test_unit_scalar_kernel_fused_equals_pairwise_reference(fusion):
    batch = random_batch(num_graphs=2, dtype=torch.float64)
    basis, scalars = edge_inputs(batch, 2)
    fin, fout = Fiber({0: 2, 1: 2, 2: 2}), Fiber({0: 2, 1: 2, 2: 2})
    conv = ConvSE3(
        fin, fout, Fiber({0: 4}), max_degree=2, fusion=fusion, unit_scalar_kernel=True
    ).double()
    ref = pairwise_reference(conv)
    feats = random_features(fin, batch.graph.num_nodes)
    a, b = conv(feats, batch.graph, basis, scalars), ref(feats, batch.graph, basis, scalars)
    for d in fout:
        torch.testing.assert_close(a[d], b[d])


@pytest.mark.parametrize(
    ("sharing", "params"),
    [("fusion", 9_275_425), ("nvidia_full", 9_279_553), ("nvidia_partial", 9_304_321)],
)
def test_build_radial_sharing_from_config(sharing, params):
    cfg = ModelConfig(radial_sharing=sharing, self_interaction="edge")
    model = build(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.transformer.conv_out.self_interaction_per_edge
