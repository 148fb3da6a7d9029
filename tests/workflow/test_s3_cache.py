"""The workflow with an S3 basis cache (a real S3 server on loopback: moto_server): the first
workflow computes the store, publishes it and trains from it; a second workflow elsewhere (its
own local cache, as at another site) with the same data settings downloads the store instead of
computing it (receipts: 0 chunks computed) and trains from the downloaded copy."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from s3_server import S3Server, keys
from wf_helpers import read_json, run_snakemake, site_profile, write_config

pytest.importorskip("s3fs")
pytest.importorskip("moto")

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

SHARDS = ("0-of-2", "1-of-2")
BASIS = {"basis.chunk_edges": 64, "basis.chunks_per_shard": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield srv
    srv.stop()


def test_second_site_downloads_the_published_store(tmp_path, shared_data, server, monkeypatch):
    _two_sites(tmp_path, shared_data, server, monkeypatch, profile="local")


@pytest.mark.slurm
def test_slurm_profile_with_s3_cache(tmp_path, shared_data, monkeypatch, slurm_cluster):
    """Both sites run `snakemake --profile profiles/slurm`: every basis rule is a SLURM job on a
    node in its own network namespace, talking to the object store at the bridge address (the
    jobs inherit the AWS variables as any SLURM job does)."""
    conf = Path(slurm_cluster.conf).read_text()
    bridge = re.search(r"^SlurmctldHost=[^(]*\(([0-9.]+)\)", conf, re.M)
    host = bridge.group(1) if bridge else "127.0.0.1"  # single-node cluster: loopback
    srv = S3Server(tmp_path / "moto.log", host=host)
    try:
        profile = site_profile(tmp_path / "profile", slurm_cluster.account, slurm_cluster.partition)
        _two_sites(tmp_path, shared_data, srv, monkeypatch, profile=profile)
    finally:
        srv.stop()


def _two_sites(tmp_path, shared_data, server, monkeypatch, profile):
    for k, v in server.env.items():  # credentials in the standard place, inherited by the jobs
        monkeypatch.setenv(k, v)
    bucket = server.make_bucket(f"se3t-wf-{uuid.uuid4().hex[:8]}")
    cache = f"s3://{bucket}/team"
    first, second = tmp_path / "site-a", tmp_path / "site-b"
    for workdir in (first, second):
        workdir.mkdir()
        config = write_config(
            workdir / "config.yaml",
            **{
                "basis.cache": cache,
                "basis.local_cache": str(workdir / "node-cache"),
                "basis.storage_options": {"endpoint_url": server.endpoint},
                "basis.use": "store",
                "data.raw_dir": shared_data["data.raw_dir"],
            },
            **BASIS,
        )
        run_snakemake(workdir, config, "results/runs/ci/metrics.json", profile=profile)

    computed = [read_json(first / "results/basis/shards" / f"{s}.json") for s in SHARDS]
    assert all(r["chunks_computed"] > 0 and not r["downloaded"] for r in computed), computed
    downloaded = [read_json(second / "results/basis/shards" / f"{s}.json") for s in SHARDS]
    for r in downloaded:
        assert r["chunks_computed"] == 0 and r["edges_computed"] == 0, downloaded
        assert r["downloaded"] is True and r["chunks_reused"] == r["chunks_total"] > 0
    manifests = [read_json(w / "results/basis/manifest.json") for w in (first, second)]
    assert manifests[0]["store"] == manifests[1]["store"]
    assert manifests[0]["store"].startswith(f"{cache}/basis/")
    assert manifests[0]["checksums_sha256"] == manifests[1]["checksums_sha256"]
    objs = keys(server, bucket, "team/basis/")
    assert sum(k.endswith("/checksums.json") for k in objs) == 1
    assert not [k for k in objs if "/.leases/" in k]
    for w in (first, second):
        metrics = read_json(w / "results/runs/ci/metrics.json")
        assert metrics  # trained from the store (basis.use=store: no fallback to computing)
        log = "".join(p.read_text() for p in (w / "logs").rglob("*train*.log"))
        assert server.secret not in log
    assert server.secret not in (first / "results/basis/manifest.json").read_text()
