"""Block layouts of the flat basis that the degree-concatenated fused convolution reads.

For a set of input degrees ``D_in`` and an output degree ``d_out``, the block basis is

    Bb[e, (m_out, d_in', J), (d_in, m_in)] = B[e, d_in, m_in, J, m_out]  if d_in == d_in'
                                           = 0                             otherwise,

a ``[E, (2 d_out + 1) * sum_{d_in} num_freq(d_in, d_out), sum (2 d_in + 1)]`` matrix per edge.
With node features of all input degrees concatenated along ``m`` and stored channels-last
(``[N, sum (2 d_in + 1), C]``), one batched matmul contracts every input degree with its basis
at once and yields ``T[e, m_out, (d_in, J, c_in)]`` in the layout the radial contraction reads
without a copy. The zero blocks cost a few extra multiplications (small next to the radial
weights) and save one small matmul per degree pair. The blocks of several output degrees are
stacked along the rows (``block_basis(flat, D_in, (d_out, ...))``), so ``T`` of a whole fused
layer is ONE batched matmul. Values are the flat basis's, rearranged:
nothing here changes what the basis store keeps (see :mod:`se3t.so3.basis`).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from se3t.so3.basis import basis_size, num_freq, pair_offsets

__all__ = ["block_basis", "block_basis_index", "block_column_ranges", "block_shape"]


def block_shape(in_degrees: tuple[int, ...], d_out: int) -> tuple[int, int]:
    """``(rows, cols)`` of the block basis: ``(2 d_out + 1) sum num_freq``, ``sum (2 d_in + 1)``."""
    rows = sum(num_freq(d, d_out) for d in in_degrees) * (2 * d_out + 1)
    cols = sum(2 * d + 1 for d in in_degrees)
    return rows, cols


@functools.cache
def block_basis_index(
    in_degrees: tuple[int, ...], out_degrees: tuple[int, ...], max_degree: int
) -> Tensor:
    """Flat-basis column of every entry of the stacked block basis, ``basis_size(max_degree)``
    for the zeros (a padding column appended to the flat basis), as a ``[rows * cols]`` long
    tensor; rows are the blocks of ``out_degrees`` in order."""
    if (
        not in_degrees
        or not out_degrees
        or any(d > max_degree for d in (*in_degrees, *out_degrees))
    ):
        raise ValueError(
            f"block basis: degrees {in_degrees} -> {out_degrees} must be non-empty and <= "
            f"max_degree {max_degree}"
        )
    offsets = pair_offsets(max_degree)
    blocks = []
    for d_out in out_degrees:
        rows, cols = block_shape(in_degrees, d_out)
        m_out = 2 * d_out + 1
        idx = torch.full((m_out, rows // m_out, cols), basis_size(max_degree), dtype=torch.long)
        j0 = c0 = 0
        for d_in in in_degrees:
            start, block_cols, col = offsets[(d_in, d_out)]
            nf, m_in = num_freq(d_in, d_out), 2 * d_in + 1
            # flat column of (m_in, J, m_out): start + m_in * block_cols + col + J * m_out_size
            # + m_out
            mi = torch.arange(m_in).view(1, 1, m_in)
            j = torch.arange(nf).view(1, nf, 1)
            mo = torch.arange(m_out).view(m_out, 1, 1)
            idx[:, j0 : j0 + nf, c0 : c0 + m_in] = start + mi * block_cols + col + j * m_out + mo
            j0, c0 = j0 + nf, c0 + m_in
        blocks.append(idx.view(rows, cols))
    return torch.cat(blocks).flatten()


@functools.cache
def block_column_ranges(
    in_degrees: tuple[int, ...], out_degrees: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """``(lo, hi)``, each ``[rows]``: the columns ``[lo, hi)`` of the stacked block basis
    where a row can be nonzero (the ``2 d_in + 1`` columns of the row's input degree; the
    rest are the padding column's zeros), rows in :func:`block_basis_index`'s order."""
    lo, hi = [], []
    for d_out in out_degrees:
        for _ in range(2 * d_out + 1):
            c0 = 0
            for d_in in in_degrees:
                m_in = 2 * d_in + 1
                lo += [c0] * num_freq(d_in, d_out)
                hi += [c0 + m_in] * num_freq(d_in, d_out)
                c0 += m_in
    return torch.tensor(lo, dtype=torch.long), torch.tensor(hi, dtype=torch.long)


@functools.cache
def _index_on(in_degrees, out_degrees, max_degree: int, device: str) -> Tensor:
    # one copy per device: a host-to-GPU copy per call would synchronize every layer
    return block_basis_index(in_degrees, out_degrees, max_degree).to(device)


def block_basis(
    flat: Tensor, in_degrees: tuple[int, ...], out_degrees: tuple[int, ...], max_degree: int
) -> Tensor:
    """``[E, rows, cols]`` stacked block basis of ``flat [E, basis_size(max_degree)]``: the
    blocks of ``out_degrees`` one after the other along the rows (differentiable: gradients
    flow back to ``flat``)."""
    size = basis_size(max_degree)
    if flat.dim() != 2 or flat.shape[1] != size:
        raise ValueError(
            f"block basis: expected a flat basis [E, {size}] (max_degree {max_degree}), "
            f"got {list(flat.shape)}"
        )
    in_degrees, out_degrees = tuple(in_degrees), tuple(out_degrees)
    idx = _index_on(in_degrees, out_degrees, max_degree, str(flat.device))
    padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
    cols = block_shape(in_degrees, out_degrees[0])[1]  # the same for every output degree
    # rows spelled out: with no edges (E = 0) a -1 would be ambiguous
    return padded.index_select(1, idx).view(flat.shape[0], idx.numel() // cols, cols)
