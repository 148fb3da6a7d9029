"""se3t computes the RoseTTAFold family's SE(3)-Transformer blocks: compared with committed
fixtures of their own vendored code (benchmarks/rosettafold/make_fixtures.py; no DGL here).

Per fixture (block, protein size, full or top-k graph): weights and inputs regenerated from the
fixture's seeds (:func:`se3t.testing.hash_uniform`, bit-identical on any torch), loaded through
the vendored state-dict layout, the graph rebuilt by se3t's builders (same edges, same order),
one forward and backward pass in float32 and in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from se3t.choices import Fusion
from se3t.interop import rosettafold as rf
from se3t.nn.conv import ConvSE3, pairwise_reference
from se3t.testing import digest, hash_uniform, random_rotation, wigner_D

FIXTURES = Path(__file__).parent / "fixtures" / "rosettafold"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.pt"))
# the thresholds, per call
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def load(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest deviation relative to the reference tensor's largest magnitude."""
    assert got.shape == want.shape, f"shape {list(got.shape)} != {list(want.shape)}"
    scale = want.abs().max().clamp(min=torch.finfo(want.dtype).tiny)
    return ((got.to(want.dtype) - want).abs().max() / scale).item()


def hashed_state(keys_shapes: dict, seeds: dict) -> dict:
    """The fixture's weights: the same hash per key (by rank in sorted order), rounded to
    float32, as make_fixtures.set_weights draws them."""
    out = {}
    for k, key in enumerate(sorted(keys_shapes)):
        shape = tuple(keys_shapes[key])
        u = hash_uniform(shape, seeds["weights"] * 100000 + k)
        if len(shape) >= 2:
            v = u * (3.0 / shape[-1]) ** 0.5
        elif key.endswith("weight"):
            v = 1.0 + 0.25 * u
        else:
            v = 0.25 * u
        out[key] = v.float()
    return out


def build(fx: dict, dtype: torch.dtype) -> rf.SE3TransformerWrapper:
    m = fx["meta"]
    model = rf.SE3TransformerWrapper(**m["kwargs"], variant=m["source"], **m["options"])
    model = model.to(dtype)
    shapes = fx["float32"]["param_shapes"]
    state = model.state_dict()
    assert list(state) == list(shapes), "state-dict keys (and order) differ from the vendored"
    assert {k: list(v.shape) for k, v in state.items()} == shapes
    model.load_state_dict(hashed_state(shapes, fx["seeds"]))
    return model


def residue_graph(fx: dict):
    """se3t's builder on the fixture's backbone and pair features: ``(graph, edge32)``."""
    m, S = fx["meta"], fx["seeds"]
    L, F = m["L"], m["kwargs"]["num_edge_features"]
    a, b, c = (hash_uniform((L, F), S["pair"] * 10 + i) for i in range(3))
    pair = (a[:, None, :] * b[None, :, :] + c[:, None, :]).float()[None]
    ca = fx["xyz"][None, :, 1, :]
    idx = torch.arange(L)[None]
    if m["graph"] == "full":
        G, edge = rf.make_full_graph(ca, pair, idx)
    else:
        variant = "rf2" if m["source"] == "rf2" else "rfdiffusion"
        G, edge = rf.make_topk_graph(ca, pair, idx, top_k=m["top_k"], variant=variant)
    return G, edge


def run(fx: dict, dtype: torch.dtype):
    m, S = fx["meta"], fx["seeds"]
    model = build(fx, dtype)
    G, edge32 = residue_graph(fx)
    src, dst = G.edges()
    ca = fx["xyz"][:, 1, :].to(dtype)
    G = rf.ResidueGraph(G.graph, ca[dst] - ca[src])
    L, kw = m["L"], m["kwargs"]
    node = hash_uniform((L, kw["l0_in_features"], 1), S["node"]).float().to(dtype)
    node.requires_grad_()
    edge = edge32.to(dtype).requires_grad_()
    atoms = [0, 1, 2] if kw["l1_in_features"] == 3 else [0, 2]
    l1 = (fx["xyz"][:, atoms] - fx["xyz"][:, 1:2]).to(dtype).requires_grad_()
    out = model(G, node, l1, edge)
    loss = sum(
        (v * hash_uniform(v.shape, S["loss"] * 10 + int(d)).to(dtype)).sum() for d, v in out.items()
    )
    loss.backward()
    n = m["digest_limit"]
    got = {
        "output": {d: digest(v, n) for d, v in out.items()},
        "input_grads": {
            k: digest(v.grad, n) for k, v in (("node", node), ("l1", l1), ("edge", edge))
        },
        "param_grads": {k: digest(v, n) for k, v in model.vendored_state_dict(grad=True).items()},
    }
    return got, (src, dst)


