import pytest
import torch

from se3t.nn import (
    AttentionBlockSE3,
    GraphPooling,
    LinearSE3,
    NormSE3,
    RadialProfile,
    edge_softmax,
    gather,
    scatter_max,
    scatter_mean,
    scatter_sum,
)
from se3t.so3 import Fiber, compute_basis_flat
from se3t.testing import assert_equivariant, edge_inputs, random_batch, random_features


@pytest.fixture
def batch64():
    return random_batch(num_graphs=3, dtype=torch.float64)


def test_scatter_ops_match_loops():
    index = torch.tensor([0, 2, 2, 0, 3])
    src = torch.randn(5, 2, 3, dtype=torch.float64)
    s, mx, mean = (
        scatter_sum(src, index, 5),
        scatter_max(src, index, 5),
        scatter_mean(src, index, 5),
    )
    for i in range(5):
        rows = src[index == i]
        if len(rows) == 0:
            assert torch.all(s[i] == 0) and torch.all(mx[i] == 0) and torch.all(mean[i] == 0)
        else:
            torch.testing.assert_close(s[i], rows.sum(0))
            torch.testing.assert_close(mx[i], rows.max(0).values)
            torch.testing.assert_close(mean[i], rows.mean(0))
    torch.testing.assert_close(gather(src, torch.tensor([4, 0])), src[[4, 0]])


def test_edge_softmax_sums_to_one_and_gradcheck():
    dst = torch.tensor([0, 0, 1, 1, 1, 3])
    logits = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    alpha = edge_softmax(logits, dst, 4)
    torch.testing.assert_close(
        scatter_sum(alpha, dst, 4)[[0, 1, 3]], torch.ones(3, 2, dtype=torch.float64)
    )
    torch.testing.assert_close(alpha[:2, 0], torch.softmax(logits[:2, 0], 0))
    assert torch.autograd.gradcheck(lambda x: edge_softmax(x, dst, 4), (logits,))
    # large logits stay finite (max subtracted), half precision computed in float32
    big = edge_softmax(torch.tensor([[1000.0], [999.0]]), torch.tensor([0, 0]), 1)
    assert torch.isfinite(big).all()
    assert edge_softmax(logits.detach().bfloat16(), dst, 4).dtype == torch.bfloat16


def test_fused_kernel_gradcheck():
    from se3t.nn.kernel import KernelSpec, KernelState, fused_tfn

    b = random_batch(num_graphs=1, atoms=(3, 4), dtype=torch.float64)
    basis, _ = edge_inputs(b, 1)
    spec = KernelSpec([(0, 2), (1, 1)], [(0, 1), (1, 2)], 1)
    E, N = b.graph.num_edges, b.graph.num_nodes
    z = torch.randn(E, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(spec.num_radial, 3, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(N, 2, 1, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(N, 1, 3, dtype=torch.float64, requires_grad=True)
    basis.requires_grad_(True)

    def fn(z, w, basis, x0, x1):
        # two edges per chunk: the chunk loop runs
        state = KernelState(basis, "torch", chunk_elements=2 * spec.num_radial)
        out = fused_tfn(spec, z, w, basis, b.graph.src, [x0, x1], state)
        return tuple(out.values())

    assert torch.autograd.gradcheck(fn, (z, w, basis, x0, x1))


def test_radial_profile_has_no_last_bias():
    r = RadialProfile(5, 12, hidden=8)
    assert r.last.bias is None
    assert r(torch.randn(7, 5)).shape == (7, 12)
    assert r.hidden(torch.randn(7, 5)).shape == (7, 8)
    with pytest.raises(ValueError, match="out_features"):
        RadialProfile(5, 0)


def test_linear_equivariant_and_checks():
    fin, fout = Fiber({0: 3, 1: 2, 2: 4}), Fiber({0: 2, 1: 5})
    lin = LinearSE3(fin, fout).double()
    pos = torch.randn(6, 3, dtype=torch.float64)
    out = assert_equivariant(lambda p, f: lin(f), pos, random_features(fin, 6))
    assert set(out) == {0, 1} and out[1].shape == (6, 5, 3)
    with pytest.raises(ValueError, match=r"output degrees \[3\]"):
        LinearSE3(fin, Fiber({3: 1}))
    with pytest.raises(ValueError, match=r"LinearSE3 input\[1\]"):
        lin({0: torch.randn(6, 3, 1), 1: torch.randn(6, 3, 3), 2: torch.randn(6, 4, 5)})


@pytest.mark.parametrize(
    "fiber", [Fiber({0: 4, 1: 4, 2: 4}), Fiber({0: 3, 1: 2, 3: 5})], ids=["fused", "layer_norm"]
)
def test_norm_equivariant(fiber):
    norm = NormSE3(fiber).double()
    assert norm.fused == (fiber.uniform_channels is not None)
    pos = torch.randn(5, 3, dtype=torch.float64)
    assert_equivariant(lambda p, f: norm(f), pos, random_features(fiber, 5))


def test_norm_fused_group_norm_equals_per_degree_layer_norm():
    fiber = Fiber({0: 4, 1: 4, 2: 4})
    fused, plain = NormSE3(fiber, fused=True).double(), NormSE3(fiber, fused=False).double()
    with torch.no_grad():
        for k, d in enumerate(fiber):
            w, bias = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
            fused.group_norm.weight[4 * k : 4 * k + 4] = w
            fused.group_norm.bias[4 * k : 4 * k + 4] = bias
            plain.layer_norms[str(d)].weight.copy_(w)
            plain.layer_norms[str(d)].bias.copy_(bias)
    x = random_features(fiber, 9)
    a, b = fused(x), plain(x)
    for d in fiber:
        torch.testing.assert_close(a[d], b[d])
    with pytest.raises(ValueError, match="fused path needs equal channels"):
        NormSE3(Fiber({0: 2, 1: 3}), fused=True)


@pytest.mark.parametrize("fusion", ["pairwise", "full"])
def test_attention_block_equivariant(batch64, fusion):
    fin, fout = Fiber({0: 4, 1: 2}), Fiber({0: 4, 1: 4, 2: 4})
    att = AttentionBlockSE3(
        fin, fout, Fiber({0: 4}), num_heads=2, channels_div=2, max_degree=2, fusion=fusion
    ).double()
    assert att.to_key_value.fiber_out == Fiber({0: 4, 1: 4, 2: 2})  # value + key channels
    g = batch64.graph
    _, es = edge_inputs(batch64, 2)

    def fn(pos, feats):
        return att(feats, g, compute_basis_flat(pos[g.dst] - pos[g.src], 2), es)

    out = assert_equivariant(fn, batch64.pos, random_features(fin, g.num_nodes))
    assert {d: tuple(v.shape[1:]) for d, v in out.items()} == {0: (4, 1), 1: (4, 3), 2: (4, 5)}


def test_attention_bad_heads():
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        AttentionBlockSE3(Fiber({0: 4}), Fiber({0: 4}), num_heads=3, channels_div=1, max_degree=0)
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlockSE3(Fiber({0: 4}), Fiber({0: 4}), num_heads=0, max_degree=0)


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_pooling_invariant_to_node_order(pool):
    x = {0: torch.randn(7, 3, 1, dtype=torch.float64)}
    graph_of = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    out = GraphPooling(pool)(x, graph_of, 3)
    perm = torch.randperm(7)
    torch.testing.assert_close(GraphPooling(pool)({0: x[0][perm]}, graph_of[perm], 3), out)
    with pytest.raises(ValueError, match="pool must be"):
        GraphPooling("sum")
