import pytest
import torch
from e3nn import o3

from se3t.nn import ConvSE3, Fusion, pairwise_reference
from se3t.nn.kernel import KernelState
from se3t.so3 import Fiber, compute_basis_flat
from se3t.testing import (
    assert_equivariant,
    edge_inputs,
    expected_fused_param_grads,
    random_batch,
    random_features,
)

FIBERS = {
    "uniform": (Fiber({0: 2, 1: 2, 2: 2, 3: 2}), Fiber({0: 2, 1: 2, 2: 2, 3: 2})),
    "mixed": (Fiber({0: 3, 1: 2, 2: 2}), Fiber({0: 2, 1: 3, 3: 1})),
    "scalar_in": (Fiber({0: 5}), Fiber({0: 2, 1: 2, 2: 1, 3: 1})),
}


@pytest.fixture
def batch64():
    return random_batch(num_graphs=3, dtype=torch.float64)


FUSED = [Fusion.FULL, Fusion.PER_OUTPUT, Fusion.PER_INPUT]


def _loss(out):
    g = torch.Generator().manual_seed(7)
    return sum(
        (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for _, o in sorted(out.items())
    )


@pytest.mark.parametrize("fusion", FUSED, ids=lambda f: f.value)
@pytest.mark.parametrize("fibers", list(FIBERS), ids=str)
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "edges"])
def test_fused_equals_pairwise_float64(batch64, fusion, fibers, pool):
    fin, fout = FIBERS[fibers]
    conv = ConvSE3(
        fin,
        fout,
        Fiber({0: 4}),
        max_degree=3,
        fusion=fusion,
        pool=pool,
        self_interaction=pool,
        chunk_elements=2000,  # a few chunks: the chunk loop is exercised
    ).double()
    assert conv.fusion is fusion
    ref = pairwise_reference(conv)
    assert ref.fusion is Fusion.PAIRWISE
    basis, es = edge_inputs(batch64)
    basis.requires_grad_(True)
    es.requires_grad_(True)
    x = {
        d: v.requires_grad_(True) for d, v in random_features(fin, batch64.graph.num_nodes).items()
    }
    inputs = [*x.values(), basis, es]
    out, out_ref = conv(x, batch64.graph, basis, es), ref(x, batch64.graph, basis, es)
    assert set(out) == set(fout)
    for d in out:
        torch.testing.assert_close(out[d], out_ref[d], rtol=1e-10, atol=1e-12)
    g = torch.autograd.grad(_loss(out), inputs)
    _loss(out_ref).backward(inputs=[*inputs, *ref.parameters()])
    for a, b in zip(g, inputs, strict=True):
        torch.testing.assert_close(a, b.grad, rtol=1e-10, atol=1e-12)
    conv.zero_grad()
    _loss(conv(x, batch64.graph, basis, es)).backward(inputs=list(conv.parameters()))
    expected = expected_fused_param_grads(conv, ref)
    for n, p in conv.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("fusion", [Fusion.PAIRWISE, *FUSED], ids=lambda f: f.value)
def test_conv_equivariant(batch64, fusion):
    fin, fout = FIBERS["mixed"]
    conv = ConvSE3(
        fin, fout, Fiber({0: 4}), max_degree=3, fusion=fusion, self_interaction=True
    ).double()
    _, es = edge_inputs(batch64)
    g = batch64.graph

    def fn(pos, feats):
        return conv(feats, g, compute_basis_flat(pos[g.dst] - pos[g.src], 3), es)

    assert_equivariant(fn, batch64.pos, random_features(fin, g.num_nodes))


def test_edge_features_of_higher_degree(batch64):
    # degree-1 edge features are concatenated to the source's degree-1 features
    fin, fout = Fiber({0: 2, 1: 2}), Fiber({0: 2, 1: 1})
    edge = Fiber({0: 4, 1: 1})
    g = batch64.graph
    _, es = edge_inputs(batch64)
    conv = ConvSE3(fin, fout, edge, max_degree=2, fusion="full").double()
    ref = pairwise_reference(conv)

    def fn(pos, feats):
        ev = pos[g.dst] - pos[g.src]
        e1 = {1: o3.spherical_harmonics(1, ev, normalize=True).unsqueeze(1)}  # [E, 1, 3]
        out = conv(feats, g, compute_basis_flat(ev, 2), es, e1)
        out_ref = ref(feats, g, compute_basis_flat(ev, 2), es, e1)
        for d in out:
            torch.testing.assert_close(out[d], out_ref[d])
        return out

    assert_equivariant(fn, batch64.pos, random_features(fin, g.num_nodes))


