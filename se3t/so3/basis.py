"""Equivariant kernel bases of the TFN convolution (Thomas et al. 2018; Fuchs et al. 2020, eq. 8).

A TFN kernel from input degree ``d_in`` to output degree ``d_out`` is, per edge ``x``,

    W(x)[m_out, m_in] = sum_{J=|d_in-d_out|}^{d_in+d_out} phi_J(|x|) * B_J(x)[m_out, m_in],
    B_J(x)[m_out, m_in] = sum_{m_J} Q_J[m_out, m_in, m_J] * Y_J(x / |x|)[m_J],

with ``Y_J`` the real spherical harmonics of degree ``J`` and ``Q_J`` the Clebsch–Gordan
(Wigner 3j) tensor coupling ``J`` and ``d_in`` to ``d_out``. The radial profiles ``phi_J`` are
learned (:mod:`se3t.nn.radial`); this module computes only the angular part ``B``, which depends on
the edge direction alone, so it can be precomputed once per dataset (the basis store).

Conventions (kept identical to NVIDIA's SE3Transformer so weights and figures compare):

- ``Y`` = ``e3nn.o3.spherical_harmonics(..., normalize=True, normalization="integral")``, in
  e3nn's real basis (degree 1 components ordered ``(y, z, x)``); degree-``d`` features of the
  model transform with ``e3nn.o3.Irrep(d, (-1)**d).D_from_matrix(R)``.
- ``Q_J = e3nn.o3.wigner_3j(J, d_in, d_out).permute(2, 1, 0)``, i.e. indexed ``[m_out, m_in, m_J]``.
- Equivariance: ``W(R x) = D_out(R) W(x) D_in(R)^T``.

Layouts. ``compute_basis`` returns, for every pair of degrees ``(d_in, d_out)`` with
``0 <= d_in, d_out <= max_degree``, a tensor ``[E, 2*d_in+1, num_freq, 2*d_out+1]`` where
``num_freq = 2*min(d_in, d_out)+1`` indexes ``J`` in increasing order. The flat layout
(``[E, basis_size]``, what the basis store keeps) concatenates, for ``d_in = 0..max_degree``, a
block ``[2*d_in+1, sum_{d_out} num_freq*(2*d_out+1)]`` whose columns run over ``(d_out, J,
m_out)``; a convolution can therefore contract one input degree with all its outputs in one
batched matmul, and each pair's tensor is a strided view of the flat one. Bump
:data:`BASIS_LAYOUT_VERSION` whenever this layout or the conventions change: stored bases are
keyed by it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "BASIS_LAYOUT_VERSION",
    "basis_size",
    "compute_basis",
    "compute_basis_flat",
    "flatten_basis",
    "num_freq",
    "pair_offsets",
    "unflatten_basis",
]

BASIS_LAYOUT_VERSION: int = 1

# edges per block in compute_basis_flat: the [chunk, basis_size] block stays in cache-friendly
# sizes and avoids one huge temporary
_CHUNK = 4096


def _check_degree(max_degree: int) -> None:
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 0:
        raise ValueError(f"max_degree must be a non-negative int, got {max_degree!r}")


def num_freq(d_in: int, d_out: int) -> int:
    """Number of ``J`` (radial frequencies) coupling ``d_in`` and ``d_out``: ``2 min + 1``."""
    return 2 * min(d_in, d_out) + 1


def _in_block_cols(d_in: int, max_degree: int) -> int:
    return sum(num_freq(d_in, d_out) * (2 * d_out + 1) for d_out in range(max_degree + 1))


@functools.cache
def pair_offsets(max_degree: int) -> dict[tuple[int, int], tuple[int, int, int]]:
    """``(d_in, d_out) -> (block_start, block_cols, col_start)`` in the flat layout.

    The block of ``d_in`` occupies flat columns ``[block_start, block_start + (2 d_in + 1) *
    block_cols)``, row-major ``[m_in, col]``; within a row the pair ``(d_in, d_out)`` occupies
    columns ``[col_start, col_start + num_freq * (2 d_out + 1))`` ordered ``(J, m_out)``.
    """
    _check_degree(max_degree)
    out = {}
    start = 0
    for d_in in range(max_degree + 1):
        cols = _in_block_cols(d_in, max_degree)
        col = 0
        for d_out in range(max_degree + 1):
            out[(d_in, d_out)] = (start, cols, col)
            col += num_freq(d_in, d_out) * (2 * d_out + 1)
        start += (2 * d_in + 1) * cols
    return out


def basis_size(max_degree: int) -> int:
    """Number of basis values per edge: ``sum (2 d_in+1)(2 min+1)(2 d_out+1)`` (1092 for 3)."""
    _check_degree(max_degree)
    return sum((2 * d_in + 1) * _in_block_cols(d_in, max_degree) for d_in in range(max_degree + 1))


def _sh(edge_vec: Tensor, max_degree: int) -> Tensor:
    """[E, (2 max_degree + 1)^2] real spherical harmonics of degrees 0..2*max_degree."""
    # deferred: e3nn.o3 imports sympy (seconds); only computing bases needs it
    from e3nn import o3

    return o3.spherical_harmonics(
        list(range(2 * max_degree + 1)), edge_vec, normalize=True, normalization="integral"
    )


def clebsch_gordan(J: int, d_in: int, d_out: int, dtype=torch.float64, device=None) -> Tensor:
    """``Q_J`` as ``[2 d_out+1, 2 d_in+1, 2 J+1]`` (e3nn's Wigner 3j, NVIDIA's index order)."""
    # deferred: e3nn.o3 imports sympy (seconds); only computing bases needs it
    from e3nn import o3

    return (
        o3.wigner_3j(J, d_in, d_out, dtype=torch.float64)
        .permute(2, 1, 0)
        .to(dtype=dtype, device=device)
    )


@functools.cache
def _projection64(max_degree: int) -> Tensor:
    # [num_sh, basis_size] float64 on CPU: column c of the flat basis is Y_all @ P[:, c]
    size = basis_size(max_degree)
    num_sh = (2 * max_degree + 1) ** 2
    P = torch.zeros(num_sh, size, dtype=torch.float64)
    for (d_in, d_out), (start, cols, col) in pair_offsets(max_degree).items():
        nf = num_freq(d_in, d_out)
        for f in range(nf):
            J = abs(d_in - d_out) + f
            Q = clebsch_gordan(J, d_in, d_out)  # [m_out, m_in, m_J]
            for m_in in range(2 * d_in + 1):
                c0 = start + m_in * cols + col + f * (2 * d_out + 1)
                # rows J^2 .. J^2+2J hold Y_J in the concatenated harmonics
                P[J * J : J * J + 2 * J + 1, c0 : c0 + 2 * d_out + 1] = Q[:, m_in, :].T
    return P


_projections: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def projection(max_degree: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The constant ``[num_sh, basis_size]`` matrix, cached per (degree, dtype, device)."""
    key = (max_degree, dtype, torch.device(device))
    P = _projections.get(key)
    if P is None:
        P = _projection64(max_degree).to(dtype=dtype, device=device)
        _projections[key] = P
    return P


