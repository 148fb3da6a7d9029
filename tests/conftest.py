"""Shared pytest setup: every test starts from a fixed seed and a float64-capable default."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _reseed():
    # each test reseeded, so a failure reproduces alone
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