def flat(res: dict) -> dict[str, torch.Tensor]:
    out = {f"output[{d}]": v for d, v in res["output"].items()}
    out |= {f"grad {k}": v for k, v in res["input_grads"].items()}
    out |= {f"grad {k}": v for k, v in res["param_grads"].items()}
    return out


# the protein-size graphs (65,280 edges in full) take tens of seconds per pass on two cores
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if "_L256_" in n else n for n in NAMES]


@pytest.fixture(scope="module", params=PARAMS)
def fixture(request) -> dict:
    return load(request.param)


def test_fixtures_present():
    blocks = {n.split("_L")[0] for n in NAMES}
    assert {"rfd_main", "rfd_refiner", "rf2_main"} <= blocks, sorted(blocks)


def test_graph_matches_theirs(fixture):
    G, _ = residue_graph(fixture)
    src, dst = G.edges()
    L = fixture["meta"]["L"]
    key = src * L + dst + 1
    assert G.num_edges() == fixture["edges"]["num_edges"]
    assert int((key * (torch.arange(key.numel()) + 1)).sum()) == fixture["edges"]["checksum"]


def test_float64(fixture):
    """float64 on both sides: the same function to rounding (<= 1e-12)."""
    got, _ = run(fixture, torch.float64)
    want = flat(fixture["float64"])
    errs = {k: rel_err(v, want[k]) for k, v in flat(got).items()}
    worst = max(errs, key=errs.get)
    assert errs[worst] <= RTOL[torch.float64], f"{worst}: relative error {errs[worst]:.3g}"


def test_float32(fixture):
    """float32 against their float32 (<= 1e-5); where their float32 is itself further than
    1e-5 from the exact value (their float64 on the same rounded inputs: sums over 65,000
    edges in float32), se3t must be no further from it than theirs is."""
    got, _ = run(fixture, torch.float32)
    theirs, exact = flat(fixture["float32"]), flat(fixture["float64"])
    for k, v in flat(got).items():
        err = rel_err(v, theirs[k])
        if err <= RTOL[torch.float32]:
            continue
        own, ref = rel_err(v.double(), exact[k]), rel_err(theirs[k].double(), exact[k])
        assert own <= max(ref, RTOL[torch.float32]), (
            f"{k}: relative error {err:.3g} to their float32, {own:.3g} to the exact value "
            f"(theirs {ref:.3g})"
        )


def test_fuse_levels(fixture):
    """Each convolution's radial sharing is the one the vendored code used."""
    model = build(fixture, torch.float32)
    names = {"PER_INPUT": "PARTIAL", "PER_OUTPUT": "PARTIAL", "FULL": "FULL", "PAIRWISE": "NONE"}
    convs = [a[0].to_key_value for a in model.se3.blocks]
    if isinstance(model.se3.final, ConvSE3):
        convs.append(model.se3.final)
    got = [names[c.fusion.name] for c in convs]
    assert got == list(fixture["float32"]["fuse_levels"].values())


