"""The fused kernel's backends against the pairwise reference, on real QM9 molecules.

The batch holds real molecules from tests/data/qm9 plus two made from them: a molecule of two
atoms and one bond (its first bond) and an isolated atom (no edges at all), so the kernels see
edge tiles that are partly full, and nodes that receive nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from se3t.nn import ConvSE3, kernel_cpu, pairwise_reference
from se3t.nn.kernel import KernelSpec, KernelState, fused_tfn
from se3t.nn.tuning import KernelTuner, default_tiles
from se3t.so3 import Fiber, compute_basis_flat
from se3t.so3.blocks import block_basis, block_column_ranges
from se3t.testing import (
    assert_equivariant,
    edge_inputs,
    expected_fused_param_grads,
    random_features,
)

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}

# the model's fusion groups at small channel counts: first layer (one input degree), hidden
# layers (uniform channels, every degree, edge messages) and the output convolution
LAYERS = {
    "first": (Fiber({0: 6}), Fiber({0: 4, 1: 4, 2: 4, 3: 4}), True),
    "hidden": (Fiber({0: 4, 1: 4, 2: 4, 3: 4}), Fiber({0: 8, 1: 8, 2: 8, 3: 8}), False),
    "out": (Fiber({0: 4, 1: 4, 2: 4, 3: 4}), Fiber({0: 8}), True),
}


def qm9_batch(store, n=5):
    """Real molecules, a two-atom molecule with one bond and an isolated atom, float64."""
    from se3t.data import MoleculeDataset, collate
    from se3t.data.dataset import MoleculeSample

    ds = MoleculeDataset(store, split="all", targets=("homo",))
    real = [ds[i] for i in range(n)]
    m = real[-1]
    a, b = int(m.src[0]), int(m.dst[0])
    one_bond = MoleculeSample(
        pos=np.asarray(m.pos[[a, b]]),
        species=np.asarray(m.species[[a, b]]),
        src=np.array([0, 1], dtype=np.int32),
        dst=np.array([1, 0], dtype=np.int32),
        bond_type=np.asarray(m.bond_type[[0, 0]]),
        y=m.y,
    )
    isolated = MoleculeSample(
        pos=np.asarray(m.pos[:1]),
        species=np.asarray(m.species[:1]),
        src=np.zeros(0, dtype=np.int32),
        dst=np.zeros(0, dtype=np.int32),
        bond_type=np.zeros(0, dtype=np.int8),
        y=m.y,
    )
    batch = collate([*real[:2], one_bond, *real[2:], isolated])
    batch.pos, batch.node_feats = batch.pos.double(), batch.node_feats.double()
    batch.edge_feats = batch.edge_feats.double()
    return batch


@pytest.fixture(scope="module")
def batch(qm9_store):
    return qm9_batch(qm9_store)


def _loss(out):
    g = torch.Generator().manual_seed(7)
    return sum(
        (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for _, o in sorted(out.items())
    )


def check_against_reference(
    conv, batch, backend, tiles=None, dtype=torch.float64, scalars_grad=True
):
    """Outputs and every gradient of ``conv`` run with ``backend`` against its pairwise
    reference: node features, basis, edge scalars (so ``z``; with ``scalars_grad``, else
    through the radial hidden layers' parameters), every parameter (so ``W``). Edge scalars
    without a gradient let an edge and its reverse share radial weights (se3t.nn.sharing).
    Returns the kernel state of the pass."""
    conv = conv.to(dtype)
    ref = pairwise_reference(conv)
    basis, es = edge_inputs(batch)
    basis, es = basis.to(dtype).requires_grad_(True), es.to(dtype).requires_grad_(scalars_grad)
    x = {
        d: v.requires_grad_(True)
        for d, v in random_features(conv.fiber_in, batch.graph.num_nodes, dtype).items()
    }
    tuner = KernelTuner(overrides=tiles, cache=None, trial=False) if tiles else None
    state = KernelState(basis, backend, tuner)
    out = conv(x, batch.graph, basis, es, state=state)
    out_ref = ref(x, batch.graph, basis, es)
    assert set(out) == set(out_ref)
    for d in out:
        torch.testing.assert_close(out[d], out_ref[d], **TOL[dtype])
    inputs = [*x.values(), basis, *([es] if scalars_grad else [])]
    conv.zero_grad()
    _loss(out).backward(inputs=[*inputs, *conv.parameters()])
    got = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    _loss(out_ref).backward(inputs=[*inputs, *ref.parameters()])
    for a, t in zip(got, inputs, strict=True):
        torch.testing.assert_close(a, t.grad, **TOL[dtype])
    expected = expected_fused_param_grads(conv, ref)
    for n, p in conv.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], **TOL[dtype], msg=n)
    return state


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_backend_equals_pairwise_on_qm9(batch, layer, backend):
    fin, fout, pool = LAYERS[layer]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=pool, self_interaction=pool)
    state = check_against_reference(conv, batch, backend)
    evaluation = "cpp" if backend == "cpp" else "torch-concat"
    assert state.ran == {evaluation: 1}, state  # the compiled kernel itself ran, no fallback
    assert f"ran {{{evaluation}: 1}}" in repr(state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_basis_products_equal_dense_matmuls_on_qm9(batch, dtype):
    # T = Bb x[src] and its x gradient on the nonzero columns only, against torch's bmm
    kernel = kernel_cpu.extension()
    basis, _ = edge_inputs(batch)
    ins, outs = (0, 1, 2, 3), (0, 1, 2, 3)
    block = block_basis(basis.to(dtype), ins, outs, 3)
    lo, hi = block_column_ranges(ins, outs)
    g = torch.Generator().manual_seed(0)
    N, E = batch.graph.num_nodes, block.shape[0]
    x = torch.randn(N, block.shape[2], 5, generator=g, dtype=dtype)  # C = 5: a ragged vector
    src = batch.graph.src
    T = kernel.basis_x(block, x, src, lo, hi, torch.empty(E, block.shape[1], 5, dtype=dtype))
    torch.testing.assert_close(T, torch.bmm(block, x[src]), **TOL[dtype])
    gT = torch.randn(T.shape, generator=g, dtype=dtype)
    gx = kernel.basis_t(block, gT, lo, hi)
    torch.testing.assert_close(gx, torch.bmm(block.transpose(1, 2), gT), **TOL[dtype])
    with pytest.raises(ValueError, match=f"src must index the {N} nodes"):
        kernel.basis_x(block, x, src + N, lo, hi, T)
    with pytest.raises(ValueError, match="column ranges"):
        kernel.basis_t(block, gT, lo, hi + block.shape[2])


@pytest.mark.parametrize(
    "tiles",
    [
        # ragged tiles and edge blocks
        {"edge_block": 3, "k_tile": 5, "chunk_edges": 7, "k_tile_backward": 6},
        # one run, one k per tile
        {"edge_block": 1, "k_tile": 1, "chunk_edges": 1, "k_tile_backward": 1},
        # one tile, mostly empty
        {"edge_block": 1000, "k_tile": 1000, "chunk_edges": 10_000, "k_tile_backward": 1000},
    ],
    ids=["ragged", "ones", "huge"],
)
def test_cpp_tiles_do_not_change_the_result(batch, tiles):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=True, self_interaction=True)
    state = check_against_reference(conv, batch, "cpp", tiles)
    assert state.tiles["cpp"] == tiles


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_backward_of_narrow_inputs_runs_by_runs(batch, dtype, monkeypatch):
    """One input channel per degree and 24 output channels (RoseTTAFold's first blocks are
    alike: 3 vectors in, 32 channels out): K is narrower than a vector, so the backward pass
    runs blocks of runs on the (k, c) weights, vectorized over the output channels (24: a
    vector and a tail); equal to the pairwise reference, with and without radial sharing."""
    kernel, flags = kernel_cpu.extension(), []
    real = kernel.backward

    def spy(*args, by_runs=False):
        flags.append(by_runs)
        return real(*args, by_runs=by_runs)

    monkeypatch.setattr(kernel, "backward", spy)
    conv = ConvSE3(Fiber({0: 1, 1: 1}), Fiber({0: 24, 1: 24}), Fiber({0: 4}), max_degree=3)
    for scalars_grad in (True, False):
        check_against_reference(conv, batch, "cpp", dtype=dtype, scalars_grad=scalars_grad)
    assert True in flags  # K = 2 and 4 at d_out = 0 and 1: narrower than an AVX vector


def test_cpp_float32_equals_pairwise(batch):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    check_against_reference(conv, batch, "cpp", dtype=torch.float32)


def test_cpp_on_a_batch_without_edges(qm9_store):
    # isolated atoms only: every edge tile is empty, outputs are the self-interaction alone
    b = qm9_batch(qm9_store, n=1)
    keep = b.graph.node_graph == b.graph.num_graphs - 1  # the isolated atom's molecule
    from se3t.graph import Batch, Graph

    g = Graph(
        src=b.graph.src[:0],
        dst=b.graph.dst[:0],
        node_graph=torch.zeros(int(keep.sum()), dtype=torch.long),
        num_nodes=int(keep.sum()),
        num_graphs=1,
    )
    empty = Batch(g, b.pos[keep], b.node_feats[keep], b.edge_feats[:0], y=b.y[:1])
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, self_interaction=True)
    state = check_against_reference(conv, empty, "cpp")
    assert state.ran == {"cpp": 1}


def test_cpp_kernel_gradcheck(batch):
    # the op alone: numerical gradients of z, W, basis and the node features
    spec = KernelSpec([(0, 2), (1, 2)], [(0, 1), (1, 2), (2, 1)], 2)
    sub = batch.graph.src[:9], batch.graph.dst[:9]
    ev = batch.pos[sub[1]] - batch.pos[sub[0]]
    basis = compute_basis_flat(ev, 2).requires_grad_(True)
    N = batch.graph.num_nodes
    z = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(spec.num_radial, 3, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(N, 2, 1, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(N, 2, 3, dtype=torch.float64, requires_grad=True)
    tuner = KernelTuner(
        {"edge_block": 3, "k_tile": 3, "chunk_edges": 4, "k_tile_backward": 2}, trial=False
    )

    def fn(z, w, basis, x0, x1):
        state = KernelState(basis, "cpp", tuner)
        out = fused_tfn(spec, z, w, basis, sub[0], [x0, x1], state)
        assert state.ran == {"cpp": 1}
        return tuple(out.values())

    assert torch.autograd.gradcheck(fn, (z, w, basis, x0, x1))


def test_cpp_conv_equivariant(batch):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, self_interaction=True).double()
    _, es = edge_inputs(batch)
    g = batch.graph
    states = []

    def fn(pos, feats):
        basis = compute_basis_flat(pos[g.dst] - pos[g.src], 3)
        states.append(KernelState(basis, "cpp"))
        return conv(feats, g, basis, es, state=states[-1])

    assert_equivariant(fn, batch.pos, random_features(fin, g.num_nodes))
    assert all(s.ran == {"cpp": 1} for s in states)


def test_auto_picks_cpp_on_cpu_and_torch_under_bf16(batch):
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    basis, es = edge_inputs(batch)
    basis, es = basis.float(), es.float()
    x = random_features(fin, batch.graph.num_nodes, torch.float32)
    state = KernelState(basis)
    conv(x, batch.graph, basis, es, state=state)
    assert state.ran == {"cpp": 1}
    state = KernelState(basis)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x, batch.graph, basis, es, state=state)
    assert state.ran == {"torch-concat": 1}  # bf16: the compiled kernel is fp32/fp64 only
    with (
        pytest.raises(ValueError, match="cpp runs on the CPU in float32/float64"),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        conv(x, batch.graph, basis, es, state=KernelState(basis, "cpp"))


def test_mixed_channels_run_the_per_pair_evaluation(batch):
    fin, fout = Fiber({0: 3, 1: 2}), Fiber({0: 2, 1: 3})
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    state = check_against_reference(conv, batch, "auto")
    assert state.ran == {"torch-pairs": 1}
    with pytest.raises(ValueError, match="one channel count across the input degrees"):
        check_against_reference(conv, batch, "cpp")


def test_state_shares_one_block_basis_between_layers(batch):
    fin, fout, _ = LAYERS["hidden"]
    convs = [ConvSE3(fin, fin, Fiber({0: 4}), max_degree=3).double() for _ in range(2)]
    basis, es = edge_inputs(batch)
    x = random_features(fin, batch.graph.num_nodes)
    state = KernelState(basis, "torch")
    with torch.no_grad():
        y = convs[0](x, batch.graph, basis, es, state=state)
        convs[1](y, batch.graph, basis, es, state=state)
    assert list(state.blocks) == [((0, 1, 2, 3), (0, 1, 2, 3), torch.float64)]
    assert state.ran == {"torch-concat": 2}
    assert "(0, 1, 2, 3)->(0, 1, 2, 3) float64" in repr(state)


def test_model_builds_one_state_per_pass_with_the_configured_backend(batch):
    from se3t.models.transformer import SE3TransformerPooled

    b = batch
    b.pos, b.node_feats, b.edge_feats = b.pos.float(), b.node_feats.float(), b.edge_feats.float()
    model = SE3TransformerPooled(num_layers=2, channels=4, num_heads=2, kernel="torch")
    basis = model.prepare_basis(b)
    state = model.transformer.kernel_state(basis)
    model(b, basis, state=state)
    assert state.ran == {"torch-concat": 3}  # two attention layers and the output convolution
    with pytest.raises(ValueError, match="kernel must be one of"):
        SE3TransformerPooled(num_layers=1, kernel="fastest")
    with pytest.raises(ValueError, match="another basis tensor"):
        model(b, basis.clone(), state=state)


def test_no_compiler_falls_back_to_torch_with_one_line(tmp_path, batch):
    # a real process without any C++ compiler on PATH and an empty cache folder
    code = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from se3t.nn import ConvSE3\n"
        "from se3t.nn.kernel import KernelState\n"
        "from se3t.so3 import Fiber\n"
        "from se3t.testing import edge_inputs, random_batch, random_features\n"
        "b = random_batch(2)\n"
        "basis, es = edge_inputs(b)\n"
        "f = Fiber({0: 2, 1: 2})\n"
        "conv = ConvSE3(f, f, Fiber({0: 4}), max_degree=3).double()\n"
        "s = KernelState(basis)\n"
        "conv(random_features(f, b.graph.num_nodes), b.graph, basis, es, state=s)\n"
        "print(sorted(s.ran))\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['torch-concat']"
    notice = [line for line in proc.stderr.splitlines() if "compiler" in line]
    assert notice == ["se3t kernel: no C++ compiler found; the fused TFN runs in torch (slower)"]
    assert not (tmp_path / "cache" / "se3t" / "kernels").exists()


def test_tuner_times_candidates_once_and_caches_them_per_machine(tmp_path, batch):
    cache = tmp_path / "tuning.json"
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    basis, es = edge_inputs(batch)
    basis, es = basis.float(), es.float()
    x = random_features(fin, batch.graph.num_nodes, torch.float32)
    tuner = KernelTuner(cache=cache)
    state = KernelState(basis, "cpp", tuner)
    conv(x, batch.graph, basis, es, state=state)
    stored = json.loads(cache.read_text())
    (key, tiles), *_ = stored.items()
    model, _ = kernel_cpu.cpu_description()
    assert key.startswith(f"{model}|torch {torch.__version__}|cpp|float32|H 32|")
    assert set(tiles) == set(default_tiles("cpp"))
    assert state.tiles["cpp"] == tiles
    assert key in tuner.report()
    # a second process reads the cache and times nothing; config overrides win
    again = KernelTuner(overrides={"k_tile": 7, "edge_block": 0}, cache=cache, trial=False)
    state = KernelState(basis, "cpp", again)
    conv(x, batch.graph, basis, es, state=state)
    assert state.tiles["cpp"] == {**tiles, "k_tile": 7}
    assert json.loads(cache.read_text()) == stored


def test_forward_and_backward_run_with_their_own_k_tiles(batch, monkeypatch):
    calls = []
    kernel = kernel_cpu.extension()
    for name in ("forward", "backward"):
        real = getattr(kernel, name)

        def spy(*args, _real=real, _name=name, **kw):  # records the k tile, runs the kernel
            calls.append((_name, args[-1]))
            return _real(*args, **kw)

        monkeypatch.setattr(kernel, name, spy)
    fin, fout, _ = LAYERS["hidden"]
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3)
    tiles = {"edge_block": 8, "k_tile": 16, "chunk_edges": 512, "k_tile_backward": 64}
    state = check_against_reference(conv, batch, "cpp", tiles)
    assert state.tiles["cpp"] == tiles
    assert {k for name, k in calls if name == "forward"} == {16}
    assert {k for name, k in calls if name == "backward"} == {64}


def test_a_cache_entry_without_todays_tiles_is_retuned(tmp_path, batch):
    cache = tmp_path / "tuning.json"
    spec = ConvSE3(*LAYERS["out"][:2], max_degree=3).specs[0]
    z = torch.randn(40, 32)
    tuner = KernelTuner(cache=cache, trial=False)
    key = tuner.key("cpp", spec, z)
    cache.write_text(json.dumps({key: {"edge_block": 8, "k_tile": 16}}))
    tiles = KernelTuner(cache=cache).tiles("cpp", spec, z)
    assert set(tiles) == set(default_tiles("cpp"))
    assert set(json.loads(cache.read_text())[key]) == set(default_tiles("cpp"))


def test_unreadable_tuning_cache_is_retuned(tmp_path, batch, caplog):
    cache = tmp_path / "tuning.json"
    cache.write_text("{not json")
    spec = ConvSE3(*LAYERS["out"][:2], max_degree=3).specs[0]
    z = torch.randn(40, 32)
    with caplog.at_level("WARNING", logger="se3t.kernel"):
        tiles = KernelTuner(cache=cache).tiles("cpp", spec, z)
    assert "unreadable" in caplog.text
    assert list(json.loads(cache.read_text()).values()) == [tiles]
    assert Path(cache).stat().st_size > 0


def test_deterministic_runs_use_fixed_tiles_not_timed_or_cached_ones(tmp_path, batch):
    """Under torch.use_deterministic_algorithms (train.deterministic) the tiles, which set the
    order of the kernel's sums, are the defaults (and config overrides): never a timed choice,
    which may differ between runs, nor a cached one."""
    cache = tmp_path / "tuning.json"
    spec = ConvSE3(*LAYERS["out"][:2], max_degree=3).specs[0]
    z = torch.randn(40, 32)
    tuner = KernelTuner(cache=cache, trial=False)
    cache.write_text(json.dumps({tuner.key("cpp", spec, z): {**default_tiles("cpp"), "k_tile": 7}}))
    before = cache.read_text()
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        assert KernelTuner(cache=cache).tiles("cpp", spec, z) == default_tiles("cpp")
        over = KernelTuner(overrides={"k_tile_backward": 16}, cache=cache)
        assert over.tiles("cpp", spec, z) == {**default_tiles("cpp"), "k_tile_backward": 16}
        assert "deterministic" in over.report()
    finally:
        torch.use_deterministic_algorithms(saved)
    assert cache.read_text() == before  # nothing timed, nothing written
