"""The masked per-target error of the training loss (se3t.train.loss)."""

from __future__ import annotations

import torch

from se3t.train.loss import masked_abs_error


def test_without_missing_values_it_is_the_plain_error():
    pred = torch.randn(7, 3, requires_grad=True)
    y = torch.randn(7, 3)
    err, present = masked_abs_error(pred, y)
    # same operations on the same values: bit-identical, so QM9 training is unchanged
    assert torch.equal(err, (pred - y).abs()) and bool(present.all())


def test_missing_values_give_no_error_and_no_gradient():
    pred = torch.randn(6, 2, requires_grad=True)
    y = torch.randn(6, 2)
    y[1, 0] = y[4, 1] = float("nan")
    err, present = masked_abs_error(pred, y)
    assert err[1, 0] == 0 and err[4, 1] == 0 and int(present.sum()) == 10
    err.sum().backward()
    g = pred.grad
    assert torch.isfinite(g).all() and g[1, 0] == 0 and g[4, 1] == 0
    expected = torch.sign(pred.detach() - y)
    mask = ~torch.isnan(y)
    assert torch.equal(g[mask], expected[mask])
