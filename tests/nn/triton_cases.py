"""The Triton evaluation under Triton's interpreter on CPU tensors, against the pairwise
reference, on small real QM9 shapes (the interpreter runs the kernels in numpy: slow, exact).

Run by tests/nn/test_kernel_triton.py in a fresh pytest process with TRITON_INTERPRET=1: in the
main test process e3nn imports torch._inductor, which imports Triton before any test could set
the variable, and Triton then decorates kernels for a GPU."""

import os

import pytest

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/nn/test_kernel_triton.py"
triton = pytest.importorskip("triton")

import torch  # noqa: E402
from test_kernel import check_against_reference, qm9_batch  # noqa: E402

from se3t.nn import ConvSE3  # noqa: E402
from se3t.nn.kernel import KernelState  # noqa: E402
from se3t.so3 import Fiber, compute_basis_flat  # noqa: E402
from se3t.testing import assert_equivariant, edge_inputs, random_features  # noqa: E402


@pytest.fixture(scope="module")
def batch(qm9_store):
    return qm9_batch(qm9_store, n=2)


@pytest.mark.parametrize(
    "fibers",
    [
        (Fiber({0: 3}), Fiber({0: 2, 1: 2, 2: 2, 3: 2}), True),  # first layer
        (Fiber({0: 2, 1: 2, 2: 2, 3: 2}), Fiber({0: 3, 1: 3, 2: 3, 3: 3}), False),  # hidden
        (Fiber({0: 2, 1: 2, 2: 2, 3: 2}), Fiber({0: 4}), True),  # output convolution
    ],
    ids=["first", "hidden", "out"],
)
def test_triton_equals_pairwise_float32(batch, fibers):
    fin, fout, pool = fibers
    conv = ConvSE3(fin, fout, Fiber({0: 4}), max_degree=3, pool=pool, self_interaction=pool)
    tiles = {"chunk_edges": 20, "block_e": 16, "block_k": 8}  # several chunks, ragged tiles
    state = check_against_reference(conv, batch, "triton", tiles, dtype=torch.float32)
    assert state.ran == {"triton": 1}, state


def test_triton_conv_equivariant(batch):
    fin = Fiber({0: 2, 1: 2, 2: 2, 3: 2})
    conv = ConvSE3(fin, fin, Fiber({0: 4}), max_degree=3, self_interaction=True)
    b = batch
    g = b.graph
    _, es = edge_inputs(b)
    es = es.float()

    def fn(pos, feats):
        basis = compute_basis_flat(pos[g.dst] - pos[g.src], 3)
        state = KernelState(basis, "triton")
        out = conv(feats, g, basis, es, state=state)
        assert state.ran == {"triton": 1}
        return out

    assert_equivariant(fn, b.pos.float(), random_features(fin, g.num_nodes, torch.float32))


def test_triton_without_a_gpu_or_interpreter_says_so(batch, monkeypatch):
    from se3t.nn import kernel_triton

    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="triton needs a CUDA device"):
        kernel_triton.check_available(torch.zeros(1))