def test_state_dict_round_trip_under_any_prefix():
    """A whole RF model's state dict (the block under its path) loads unchanged into a model
    holding se3t's block at the same path, and saves back the same keys and tensors."""
    fx = load(NAMES[0])
    block = build(fx, torch.float32)

    class Outer(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.str2str = torch.nn.Module()
            self.str2str.se3 = inner
            self.other = torch.nn.Linear(2, 2)

    saved = Outer(block).state_dict()
    assert any(k.startswith("str2str.se3.se3.graph_modules.0.") for k in saved)
    fresh = Outer(rf.SE3TransformerWrapper(**fx["meta"]["kwargs"], variant=fx["meta"]["source"]))
    fresh.load_state_dict(saved, strict=True)
    again = fresh.state_dict()
    assert list(again) == list(saved)
    for k, v in saved.items():
        assert torch.equal(again[k], v), k


def test_load_rejects_wrong_shapes():
    fx = load(NAMES[0])
    block = build(fx, torch.float32)
    sd = block.state_dict()
    key = next(k for k in sd if k.endswith("net.6.weight"))
    sd[key] = sd[key][:-1]
    with pytest.raises(RuntimeError, match="size mismatch"):
        block.load_state_dict(sd)


def test_pairwise_reference_matches_fused_levels():
    """Every fused convolution of the blocks computes its pairwise reference's function."""
    kw = dict(num_layers=2, num_channels=8, num_degrees=2, n_heads=2, div=2)
    kw |= dict(l0_in_features=5, l0_out_features=4, l1_in_features=3, l1_out_features=2)
    model = rf.SE3TransformerWrapper(**kw, num_edge_features=3).double()
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    convs = [a[0].to_key_value for a in model.se3.blocks] + [model.se3.final]
    assert {c.fusion for c in convs} >= {Fusion.PER_INPUT, Fusion.PER_OUTPUT}
    L = 12
    xyz = torch.randn(1, L, 3, dtype=torch.float64) * 3
    pair = torch.randn(1, L, L, 3, dtype=torch.float64)
    G, edge = rf.make_full_graph(xyz, pair, torch.arange(L)[None])
    x0 = torch.randn(L, 5, 1, dtype=torch.float64)
    x1 = torch.randn(L, 3, 3, dtype=torch.float64)
    want = model(G, x0, x1, edge)
    for att, _ in model.se3.blocks:
        att.to_key_value = pairwise_reference(att.to_key_value)
    model.se3.final = pairwise_reference(model.se3.final)
    got = model(G, x0, x1, edge)
    for d in want:
        torch.testing.assert_close(got[d], want[d], rtol=1e-10, atol=1e-10)


def test_mean_aggregation_is_sum_over_in_degree():
    """RFAA's sum_over_edge=False: the mean of (message + self-interaction) over incoming
    edges, zeros for nodes without any."""
    torch.manual_seed(1)
    kw = dict(num_layers=1, num_channels=4, num_degrees=2, n_heads=2, div=2)
    kw |= dict(l0_in_features=3, l0_out_features=2, l1_in_features=1, l1_out_features=1)
    kw |= dict(num_edge_features=2, variant="rfaa", final_layer="conv")
    mean = rf.SE3TransformerWrapper(**kw, sum_over_edge=False)
    total = rf.SE3TransformerWrapper(**kw)
    mean, total = mean.double(), total.double()
    for p in mean.parameters():
        torch.nn.init.normal_(p, std=0.5)
    total.load_state_dict(mean.state_dict())
    L = 9
    xyz = torch.randn(1, L, 3, dtype=torch.float64) * 4
    pair = torch.randn(1, L, L, 2, dtype=torch.float64)
    G, edge = rf.make_topk_graph(xyz, pair, torch.arange(L)[None], top_k=3, kmin=2, variant="rf2")
    keep = G.graph.dst != 0  # node 0: no incoming edges
    graph = type(G.graph)(G.graph.src[keep], G.graph.dst[keep], G.graph.node_graph, L, 1)
    G = rf.ResidueGraph(graph, G.rel_pos[keep])
    edge = edge[keep]
    x0, x1 = torch.randn(L, 3, 1, dtype=torch.float64), torch.randn(L, 1, 3, dtype=torch.float64)
    m, s = mean(G, x0, x1, edge), total(G, x0, x1, edge)
    deg = torch.bincount(graph.dst, minlength=L).double()
    for d in m:
        assert torch.all(m[d][0] == 0)
        # total = sum(msg) + deg * W x; mean = sum(msg) / deg + W x
        x = mean_inputs(mean, G, x0, x1, edge)[int(d)]
        si = total.se3.final.self_weights[d] @ x
        want = (s[d] - deg[:, None, None] * si) / deg.clamp(min=1)[:, None, None] + si
        torch.testing.assert_close(m[d][1:], want[1:], rtol=1e-10, atol=1e-10)


def mean_inputs(model, G, x0, x1, edge):
    """The final layer's input features (the last block's output)."""
    seen = {}
    handle = model.se3.final.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    model(G, x0, x1, edge)
    handle.remove()
    return seen["x"]


def test_dgl_free_builders_reject_bad_shapes():
    xyz = torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="pair must be"):
        rf.make_full_graph(xyz, torch.zeros(1, 5, 4, 2), torch.arange(5)[None])
    with pytest.raises(TypeError, match="ResidueGraph"):
        rf.SE3TransformerWrapper(num_degrees=2)(object(), torch.zeros(5, 32, 1))


