"""Test helpers shared by se3t's suites: random rotations, Wigner D, equivariance checks and
small synthetic molecular batches.

Everything here is exact maths through e3nn (``o3.rand_matrix``, ``Irrep.D_from_matrix``) so a
layer's equivariance test is a few lines::

    assert_equivariant(lambda pos, feats: layer(feats, graph_of(pos)), pos, feats)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from se3t.graph import Batch, Graph
from se3t.so3.basis import compute_basis_flat

__all__ = [
    "expected_fused_param_grads",
    "TOLERANCE",
    "assert_equivariant",
    "digest",
    "edge_inputs",
    "hash_uniform",
    "random_batch",
    "random_features",
    "random_rotation",
    "rotate_features",
    "rounding_tolerance",
    "wigner_D",
]

# (rtol, atol) per dtype, relative to the output's magnitude
TOLERANCE = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-5)}


def rounding_tolerance(dtype: torch.dtype, scale: float = 1.0, ulps: int = 64) -> dict:
    """``rtol`` and ``atol`` (keywords of ``torch.testing.assert_close``) for two computations of
    one value that differ only in rounding: a chunked and a whole matrix product, say. BLAS
    libraries choose their blocking, and so the order of each sum, by the matrix shape and the
    instruction set (MKL on AVX2 and on AVX-512 round differently), so such results agree to a
    few units of the dtype's epsilon, not bit for bit. ``scale``: the values' magnitude, which
    sets the absolute part (a sum near zero keeps the rounding of its large terms)."""
    eps = torch.finfo(dtype).eps
    return {"rtol": ulps * eps, "atol": ulps * eps * float(scale)}


def random_rotation(dtype=torch.float64, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random proper rotation matrix ``[3, 3]`` (det +1)."""
    # deferred: e3nn.o3 imports sympy (seconds)
    from e3nn import o3

    if generator is not None:
        q = torch.randn(4, generator=generator, dtype=torch.float64)
        q = q / q.norm()
        return o3.quaternion_to_matrix(q).to(dtype)
    return o3.rand_matrix(dtype=torch.float64).to(dtype)


def wigner_D(degree: int, R: Tensor) -> Tensor:
    """``[2d+1, 2d+1]`` Wigner D of rotation ``R`` in e3nn's real basis (se3t's convention).

    Solved in float64 from ``Y_d(R x) = D Y_d(x)`` on fixed sample directions (least squares,
    exact to ~1e-14): e3nn's ``Irrep.D_from_matrix`` goes through float32 generators and is only
    accurate to ~1e-7, too coarse for the float64 tolerance.
    """
    # deferred: e3nn.o3 imports sympy (seconds)
    from e3nn import o3

    g = torch.Generator().manual_seed(1234)
    x = torch.randn(4 * (2 * degree + 1) + 8, 3, generator=g, dtype=torch.float64)
    R64 = R.to(torch.float64)
    Y = o3.spherical_harmonics(degree, x, normalize=True)  # [P, 2d+1]
    Y_rot = o3.spherical_harmonics(degree, x @ R64.T, normalize=True)  # = Y @ D^T
    D_T = torch.linalg.lstsq(Y, Y_rot).solution
    return D_T.T.contiguous().to(R.dtype)


def rotate_features(feats: Mapping[int, Tensor], R: Tensor) -> dict[int, Tensor]:
    """``{d: x[..., 2d+1]}`` -> ``{d: x @ D_d(R)^T}``."""
    return {d: x @ wigner_D(d, R).to(x.dtype).T for d, x in feats.items()}


def _close(a: Tensor, b: Tensor, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOLERANCE.get(dtype, (1e-2, 1e-3))
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()) if b.numel() else 0.0, 1.0)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if err > atol * scale + rtol * scale:
        raise AssertionError(
            f"not equivariant: {what} differs by {err:.3g} (scale {scale:.3g}, dtype {dtype})"
        )


def assert_equivariant(
    fn: Callable[[Tensor, dict[int, Tensor]], Tensor | Mapping[int, Tensor]],
    pos: Tensor,
    feats: Mapping[int, Tensor],
    *,
    rotation: Tensor | None = None,
    translate: bool = True,
) -> Tensor | Mapping[int, Tensor]:
    """Check ``fn(R pos + t, D(R) feats) == D(R) fn(pos, feats)`` for a random rotation ``R``.

    ``fn(pos [N,3], feats {d: [N, C, 2d+1]})`` returns features ``{d: [.., C, 2d+1]}`` (checked
    equivariant, degree by degree) or a tensor (checked invariant). With ``translate``, the
    rotated input is also shifted by a random vector (SE(3), not only SO(3)). Tolerance per dtype
    from :data:`TOLERANCE`. Returns the output on the unrotated input.
    """
    dtype = pos.dtype
    R = random_rotation(dtype) if rotation is None else rotation.to(dtype)
    shift = torch.randn(3, dtype=dtype) * 3 if translate else torch.zeros(3, dtype=dtype)
    out = fn(pos, dict(feats))
    out_rot = fn(pos @ R.T + shift, rotate_features(feats, R))
    if isinstance(out, Tensor):
        _close(out_rot, out, dtype, "invariant output")
    else:
        expected = rotate_features(out, R)
        if set(out_rot) != set(expected):
            raise AssertionError(f"output degrees changed: {sorted(out_rot)} vs {sorted(expected)}")
        for d in expected:
            _close(out_rot[d], expected[d], dtype, f"degree {d} output")
    return out


def random_features(fiber, num: int, dtype=torch.float64) -> dict[int, Tensor]:
    """Random ``{d: [num, channels, 2d+1]}`` for a :class:`se3t.so3.Fiber`."""
    return {d: torch.randn(num, c, 2 * d + 1, dtype=dtype) for d, c in fiber.items()}


