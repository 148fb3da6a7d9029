"""Radial sharing: an edge and its reverse get one radial row, and the function is unchanged.

On real QM9 bond graphs every edge has a reverse with equal inputs, so the cpp evaluation
computes the radial weights of half the edges; it must still equal the pairwise reference in
float64, forward and every gradient.
"""

import pytest
import torch
from test_kernel import LAYERS, check_against_reference, qm9_batch

from se3t.nn import ConvSE3
from se3t.nn.sharing import RadialShare, radial_share
from se3t.so3 import Fiber
from se3t.testing import edge_inputs


@pytest.fixture(scope="module")
def batch(qm9_store):
    return qm9_batch(qm9_store)


def _check_runs(share: RadialShare, es, src, dst):
    E = src.shape[0]
    assert sorted(share.order.tolist()) == list(range(E))  # a permutation of the edges
    off = share.offsets.tolist()
    for u in range(share.num_runs):
        run = share.order[off[u] : off[u + 1]].tolist()
        assert run[0] == int(share.rep[u]) and len(run) in (1, 2)
        assert all(int(share.run_of[e]) == u for e in run)
        if len(run) == 2:
            a, b = run
            assert (int(src[a]), int(dst[a])) == (int(dst[b]), int(src[b]))
            assert torch.equal(es[a], es[b])


def test_every_bond_of_a_molecule_shares_with_its_reverse(batch):
    _, es = edge_inputs(batch)
    g = batch.graph
    share = radial_share(es, g.src, g.dst, g.num_nodes)
    _check_runs(share, es, g.src, g.dst)
    assert share.num_runs * 2 == g.num_edges  # bond graphs are symmetric
    assert torch.equal(share.expand(share.take(es)), es)


def test_edges_share_only_with_an_equal_reverse():
    # 0->1 / 1->0 equal; 1->2 / 2->1 differ in a feature; 2->0 has no reverse; 3->3 a loop;
    # 0->3 twice with one 3->0: only one of the two pairs with it
    src = torch.tensor([0, 1, 1, 2, 2, 3, 0, 0, 3])
    dst = torch.tensor([1, 0, 2, 1, 0, 3, 3, 3, 0])
    es = torch.ones(9, 2)
    es[3, 0] = 2.0
    share = radial_share(es, src, dst, 4)
    _check_runs(share, es, src, dst)
    runs = {
        tuple(share.order[a:b].tolist())
        for a, b in zip(share.offsets, share.offsets[1:], strict=False)
    }
    assert (0, 1) in runs and (2,) in runs and (3,) in runs and (4,) in runs and (5,) in runs
    assert share.num_runs == 7  # 9 edges, two pairs: (0, 1) and one of 0->3 with 3->0
    nan = es.clone()
    nan[1, 1] = float("nan")
    nan[0, 1] = float("nan")
    assert radial_share(nan, src, dst, 4).num_runs == 8  # NaN never equals: 0, 1 apart


def test_nothing_is_shared_when_the_inputs_need_a_gradient(batch):
    _, es = edge_inputs(batch)
    g = batch.graph
    share = radial_share(es.requires_grad_(True), g.src, g.dst, g.num_nodes)
    assert share.num_runs == g.num_edges
    assert torch.equal(share.order, torch.arange(g.num_edges))


def test_no_edges():
    e = torch.zeros(0, dtype=torch.long)
    share = radial_share(torch.zeros(0, 2), e, e, 3)
    assert share.num_runs == 0 and share.offsets.tolist() == [0]


@pytest.mark.parametrize("layer", list(LAYERS))
def test_cpp_with_shared_radial_rows_equals_pairwise_on_qm9(batch, layer):
    fin, fout, pool = LAYERS[layer]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=pool, self_interaction=pool)
    state = check_against_reference(conv, batch, "cpp", scalars_grad=False)
    assert state.ran == {"cpp": 1}
    assert state.share is not None and 2 * state.share.num_runs == batch.graph.num_edges
    assert f"{batch.graph.num_edges} edges in {state.share.num_runs} radial rows" in repr(state)


@pytest.mark.parametrize(
    "tiles",
    [
        {"edge_block": 3, "k_tile": 5, "chunk_edges": 7, "k_tile_backward": 6},
        {"edge_block": 1, "k_tile": 1, "chunk_edges": 1, "k_tile_backward": 1},
    ],
    ids=["ragged", "ones"],
)
def test_shared_rows_across_chunk_and_tile_edges(batch, tiles):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=True, self_interaction=True)
    state = check_against_reference(conv, batch, "cpp", tiles, scalars_grad=False)
    assert 2 * state.share.num_runs == batch.graph.num_edges


def test_shared_rows_in_float32(batch):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    check_against_reference(conv, batch, "cpp", dtype=torch.float32, scalars_grad=False)


def test_the_torch_evaluation_takes_no_share(batch):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    state = check_against_reference(conv, batch, "torch", scalars_grad=False)
    assert state.share is None and state.ran == {"torch-concat": 1}


def test_the_model_shares_radial_rows_once_per_pass(batch):
    from se3t.models.transformer import SE3TransformerPooled
    from se3t.nn.kernel import KernelState

    model = SE3TransformerPooled(num_layers=2, channels=4, num_heads=2, kernel="cpp").double()
    basis = model.prepare_basis(batch)
    state = model.transformer.kernel_state(basis)
    shared = model(batch, basis, state=state)
    assert state.ran == {"cpp": 3}  # two attention layers and the output convolution
    assert 2 * state.share.num_runs == batch.graph.num_edges
    plain = model(batch, basis, state=KernelState(basis, "torch"))
    torch.testing.assert_close(shared, plain, rtol=1e-10, atol=1e-12)
