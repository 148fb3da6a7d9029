import pytest
import torch
from e3nn import o3

from se3t.testing import (
    assert_equivariant,
    random_batch,
    random_rotation,
    rotate_features,
    rounding_tolerance,
    wigner_D,
)


def test_wigner_D_is_exact_representation():
    R1, R2 = random_rotation(), random_rotation()
    assert torch.allclose(R1 @ R1.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    for d in range(5):
        D = wigner_D(d, R1)
        torch.testing.assert_close(
            D @ D.T, torch.eye(2 * d + 1, dtype=torch.float64), atol=1e-12, rtol=0
        )
        torch.testing.assert_close(wigner_D(d, R1 @ R2), D @ wigner_D(d, R2), atol=1e-12, rtol=0)
        x = torch.randn(4, 3, dtype=torch.float64)
        torch.testing.assert_close(
            o3.spherical_harmonics(d, x @ R1.T, True),
            o3.spherical_harmonics(d, x, True) @ D.T,
            atol=1e-12,
            rtol=0,
        )


def test_assert_equivariant_catches_a_broken_layer():
    pos = torch.randn(5, 3, dtype=torch.float64)
    feats = {1: torch.randn(5, 2, 3, dtype=torch.float64)}
    assert_equivariant(lambda p, f: {1: 2 * f[1]}, pos, feats)  # equivariant
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(lambda p, f: {1: f[1] + 1.0}, pos, feats)  # a bias on a vector
    with pytest.raises(AssertionError, match="invariant"):
        assert_equivariant(lambda p, f: p.sum(), pos, feats)  # depends on absolute position
    rotated = rotate_features(feats, random_rotation())
    assert rotated[1].shape == feats[1].shape


def test_random_batch_is_well_formed():
    b = random_batch(num_graphs=4)
    g = b.graph
    assert g.num_graphs == 4 and b.pos.shape == (g.num_nodes, 3)
    assert torch.all(g.node_graph[g.src] == g.node_graph[g.dst])  # edges stay within a molecule
    assert torch.all(torch.diff(g.node_graph[g.dst]) >= 0)  # grouped by molecule
    assert b.edge_feats.shape == (g.num_edges, 4) and b.node_feats.shape == (g.num_nodes, 6)


def test_rounding_tolerance_is_a_few_epsilons_of_the_dtype():
    tol = rounding_tolerance(torch.float64, scale=2.0)
    assert tol["rtol"] == 64 * torch.finfo(torch.float64).eps
    assert tol["atol"] == 2.0 * tol["rtol"]
    assert rounding_tolerance(torch.float32)["rtol"] > 1e6 * tol["rtol"]
    # a reordered sum passes; a real error (1e-12 on values near 1) does not
    x = torch.randn(1000, dtype=torch.float64)
    torch.testing.assert_close(
        x.sum(), x.flip(0).sum(), **rounding_tolerance(x.dtype, x.abs().sum())
    )
    with pytest.raises(AssertionError):
        torch.testing.assert_close(x[0] + 1e-12, x[0], **rounding_tolerance(x.dtype, 1.0))
