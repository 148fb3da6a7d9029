"""The whole local workflow on a dataset that is not QM9: config/example-sdf.yaml (24 real c-Met
ligands from an SDF file, a measured binding free energy, scaffold split), with a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from wf_helpers import REPO, run_snakemake

pytestmark = pytest.mark.workflow


def test_local_workflow_on_an_sdf_dataset(tmp_path):
    cfg = yaml.safe_load((REPO / "config" / "example-sdf.yaml").read_text())
    cfg["data"]["source"] = str(REPO / "examples" / "molecules" / "cmet_ligands.sdf")
    cfg["model"].update(num_layers=1, channels=4, heads=1, radial_hidden=8)
    cfg["train"].update(epochs=2, device="cpu")
    cfg["launch"]["cpus_per_task"] = 1
    cfg["eval"].update(profile_steps=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_snakemake(tmp_path, config)

    results = tmp_path / "results"
    metrics = json.loads((results / "runs" / "cmet" / "metrics.json").read_text())
    assert metrics["dataset_source"] == "sdf" and metrics["targets"] == ["r_exp_dg"]
    assert metrics["metrics"]["r_exp_dg"]["unit"] == "kcal/mol"
    html = (results / "report.html").read_text()
    assert "r_exp_dg [kcal/mol]" in html and "(sdf)" in html
    raw = json.loads((tmp_path / "resources" / "cmet" / "SOURCE.json").read_text())
    assert raw["source"] == "sdf" and "cmet_ligands.sdf" in raw["files"]
    assert (results / "runs" / "cmet" / "memory.json").is_file()  # se3t profile on its batches
