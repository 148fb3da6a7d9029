import pytest
import torch

from se3t.so3 import Fiber


def test_fiber_basics():
    f = Fiber.create(4, 32)
    assert f.degrees == [0, 1, 2, 3] and f.channels == [32] * 4
    assert f.num_features == 32 * 16 and f.uniform_channels == 32 and f.max_degree == 3
    g = Fiber({1: 2, 0: 3})
    assert g.degrees == [0, 1] and (f + g)[0] == 35 and (g + Fiber({2: 1}))[2] == 1
    assert g.uniform_channels is None
    assert f.scaled(2)[3] == 16
    assert repr(g) == "Fiber({0: 3, 1: 2})"
    assert Fiber(g) == g and hash(Fiber(g)) == hash(g)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({-1: 3}, "degree must be an int >= 0"),
        ({0: 0}, "channels must be an int >= 1"),
        ({0: 1.5}, "channels"),
        ({}, "at least one"),
        ([(0, 1), (0, 2)], "given twice"),
        (5, "expected a mapping"),
    ],
)
def test_bad_fiber_names_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        Fiber(bad)


def test_check_and_scaled_errors():
    f = Fiber({0: 2, 1: 1})
    f.check({0: torch.zeros(4, 2, 1), 1: torch.zeros(4, 1, 3)})
    with pytest.raises(ValueError, match=r"x\[1\]: expected shape \[4, 1, 3\], got \[4, 1, 5\]"):
        f.check({0: torch.zeros(4, 2, 1), 1: torch.zeros(4, 1, 5)}, "x")
    with pytest.raises(ValueError, match="not divisible by 2"):
        Fiber({0: 3}).scaled(2)
    with pytest.raises(ValueError, match="num_degrees"):
        Fiber.create(0, 4)