def _check_edge_vec(edge_vec: Tensor) -> None:
    if not isinstance(edge_vec, Tensor) or edge_vec.dim() != 2 or edge_vec.shape[1] != 3:
        shape = tuple(edge_vec.shape) if isinstance(edge_vec, Tensor) else type(edge_vec).__name__
        raise ValueError(f"edge_vec must be a [E, 3] tensor, got {shape}")
    if not edge_vec.is_floating_point():
        raise ValueError(f"edge_vec must be floating point, got {edge_vec.dtype}")


def compute_basis_flat(
    edge_vec: Tensor, max_degree: int, dtype: torch.dtype | None = None, out: Tensor | None = None
) -> Tensor:
    """The flat basis ``[E, basis_size(max_degree)]`` of edge vectors ``[E, 3]`` (fast path).

    Spherical harmonics of degrees ``0..2*max_degree`` once per edge, then one dense GEMM with
    the cached constant Clebsch–Gordan projection. Harmonics are evaluated in float32 at least
    (float64 when ``dtype`` is float64); the result has ``dtype`` (default ``edge_vec.dtype``).
    Edges must have non-zero length (a zero vector gives NaN, as its direction is undefined).
    ``out``, if given, is filled and returned (``[E, basis_size]`` of ``dtype``).
    """
    _check_degree(max_degree)
    _check_edge_vec(edge_vec)
    dtype = dtype or edge_vec.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    E = edge_vec.shape[0]
    size = basis_size(max_degree)
    if out is None:
        out = torch.empty(E, size, dtype=dtype, device=edge_vec.device)
    elif out.shape != (E, size) or out.dtype != dtype:
        raise ValueError(f"out must be [{E}, {size}] {dtype}, got {tuple(out.shape)} {out.dtype}")
    P = projection(max_degree, work, edge_vec.device)
    for i in range(0, E, _CHUNK):
        Y = _sh(edge_vec[i : i + _CHUNK].to(work), max_degree)  # [e, num_sh]
        if work == dtype:
            torch.mm(Y, P, out=out[i : i + _CHUNK])
        else:
            out[i : i + _CHUNK] = Y @ P
    return out


