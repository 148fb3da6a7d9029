"""Shared pytest setup: every test starts from a fixed seed and a float64-capable default."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

# the single-node SLURM cluster (fixture `slurm_cluster`), shared by the training and workflow
# tests; pytest puts this folder on sys.path, so tests/slurm/cluster.py imports as slurm.cluster
pytest_plugins = ["slurm.cluster"]


@pytest.fixture(autouse=True)
def _reseed():
    # each test reseeded, so a failure reproduces alone
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# The few hundred real QM9 molecules committed under tests/data/qm9/ (scripts/
# extract_test_molecules.py): qm9pack CSV rows and the same molecules as figshare-style XYZ.
QM9_TEST_DIR = Path(__file__).parent / "data" / "qm9"


@pytest.fixture(scope="session")
def qm9_store(tmp_path_factory) -> Path:
    """Path of a real dataset store (Zarr) built once per session from the committed molecules
    (275 molecules, bond graphs; under a second). Treat it as read-only."""
    from se3t.data.sources.qm9 import build_qm9

    out = tmp_path_factory.mktemp("qm9_store") / "qm9.zarr"
    build_qm9(QM9_TEST_DIR / "qm9pack", out, processes=1, progress=False)
    return out
