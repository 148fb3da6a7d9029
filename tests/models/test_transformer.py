import dataclasses

import pytest
import torch

from se3t.config import ModelConfig
from se3t.graph import Batch, Graph
from se3t.models import SE3Transformer, SE3TransformerPooled, build
from se3t.nn import ConvSE3, Fusion, pairwise_reference
from se3t.so3 import Fiber, compute_basis, compute_basis_flat
from se3t.testing import assert_equivariant, edge_inputs, random_batch, random_features

TINY = dict(num_layers=2, max_degree=2, channels=4, num_heads=2, channels_div=2, radial_hidden=8)


def tiny(**kw):
    torch.manual_seed(0)
    return SE3TransformerPooled(**{**TINY, **kw}).double().eval()


def with_pos(batch, pos):
    return dataclasses.replace(batch, pos=pos)


@pytest.fixture
def batch64():
    return random_batch(num_graphs=3, dtype=torch.float64)


@pytest.mark.parametrize("fusion", ["pairwise", "full"])
def test_pooled_output_invariant_under_rotation_and_translation(batch64, fusion):
    model = tiny(fusion=fusion)
    out = assert_equivariant(lambda pos, f: model(with_pos(batch64, pos)), batch64.pos, {})
    assert out.shape == (3, 1)


def test_degree1_head_equivariant(batch64):
    net = SE3Transformer(
        Fiber({0: 6}),
        Fiber.create(3, 4),
        Fiber({0: 2, 1: 2}),
        Fiber({0: 4}),
        num_layers=2,
        num_heads=2,
        radial_hidden=8,
    ).double()
    g = batch64.graph
    _, es = edge_inputs(batch64, 2)

    def fn(pos, feats):
        return net(feats, g, compute_basis_flat(pos[g.dst] - pos[g.src], 2), es)

    out = assert_equivariant(fn, batch64.pos, {0: batch64.node_feats.unsqueeze(-1)})
    assert out[1].shape == (g.num_nodes, 2, 3)


def test_fused_model_equals_pairwise_reference(batch64):
    model = tiny(fusion="full")
    ref = tiny(fusion="full")
    ref.load_state_dict(model.state_dict())
    for _name, mod in list(ref.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, ConvSE3):
                setattr(mod, child_name, pairwise_reference(child))
    assert all(m.fusion is Fusion.PAIRWISE for m in ref.modules() if isinstance(m, ConvSE3))
    a, b = model(batch64), ref(batch64)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(
        model.mlp[0].weight.grad, ref.mlp[0].weight.grad, rtol=1e-9, atol=1e-12
    )


def test_permutation_invariance_and_batch_equals_single(batch64):
    model = tiny()
    out = model(batch64)
    g = batch64.graph
    # permute atoms (and relabel edges accordingly)
    perm = torch.randperm(g.num_nodes)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(g.num_nodes)
    edge_perm = torch.randperm(g.num_edges)
    pg = Graph(
        inv[g.src][edge_perm], inv[g.dst][edge_perm], g.node_graph[perm], g.num_nodes, g.num_graphs
    )
    pb = Batch(pg, batch64.pos[perm], batch64.node_feats[perm], batch64.edge_feats[edge_perm])
    torch.testing.assert_close(model(pb), out, rtol=1e-9, atol=1e-12)
    # each molecule alone
    for i in range(g.num_graphs):
        nodes = (g.node_graph == i).nonzero().squeeze(1)
        edges = (g.node_graph[g.src] == i).nonzero().squeeze(1)
        first = int(nodes[0])
        sg = Graph(
            g.src[edges] - first,
            g.dst[edges] - first,
            torch.zeros(len(nodes), dtype=torch.long),
            len(nodes),
            1,
        )
        single = Batch(sg, batch64.pos[nodes], batch64.node_feats[nodes], batch64.edge_feats[edges])
        torch.testing.assert_close(model(single), out[i : i + 1], rtol=1e-9, atol=1e-12)


def test_basis_argument_forms_agree(batch64):
    model = tiny()
    ref = model(batch64)
    flat = compute_basis_flat(batch64.edge_vec, 2)
    torch.testing.assert_close(model(batch64, basis=flat), ref)
    torch.testing.assert_close(model(batch64, basis=compute_basis(batch64.edge_vec, 2)), ref)
    with pytest.raises(ValueError, match=r"basis: expected \["):
        model(batch64, basis=flat[:-1])
    with pytest.raises(ValueError, match="batch.node_feats"):
        model(dataclasses.replace(batch64, node_feats=batch64.node_feats[:, :5]))
    with pytest.raises(ValueError, match="batch.edge_feats"):
        model(dataclasses.replace(batch64, edge_feats=batch64.edge_feats[:, :3]))


def test_low_memory_same_gradients(batch64):
    a, b = tiny(), tiny(low_memory=True)
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    la, lb = a(batch64).sum(), b(batch64).sum()
    torch.testing.assert_close(la, lb)
    la.backward()
    lb.backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_mean_pooling_and_out_dim(batch64):
    model = tiny(pooling="mean", out_dim=3)
    assert model(batch64).shape == (3, 3)


def test_build_default_is_the_paper_model():
    model = build(ModelConfig())
    n = sum(p.numel() for p in model.parameters())
    # NVIDIA's SE3Transformer at these hyperparameters: 9.3 M
    assert 9.2e6 < n < 9.4e6, n
    assert model.fusion is Fusion.FULL
    assert len(model.transformer.blocks) == 7
    assert build(ModelConfig(fusion="pairwise")).fusion is Fusion.PAIRWISE
    with pytest.raises(ValueError, match="out_dim"):
        SE3TransformerPooled(out_dim=0)


@pytest.mark.slow
def test_default_model_trains_on_real_molecules(qm9_store):
    from se3t.data import MoleculeDataset, collate

    ds = MoleculeDataset(qm9_store, split="all", targets=("homo",))
    batch = collate([ds[i] for i in range(6)])
    torch.manual_seed(0)
    model = build(ModelConfig(num_layers=2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.l1_loss(model(batch), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(batch).float()).all()


def test_random_features_helper_shapes():
    assert random_features(Fiber({2: 3}), 4)[2].shape == (4, 3, 5)
