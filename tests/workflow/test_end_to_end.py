"""The whole DAG for real: with profiles/local from a fresh working directory (download included),
and with profiles/slurm against the real multi-node SLURM cluster of tests/slurm/cluster.sh."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from wf_helpers import read_json, read_jsonl, run_snakemake, site_profile, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def _check_outputs(workdir: Path, run: str = "ci") -> None:
    """Every stage's outputs are there and hold what their stage promises."""
    results = workdir / "results"
    run_dir = results / "runs" / run
    manifest = read_json(results / "basis" / "manifest.json")
    assert manifest["key"] and Path(manifest["store"]).is_dir()
    for shard in ("0-of-2", "1-of-2"):
        receipt = read_json(results / "basis" / "shards" / f"{shard}.json")
        assert receipt["key"] == manifest["key"]

    assert (run_dir / "best.pt").stat().st_size > 0
    epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs][-1] == len(epochs) - 1 >= 0

    metrics = read_json(run_dir / "metrics.json")
    assert "homo" in json.dumps(metrics)
    with open(run_dir / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4  # 10 % of 40 molecules: the test split
    for png in ("parity.png", "errors.png", "memory.png", "throughput.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    memory = read_json(run_dir / "memory.json")
    assert memory

    html = (results / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    assert (results / "report.md").stat().st_size > 0


def test_local_profile_whole_dag(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    run_snakemake(tmp_path, config)
    _check_outputs(tmp_path)

    # done means done: the same command again has nothing to do
    again = run_snakemake(tmp_path, config)
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]

    # the rules mark their figures for Snakemake's own report
    run_snakemake(tmp_path, config, "--report", str(tmp_path / "snakemake-report.zip"))
    assert (tmp_path / "snakemake-report.zip").stat().st_size > 0


@pytest.mark.slurm
def test_slurm_profile_whole_dag(tmp_path, shared_data, slurm_cluster):
    config = write_config(tmp_path / "config.yaml", **shared_data)
    profile = site_profile(tmp_path / "profile", slurm_cluster.account, slurm_cluster.partition)
    proc = run_snakemake(tmp_path, config, profile=profile)
    _check_outputs(tmp_path)

    # the CPU rules ran as SLURM jobs (both basis shards, finalize, evaluate, profile), and
    # training went through submitit from the local train rule, as one more SLURM job
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", proc.stdout)
    assert len(job_ids) == 5, proc.stdout[-4000:]
    launched = re.search(
        r"submitted job (\d+) \(slurm\)", (tmp_path / "logs/train/ci.log").read_text()
    )
    assert launched, (tmp_path / "logs/train/ci.log").read_text()[-2000:]
    states = {}
    for job_id in [*job_ids, launched.group(1)]:
        states[job_id] = slurm_cluster.job_state(job_id)
    assert set(states.values()) == {"COMPLETED"}, states
    # across nodes: the CPU rules' jobs landed on more than one node (sacct's NodeList), and
    # training ran as one 2-node job (profiles/slurm: set-resources train nodes: 2)
    cpu_hosts = {h for job_id in job_ids for h in slurm_cluster.job_nodes(job_id)}
    assert len(cpu_hosts) > 1, cpu_hosts
    assert len(slurm_cluster.job_nodes(launched.group(1))) == 2
    assert "world size 2" in (tmp_path / "results/runs/ci/train.log").read_text()

    # done means done: the same command again submits nothing
    again = run_snakemake(tmp_path, config, profile=profile)
    assert "Nothing to be done" in again.stdout, again.stdout[-3000:]
    assert "has been submitted with SLURM jobid" not in again.stdout
