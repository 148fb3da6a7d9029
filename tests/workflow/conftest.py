"""Fixtures of the workflow tests (helpers in wf_helpers.py)."""

from __future__ import annotations

import pytest
from wf_helpers import run_snakemake, write_config


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> dict[str, str]:
    """One CI dataset built by the workflow's own data rules, for the tests not about it: the
    overrides that point a config at it (absolute raw_dir and path)."""
    workdir = tmp_path_factory.mktemp("wf-data")
    config = write_config(workdir / "config.yaml")
    run_snakemake(workdir, config, "results/data/qm9.zarr")
    return {
        "data.raw_dir": str(workdir / "resources" / "qm9"),
        "data.path": str(workdir / "results" / "data" / "qm9.zarr"),
    }