def test_both_torch_evaluations_are_covered(batch64):
    # uniform input channels take the degree-concatenated evaluation, mixed ones the per-pair
    # one: test_fused_equals_pairwise_float64 checks both against the reference
    uniform = ConvSE3(*FIBERS["uniform"], Fiber({0: 4}), max_degree=3, fusion="full").double()
    mixed = ConvSE3(*FIBERS["mixed"], Fiber({0: 4}), max_degree=3, fusion="full").double()
    assert [s.uniform_channels for s in uniform.specs] == [True]
    assert [s.uniform_channels for s in mixed.specs] == [False]
    basis, es = edge_inputs(batch64)
    for conv, evaluation in ((uniform, "torch-concat"), (mixed, "torch-pairs")):
        state = KernelState(basis, "torch")
        x = random_features(conv.fiber_in, batch64.graph.num_nodes)
        conv(x, batch64.graph, basis, es, state=state)
        assert state.ran == {evaluation: 1}


@pytest.mark.parametrize("fibers", ["uniform", "scalar_in"])
def test_fused_without_input_gradient_equals_pairwise(batch64, fibers):
    # a first layer's inputs need no gradient: the op then skips recomputing the radial
    # weights, and the parameter gradients must still be the reference's
    fin, fout = FIBERS[fibers]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, chunk_elements=2000).double()
    ref = pairwise_reference(conv)
    basis, es = edge_inputs(batch64)
    x = random_features(fin, batch64.graph.num_nodes)
    _loss(conv(x, batch64.graph, basis, es)).backward()
    _loss(ref(x, batch64.graph, basis, es)).backward()
    expected = expected_fused_param_grads(conv, ref)
    for n, p in conv.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-10, atol=1e-12, msg=n)


def test_a_new_state_sees_an_in_place_change_of_the_basis(batch64):
    # block bases live in the pass's KernelState, never in a cache keyed by the tensor
    fin, fout = FIBERS["uniform"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3).double()
    basis, es = edge_inputs(batch64)
    x = random_features(fin, batch64.graph.num_nodes)
    with torch.no_grad():
        first = conv(x, batch64.graph, basis, es, state=KernelState(basis, "torch"))
        basis.mul_(-1.0)
        flipped = conv(x, batch64.graph, basis, es, state=KernelState(basis, "torch"))
        fresh = conv(x, batch64.graph, basis.clone(), es, state=KernelState(basis, "torch"))
    # one process, the same shapes and inputs: the same kernels in the same order, so exact
    for d in first:
        # the same arithmetic on the same values in the same order: bit-identical
        torch.testing.assert_close(flipped[d], fresh[d], rtol=0, atol=0)
        assert not torch.allclose(flipped[d], first[d])


def test_fused_under_inference_mode_equals_no_grad(batch64):
    # evaluation runs under torch.inference_mode, whose tensors have no version counter
    fin, fout = FIBERS["uniform"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3).double()
    basis, es = edge_inputs(batch64)
    x = random_features(fin, batch64.graph.num_nodes)
    with torch.no_grad():
        expected = conv(x, batch64.graph, basis, es)
    with torch.inference_mode():
        b = basis.clone()
        out = conv(x, batch64.graph, b, es)
        again = conv(x, batch64.graph, b, es)
    # the same kernels on the same shapes in one process: exact (autograd mode changes no maths)
    for d in expected:
        torch.testing.assert_close(out[d], expected[d], rtol=0, atol=0)
        torch.testing.assert_close(again[d], expected[d], rtol=0, atol=0)


def test_float32_chunking_does_not_change_result():
    b = random_batch(num_graphs=4, dtype=torch.float32)
    fin, fout = FIBERS["uniform"]
    basis, es = edge_inputs(b)
    x = random_features(fin, b.graph.num_nodes, torch.float32)
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, chunk_elements=10**9)
    whole = conv(x, b.graph, basis, es)
    conv.chunk_elements = 1  # one edge per chunk
    for d, v in conv(x, b.graph, basis, es).items():
        torch.testing.assert_close(v, whole[d], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_close_to_fp32():
    b = random_batch(num_graphs=4, dtype=torch.float32)
    fin, fout = FIBERS["uniform"]
    basis, es = edge_inputs(b)
    x = random_features(fin, b.graph.num_nodes, torch.float32)
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    ref = conv(x, b.graph, basis, es)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, b.graph, basis, es)
    for d in ref:
        assert out[d].dtype == torch.bfloat16
        err = (out[d].float() - ref[d]).abs().max() / ref[d].abs().max()
        assert err < 3e-2, (d, float(err))
    sum(v.float().sum() for v in out.values()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in conv.parameters())


