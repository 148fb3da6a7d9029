"""Two workflow directories with the same data settings and one basis cache: the second one's
basis rules reuse the store the first one computed (asserted from the receipts and manifests)."""

from __future__ import annotations

import pytest
from wf_helpers import read_json, run_snakemake, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SHARDS = ("0-of-2", "1-of-2")
# small chunks so that the store has several and both shards have work
BASIS = {"basis.chunk_edges": 64, "basis.chunks_per_shard": 1}


def _receipts(workdir):
    return [read_json(workdir / "results" / "basis" / "shards" / f"{s}.json") for s in SHARDS]


def test_second_workflow_reuses_the_basis_store(tmp_path, shared_data):
    cache = tmp_path / "team-cache"
    first, second = tmp_path / "alice", tmp_path / "bob"
    for workdir in (first, second):
        # each workflow builds its own dataset (from one download, to save time): equal content
        # gives an equal fingerprint, hence the same basis key
        workdir.mkdir()
        config = write_config(
            workdir / "config.yaml",
            **{"basis.cache": str(cache), "data.raw_dir": shared_data["data.raw_dir"]},
            **BASIS,
        )
        run_snakemake(workdir, config, "results/basis/manifest.json")

    computed = _receipts(first)
    assert sum(r["chunks_computed"] for r in computed) > 1
    assert all(r["chunks_computed"] > 0 for r in computed), computed  # both shards worked

    reused = _receipts(second)
    for receipt in reused:
        assert receipt["chunks_computed"] == 0, reused
        assert receipt["edges_computed"] == 0, reused
        assert receipt["chunks_reused"] == receipt["chunks_total"] > 0, reused
        assert receipt["complete"] is True, reused  # found sealed: finalized by the first
    manifests = [read_json(w / "results" / "basis" / "manifest.json") for w in (first, second)]
    assert manifests[0]["key"] == manifests[1]["key"]
    assert manifests[0]["store"] == manifests[1]["store"]
    assert manifests[0]["store"].startswith(str(cache))
    assert len(list((cache / "basis").glob("*.zarr"))) == 1
