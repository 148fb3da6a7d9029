import pytest
import torch

from se3t.so3 import compute_basis_flat
from se3t.so3.basis import num_freq, unflatten_basis
from se3t.so3.blocks import block_basis, block_column_ranges, block_shape


@pytest.mark.parametrize(
    ("ins", "outs"), [((0, 1, 2, 3), (0, 1, 2, 3)), ((1, 3), (2,)), ((0,), (3, 0))]
)
def test_block_basis_is_the_flat_basis_rearranged(ins, outs):
    vec = torch.randn(11, 3, dtype=torch.float64)
    flat = compute_basis_flat(vec, 3)
    pairs = unflatten_basis(flat, 3)  # (d_in, d_out) -> [E, 2 d_in + 1, nf, 2 d_out + 1]
    block = block_basis(flat, ins, outs, 3)
    rows = sum(block_shape(ins, do)[0] for do in outs)
    assert block.shape == (11, rows, sum(2 * d + 1 for d in ins))
    expected = torch.zeros_like(block)
    r0 = 0
    for do in outs:
        m = 2 * do + 1
        nf_all = sum(num_freq(di, do) for di in ins)
        view = expected[:, r0 : r0 + m * nf_all].view(11, m, nf_all, -1)
        j0 = c0 = 0
        for di in ins:
            nf = num_freq(di, do)
            # [E, m_in, J, m_out] -> [E, m_out, J, m_in]
            view[:, :, j0 : j0 + nf, c0 : c0 + 2 * di + 1] = pairs[(di, do)].permute(0, 3, 2, 1)
            j0, c0 = j0 + nf, c0 + 2 * di + 1
        r0 += m * nf_all
    assert torch.equal(block, expected)  # both are the same copies (permutes), no arithmetic


@pytest.mark.parametrize(
    ("ins", "outs"), [((0, 1, 2, 3), (0, 1, 2, 3)), ((1, 3), (2,)), ((0,), (3, 0))]
)
def test_block_column_ranges_hold_every_nonzero(ins, outs):
    flat = compute_basis_flat(torch.randn(11, 3, dtype=torch.float64), 3)
    block = block_basis(flat, ins, outs, 3)
    lo, hi = block_column_ranges(ins, outs)
    cols = torch.arange(block.shape[2])
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])  # [rows, cols]
    assert inside.shape == block.shape[1:]
    assert (block[:, ~inside] == 0).all()
    assert (block[:, inside] != 0).float().mean() > 0.5  # the ranges are not wider than needed


def test_block_basis_gradient_reaches_the_flat_basis():
    flat = compute_basis_flat(torch.randn(5, 3, dtype=torch.float64), 2).requires_grad_(True)
    block = block_basis(flat, (0, 1, 2), (1, 2), 2)
    (block * torch.randn_like(block)).sum().backward()
    assert flat.grad is not None and flat.grad.abs().sum() > 0


def test_block_basis_bad_input_names_it():
    flat = compute_basis_flat(torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match="flat basis"):
        block_basis(flat[:, :-1], (0, 1), (1,), 2)
    with pytest.raises(ValueError, match="max_degree"):
        block_basis(flat, (0, 3), (1,), 2)