def test_auto_resolves_to_full_and_is_recorded():
    conv = ConvSE3(Fiber({0: 2}), Fiber({0: 2, 1: 2}), max_degree=1, fusion="auto")
    assert conv.fusion is Fusion.FULL
    assert "fusion=full" in repr(conv)
    assert (
        ConvSE3(Fiber({0: 2}), Fiber({0: 2}), max_degree=1, fusion="pairwise").fusion
        is Fusion.PAIRWISE
    )


def test_bad_fiber_degree_shape_raise_value_error(batch64):
    with pytest.raises(ValueError, match="degree 4 > max_degree 3"):
        ConvSE3(Fiber({0: 2, 4: 1}), Fiber({0: 2}), max_degree=3)
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        ConvSE3({0: 0}, Fiber({0: 2}), max_degree=3)
    with pytest.raises(ValueError, match="fusion must be one of"):
        ConvSE3(Fiber({0: 2}), Fiber({0: 2}), max_degree=3, fusion="fastest")
    with pytest.raises(ValueError, match="max_degree"):
        ConvSE3(Fiber({0: 2}), Fiber({0: 2}), max_degree=-1)
    conv = ConvSE3(Fiber({0: 2, 1: 2}), Fiber({0: 2}), Fiber({0: 4}), max_degree=3).double()
    basis, es = edge_inputs(batch64)
    N = batch64.graph.num_nodes
    good = {
        0: torch.randn(N, 2, 1, dtype=torch.float64),
        1: torch.randn(N, 2, 3, dtype=torch.float64),
    }
    with pytest.raises(ValueError, match=r"node features\[1\]: expected shape \[.*2, 3\]"):
        conv({**good, 1: torch.randn(N, 3, 3, dtype=torch.float64)}, batch64.graph, basis, es)
    with pytest.raises(ValueError, match=r"degrees \[1\] missing"):
        conv({0: good[0]}, batch64.graph, basis, es)
    with pytest.raises(ValueError, match="basis: expected the flat basis"):
        conv(good, batch64.graph, basis[:, :100], es)
    with pytest.raises(ValueError, match="edge_scalars"):
        conv(good, batch64.graph, basis, es[:, :3])


@pytest.mark.parametrize("per_edge", [True, False], ids=["si_per_edge", "si_per_node"])
def test_mean_aggregation_is_the_sum_over_the_in_degree(batch64, per_edge):
    """``aggregate="mean"``: the messages' sum over incoming edges divided by their number;
    the self-interaction once per node (per edge, its mean is itself); zeros without edges."""
    fin, fout = FIBERS["mixed"]
    args = dict(max_degree=3, pool=True, self_interaction=True, self_interaction_per_edge=per_edge)
    total = ConvSE3(fin, fout, Fiber({0: 4}), **args).double()
    mean = ConvSE3(fin, fout, Fiber({0: 4}), **args, aggregate="mean").double()
    mean.load_state_dict(total.state_dict())
    g = batch64.graph
    keep = g.dst != 0  # node 0 without incoming edges
    graph = type(g)(g.src[keep], g.dst[keep], g.node_graph, g.num_nodes, g.num_graphs)
    basis, es = edge_inputs(batch64)
    basis, es = basis[keep], es[keep]
    x = random_features(fin, g.num_nodes)
    edges = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=False).double()
    edges.radial.load_state_dict(total.radial.state_dict())
    msgs = edges(x, graph, basis, es)
    deg = torch.bincount(graph.dst, minlength=g.num_nodes).double()[:, None, None]
    got = mean(x, graph, basis, es)
    for d, m in msgs.items():
        si = total.self_weights[str(d)] @ x[d] if str(d) in total.self_weights else 0
        want = torch.zeros_like(got[d]).index_add_(0, graph.dst, m) / deg.clamp(min=1)
        want = want + (si * (deg > 0) if per_edge else si)
        torch.testing.assert_close(got[d], want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="aggregate"):
        ConvSE3(fin, fout, max_degree=3, aggregate="max")
