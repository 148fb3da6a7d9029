"""The C++ kernel's library: built for this CPU, run on torch's own OpenMP team, its narrower
vector builds computing what the host build computes, its entry points checking their inputs."""

import ctypes
import platform
from pathlib import Path

import pytest
import torch

from se3t.nn import kernel_cpu, kernel_cpu_library
from se3t.nn.kernel import KernelSpec
from se3t.so3.blocks import block_column_ranges

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def test_cpp_kernel_was_compiled_for_this_cpu():
    kernel = kernel_cpu_library.extension()
    assert kernel is not None, kernel_cpu_library.build_info()  # CI installs g++ (scripts/setup.sh)
    info = kernel_cpu_library.build_info()
    assert info["status"] in ("built", "loaded")
    flags = kernel_cpu_library.cpu_description()[1].split()
    assert info["vector_bytes"] == (64 if "avx512f" in flags else 32 if "avx" in flags else 16)


def test_cpp_kernel_threads_are_torchs_openmp_team():
    # torch's idle OpenMP workers spin after each op: the kernel must run on them, not on
    # threads of its own (or a second OpenMP runtime) that would share the cores with them
    kernel = kernel_cpu_library.extension()
    runtimes = kernel_cpu_library.openmp_runtimes()
    assert runtimes, "torch runs on an OpenMP runtime; none mapped?"
    if all(Path(r).name.startswith("libgomp") for r in runtimes):
        assert kernel.threading == "openmp", kernel_cpu_library.build_info()
        assert kernel_cpu_library.build_info()["threading"] == "openmp"
    assert len(runtimes) == 1, runtimes  # loading the kernel added no second runtime


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_weight_packing_is_a_gather_and_transpose(dtype):
    kernel = kernel_cpu_library.extension()
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(53, 7, generator=g, dtype=dtype)  # 53 rows: a ragged last row block
    perm = torch.randperm(53, generator=g)[:37]
    packed = kernel.pack(weight, perm)
    assert torch.equal(packed, weight[perm].t())
    out = torch.full_like(weight, float("nan"))
    kernel.unpack(packed, perm, out)
    assert torch.equal(out[perm], weight[perm])
    assert torch.isnan(out[torch.ones(53, dtype=torch.bool).index_fill_(0, perm, False)]).all()


@pytest.mark.parametrize(
    ("march", "needs", "vector_bytes"), [("x86-64-v3", "avx2", 32), ("x86-64", "sse2", 16)]
)
def test_narrower_vector_builds_compute_the_same(tmp_path, march, needs, vector_bytes):
    # the AVX2 (32-byte) and SSE (16-byte) paths of the kernel, built and run on this machine
    # whatever its own width, against the host build (itself tested against the reference)
    flags = kernel_cpu_library.cpu_description()[1].split()
    if needs not in flags or platform.machine() != "x86_64":
        pytest.skip(f"this CPU cannot run {march} code")
    native = kernel_cpu_library.extension()
    lib = tmp_path / f"tfn_{march}.so"
    kernel_cpu_library.build(kernel_cpu_library.find_compiler(), native.threading, lib, march=march)
    narrow = kernel_cpu_library.CpuKernel(ctypes.CDLL(str(lib)))
    assert narrow.vector_bytes == vector_bytes
    spec = KernelSpec([(d, 5) for d in range(4)], [(0, 7), (1, 5), (2, 3), (3, 9)], 3)
    for dtype in (torch.float32, torch.float64):
        results = []
        for kernel in (native, narrow):
            torch.manual_seed(0)  # the same problem for both builds
            results.append(_run_trial(kernel, spec, dtype))
        # float64 says the paths compute the same; float32 only that they round alike (sums
        # over other lane counts: cancellation leaves a few 1e-5 on values of order 1)
        tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, **tol)


def _run_trial(kernel, spec, dtype):
    # forward and backward of kernel_cpu.trial_problem's problem, run by ``kernel``
    E, H, C = 37, 6, 5
    U = (E + 1) // 2
    z = torch.randn(U, H, dtype=dtype)
    off = torch.arange(0, 2 * U + 1, 2).clamp_(max=E)
    rows = torch.randperm(E)
    ni, nb = 16, max(r1 for _, r1 in spec.block_rows.values())
    lo, hi = block_column_ranges(spec.in_degrees, spec.out_degrees)
    block = torch.randn(E, nb, ni, dtype=dtype)
    x = torch.randn(11, ni, C, dtype=dtype)
    src = torch.randint(0, 11, (E,))
    desc = kernel_cpu.degrees(spec, C)
    wts = [torch.randn(H, K * co, dtype=dtype) for _, _, K, co in desc.tolist()]
    outs = [torch.empty(E, M, co, dtype=dtype) for _, M, _, co in desc.tolist()]
    kernel.forward(z, block, lo, hi, x, src, off, rows, desc, wts, outs, 3, 5)
    T = kernel.basis_x(block, x, src, lo, hi, torch.empty(E, nb, C, dtype=dtype))
    dT, gz = torch.zeros_like(T), torch.zeros_like(z)
    dws = []
    for (r0, M, K, co), w in zip(desc.tolist(), wts, strict=True):
        grad = torch.randn(E, M, co, dtype=dtype)
        t, dt = (a[:, r0 : r0 + M * K // C].view(E, M, K) for a in (T, dT))
        dws.append(torch.zeros(H, K * co, dtype=dtype))
        kernel.backward(z, w, t, off, rows, grad, dt, dws[-1], gz, 3)
    return [*outs, T, dT, gz, *dws, kernel.basis_t(block, dT, lo, hi)]


def test_cpp_weight_packing_refuses_rows_out_of_range():
    kernel = kernel_cpu_library.extension()
    weight = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="perm must index the 5 weight rows"):
        kernel.pack(weight, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="contiguous"):
        kernel.pack(weight.t(), torch.tensor([0]))
    with pytest.raises(ValueError, match="expected a contiguous"):
        kernel.unpack(torch.zeros(3, 4), torch.tensor([0, 1]), weight)