class _GraphWithDGLInterface:
    """The four members of a ``DGLGraph`` the wrapper reads (DGL's wheels stop at torch 2.2,
    below se3t's minimum, so no real DGLGraph can run here; benchmarks/rosettafold compares
    on DGL's graphs in the vendored environment)."""

    def __init__(self, src, dst, num_nodes, rel_pos):
        self._src, self._dst, self._n = src, dst, num_nodes
        self.edata = {"rel_pos": rel_pos}

    def edges(self):
        return self._src.int(), self._dst.int()  # DGL's default index dtype

    def batch_num_nodes(self):
        return torch.tensor([self._n])

    def num_nodes(self):
        return self._n


def test_dgl_graph_input_gives_the_same_outputs():
    fx = load(NAMES[0])
    model = build(fx, torch.float64)
    G, edge = residue_graph(fx)
    L = fx["meta"]["L"]
    src, dst = G.edges()
    like = _GraphWithDGLInterface(src, dst, L, G.rel_pos)
    x0 = hash_uniform((L, fx["meta"]["kwargs"]["l0_in_features"], 1), 1)
    x1 = hash_uniform((L, fx["meta"]["kwargs"]["l1_in_features"], 3), 2)
    want, got = model(G, x0, x1, edge), model(like, x0, x1, edge)
    for d in want:
        assert torch.equal(got[d], want[d])
    like.edata.clear()
    with pytest.raises(ValueError, match="rel_pos"):
        model(like, x0, x1, edge)


@pytest.mark.parametrize("variant", rf.VARIANTS)
def test_blocks_are_equivariant(variant):
    """Rotating the backbone rotates the degree-1 outputs (and leaves degree 0 unchanged), for
    every variant, with RFAA's per-degree value divisors on top."""
    torch.manual_seed(3)
    kw = dict(num_layers=2, num_channels=8, num_degrees=2, n_heads=2, div=2)
    kw |= dict(l0_in_features=5, l0_out_features=4, l1_in_features=3, l1_out_features=2)
    divs = {0: 2, 1: 4} if variant == "rfaa" else None
    model = rf.SE3TransformerWrapper(**kw, num_edge_features=3, variant=variant, channels_div=divs)
    model = model.double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    if divs:
        assert dict(model.se3.blocks[0][0].value_fiber) == {0: 4, 1: 2}
    L = 10
    xyz = torch.randn(1, L, 3, dtype=torch.float64) * 3
    pair = torch.randn(1, L, L, 3, dtype=torch.float64)
    G, edge = rf.make_topk_graph(xyz, pair, torch.arange(L)[None], top_k=4, kmin=2)
    x0 = torch.randn(L, 5, 1, dtype=torch.float64)
    x1 = torch.randn(L, 3, 3, dtype=torch.float64)
    R = random_rotation(torch.float64, torch.Generator().manual_seed(5))
    D = wigner_D(1, R)
    out = model(G, x0, x1, edge)
    turned = rf.ResidueGraph(G.graph, G.rel_pos @ R.T)
    out_r = model(turned, x0, x1 @ D.T, edge)
    torch.testing.assert_close(out_r["0"], out["0"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_r["1"], out["1"] @ D.T, rtol=1e-9, atol=1e-9)