def unflatten_basis(flat: Tensor, max_degree: int) -> dict[tuple[int, int], Tensor]:
    """Views ``(d_in, d_out) -> [E, 2 d_in+1, num_freq, 2 d_out+1]`` of a flat basis (no copy)."""
    _check_degree(max_degree)
    size = basis_size(max_degree)
    if not isinstance(flat, Tensor) or flat.dim() != 2 or flat.shape[1] != size:
        shape = tuple(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
        raise ValueError(f"flat basis for max_degree {max_degree} must be [E, {size}], got {shape}")
    E = flat.shape[0]
    out = {}
    for (d_in, d_out), (start, cols, col) in pair_offsets(max_degree).items():
        block = flat[:, start : start + (2 * d_in + 1) * cols].view(E, 2 * d_in + 1, cols)
        nf = num_freq(d_in, d_out)
        out[(d_in, d_out)] = block[:, :, col : col + nf * (2 * d_out + 1)].unflatten(
            2, (nf, 2 * d_out + 1)
        )
    return out


def flatten_basis(basis: dict[tuple[int, int], Tensor], max_degree: int) -> Tensor:
    """Inverse of :func:`unflatten_basis`: ``[E, basis_size]`` (a copy)."""
    _check_degree(max_degree)
    pairs = pair_offsets(max_degree)
    missing = [p for p in pairs if p not in basis]
    if missing:
        raise ValueError(f"basis dict lacks degree pairs {missing} for max_degree {max_degree}")
    first = basis[(0, 0)]
    E = first.shape[0]
    flat = first.new_empty(E, basis_size(max_degree))
    views = unflatten_basis(flat, max_degree)
    for pair, view in views.items():
        if basis[pair].shape != view.shape:
            raise ValueError(
                f"basis[{pair}] must have shape {tuple(view.shape)}, got {tuple(basis[pair].shape)}"
            )
        view.copy_(basis[pair])
    return flat


def compute_basis(
    edge_vec: Tensor, max_degree: int, dtype: torch.dtype | None = None
) -> dict[tuple[int, int], Tensor]:
    """Per-pair bases ``(d_in, d_out) -> [E, 2 d_in+1, num_freq, 2 d_out+1]`` (flat views)."""
    return unflatten_basis(compute_basis_flat(edge_vec, max_degree, dtype), max_degree)
