import pytest
import torch
from e3nn import o3

from se3t.so3 import (
    BASIS_LAYOUT_VERSION,
    basis_size,
    compute_basis,
    compute_basis_flat,
    flatten_basis,
    unflatten_basis,
)
from se3t.so3.basis import num_freq
from se3t.testing import random_rotation, rounding_tolerance, wigner_D


def reference_basis(edge_vec, max_degree):
    """Straight from the definition: B_J[m_out, m_in] = sum_mJ Q_J[m_out, m_in, mJ] Y_J[mJ]."""
    out = {}
    for d_in in range(max_degree + 1):
        for d_out in range(max_degree + 1):
            per_J = []
            for J in range(abs(d_in - d_out), d_in + d_out + 1):
                Y = o3.spherical_harmonics(J, edge_vec, normalize=True, normalization="integral")
                Q = o3.wigner_3j(J, d_in, d_out, dtype=torch.float64).permute(2, 1, 0)
                per_J.append(torch.einsum("oij,ej->eio", Q, Y))  # [E, m_in, m_out]
            out[(d_in, d_out)] = torch.stack(per_J, dim=2)  # [E, m_in, J, m_out]
    return out


def test_sizes_and_version():
    assert basis_size(3) == 1092
    assert basis_size(0) == 1
    assert isinstance(BASIS_LAYOUT_VERSION, int)
    x = torch.randn(5, 3, dtype=torch.float64)
    for L in range(4):
        b = compute_basis(x, L)
        assert set(b) == {(i, o) for i in range(L + 1) for o in range(L + 1)}
        assert sum(v[0].numel() for v in b.values()) == basis_size(L)
        for (i, o), v in b.items():
            assert v.shape == (5, 2 * i + 1, num_freq(i, o), 2 * o + 1)


@pytest.mark.parametrize("max_degree", [0, 1, 2, 3])
def test_matches_reference_float64(max_degree):
    x = torch.randn(40, 3, dtype=torch.float64) * 2
    got = compute_basis(x, max_degree)
    ref = reference_basis(x, max_degree)
    for pair in ref:
        torch.testing.assert_close(got[pair], ref[pair], rtol=1e-12, atol=1e-12)


def test_float32_close_to_float64():
    x = torch.randn(300, 3, dtype=torch.float64)
    b64 = compute_basis_flat(x, 3)
    b32 = compute_basis_flat(x.float(), 3)
    assert b32.dtype == torch.float32
    torch.testing.assert_close(b32.double(), b64, rtol=1e-5, atol=1e-5)
    b16 = compute_basis_flat(x.float(), 3, dtype=torch.float16)
    assert b16.dtype == torch.float16
    torch.testing.assert_close(b16.double(), b64, rtol=2e-3, atol=2e-3)


def test_chunks_and_out_argument(monkeypatch):
    import se3t.so3.basis as basis_mod

    x = torch.randn(25, 3, dtype=torch.float64)
    whole = compute_basis_flat(x, 2)
    monkeypatch.setattr(basis_mod, "_CHUNK", 7)
    out = torch.empty(25, basis_size(2), dtype=torch.float64)
    assert compute_basis_flat(x, 2, out=out) is out
    # chunks of 7 rows are other GEMM shapes than 25 rows: the same sums, other rounding
    torch.testing.assert_close(out, whole, **rounding_tolerance(whole.dtype, whole.abs().max()))


def test_kernel_is_equivariant():
    # B_J(R x) = D_out(R) B_J(x) D_in(R)^T for every pair and J
    x = torch.randn(30, 3, dtype=torch.float64)
    R = random_rotation()
    b = compute_basis(x, 3)
    b_rot = compute_basis(x @ R.T, 3)
    for (i, o), v in b.items():
        expected = torch.einsum("ab,eb...->ea...", wigner_D(i, R), v)  # rotate m_in
        expected = expected @ wigner_D(o, R).T  # rotate m_out (last axis)
        torch.testing.assert_close(b_rot[(i, o)], expected, rtol=1e-10, atol=1e-10)


def test_scale_invariant():
    x = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(compute_basis_flat(3.7 * x, 3), compute_basis_flat(x, 3))


def test_flatten_unflatten_roundtrip_views():
    x = torch.randn(11, 3, dtype=torch.float64)
    flat = compute_basis_flat(x, 3)
    views = unflatten_basis(flat, 3)
    for v in views.values():
        assert v.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    # a copy through views, no arithmetic: identical on every machine
    torch.testing.assert_close(flatten_basis(views, 3), flat, rtol=0, atol=0)
    # each flat column belongs to exactly one pair view
    marker = torch.zeros(1, basis_size(3))
    for v in unflatten_basis(marker, 3).values():
        v += 1
    assert torch.all(marker == 1)


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="edge_vec"):
        compute_basis_flat(torch.randn(4, 2), 3)
    with pytest.raises(ValueError, match="max_degree"):
        compute_basis_flat(torch.randn(4, 3), -1)
    with pytest.raises(ValueError, match="1092"):
        unflatten_basis(torch.randn(4, 100), 3)
    with pytest.raises(ValueError, match="lacks"):
        flatten_basis({(0, 0): torch.randn(3, 1, 1, 1)}, 1)