def random_batch(
    num_graphs: int = 3,
    atoms: tuple[int, int] = (3, 7),
    node_features: int = 6,
    edge_features: int = 4,
    dtype=torch.float64,
    generator: torch.Generator | None = None,
) -> Batch:
    """A synthetic molecular batch: per molecule a random number of atoms in ``atoms``, random
    positions (≈ 1.5 Å apart), a connected random edge set (a chain plus random chords, both
    directions), one-hot-like node/edge features and random targets. Edges are grouped by
    molecule, as ``se3t.data.collate`` produces them."""
    g = generator
    pos, node_graph, src, dst, efeat = [], [], [], [], []
    offset = 0
    for b in range(num_graphs):
        n = int(torch.randint(atoms[0], atoms[1] + 1, (1,), generator=g))
        p = torch.randn(n, 3, generator=g, dtype=torch.float64) * 1.5
        pairs = {(i, i + 1) for i in range(n - 1)}
        for _ in range(n // 2):
            i, j = (int(v) for v in torch.randint(0, n, (2,), generator=g))
            if i != j:
                pairs.add((min(i, j), max(i, j)))
        for i, j in sorted(pairs):
            t = int(torch.randint(0, edge_features, (1,), generator=g))
            for a, c in ((i, j), (j, i)):
                src.append(a + offset)
                dst.append(c + offset)
                efeat.append(t)
        pos.append(p)
        node_graph += [b] * n
        offset += n
    N = offset
    species = torch.randint(0, 5, (N,), generator=g)
    nf = torch.zeros(N, node_features, dtype=dtype)
    nf[torch.arange(N), species % node_features] = 1.0
    if node_features > 5:
        nf[:, 5] = torch.tensor([1.0, 6.0, 7.0, 8.0, 9.0], dtype=dtype)[species] / 9.0
    ef = torch.nn.functional.one_hot(torch.tensor(efeat), edge_features).to(dtype)
    graph = Graph(
        src=torch.tensor(src, dtype=torch.long),
        dst=torch.tensor(dst, dtype=torch.long),
        node_graph=torch.tensor(node_graph, dtype=torch.long),
        num_nodes=N,
        num_graphs=num_graphs,
    )
    return Batch(
        graph=graph,
        pos=torch.cat(pos).to(dtype),
        node_feats=nf,
        edge_feats=ef,
        y=torch.randn(num_graphs, 1, generator=g, dtype=dtype),
    )


def edge_inputs(batch: Batch, max_degree: int = 3) -> tuple[Tensor, Tensor]:
    """``(flat basis [E, basis_size], edge scalars [E, F_edge + 1])`` of a batch, as
    ``SE3TransformerPooled`` builds them (edge features with the edge length appended)."""
    scalars = torch.cat([batch.edge_feats, batch.edge_vec.norm(dim=1, keepdim=True)], 1)
    return compute_basis_flat(batch.edge_vec, max_degree), scalars


def expected_fused_param_grads(conv, ref) -> dict[str, Tensor]:
    """Gradients of a fused ``ConvSE3``'s parameters assembled from those of its pairwise copy
    ``ref`` (:func:`se3t.nn.conv.pairwise_reference`, after ``backward``): hidden layers summed
    over the pairs of each group, last-layer rows taken pair by pair."""
    expected = {}
    pairs = [(s.ins[0][0], s.outs[0][0]) for s in ref.specs]
    for g, (spec, radial) in enumerate(zip(conv.specs, conv.radial, strict=True)):
        last = torch.zeros_like(radial.last.weight)
        hidden = {n: torch.zeros_like(p) for n, p in radial.net.named_parameters()}
        for k, (di, do) in enumerate(pairs):
            if (di, do) not in spec.w_off:
                continue
            last[spec.pair_rows(di, do)] = ref.radial[k].last.weight.grad
            for n, p in ref.radial[k].net.named_parameters():
                hidden[n] += p.grad
        expected[f"radial.{g}.last.weight"] = last
        for n, v in hidden.items():
            expected[f"radial.{g}.net.{n}"] = v
    for n, p in ref.named_parameters():
        if n.startswith("self_weights"):
            expected[n] = p.grad
    return expected


def hash_uniform(shape, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Values in [-1, 1) that every torch version computes bit for bit: an integer hash of
    ``(seed, index)`` (multiplies, xor-shifts, masks in int64) scaled by a power of two. Fixtures
    made by another project in its own environment (another torch) regenerate their inputs
    and weights from a seed with it instead of storing them."""
    shape = tuple(shape)
    n = 1
    for s in shape:
        n *= int(s)
    mask = 0xFFFFFFFF
    x = (torch.arange(n, dtype=torch.int64) * 2654435761 + (seed * 40503 + 12345)) & mask
    for _ in range(3):
        x = ((x ^ (x >> 16)) * 73244475) & mask
    x = x ^ (x >> 16)
    return (x.to(torch.float64) * 2.0**-31 - 1.0).reshape(shape).to(dtype)


def digest(t: Tensor, limit: int = 4096, probes: int = 8) -> Tensor:
    """``t`` itself when it has at most ``limit`` elements, else ``probes`` random-sign sums
    of its rows (``[probes, *t.shape[1:]]``, signs from :func:`hash_uniform`): a compact
    stand-in for a large reference tensor whose comparison measures the relative L2 error."""
    if t.numel() <= limit:
        return t.detach().clone()
    rows = t.reshape(t.shape[0], -1)
    signs = hash_uniform((probes, t.shape[0]), seed=7).sign().to(rows.dtype)
    return (signs @ rows.detach()).reshape(probes, *t.shape[1:])
