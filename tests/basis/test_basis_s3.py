"""Basis stores on an S3-compatible object store, against a real S3 server on loopback
(moto_server, started and stopped here; authentication on): publish and read from another
process and another site, kill mid-upload then resume, racing publishers, a flipped byte, clear
errors for wrong credentials / missing bucket / unreachable endpoint, gc while a store is read.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from basis_helpers import build, held, open_gate
from s3_helpers import REPO, se3t, spawn
from s3_server import S3Server, free_port, keys

from se3t.basis import (
    CHECKSUMS_FILE,
    RemoteCache,
    basis_key,
    finalize_remote,
    mirror,
    open_basis,
    publish,
    store_path,
    upload,
    write_remote_manifest,
)
from se3t.data import MoleculeDataset, collate
from se3t.data.store import fingerprint
from se3t.errors import InputError
from se3t.so3.basis import compute_basis_flat

pytest.importorskip("s3fs")
pytest.importorskip("moto")

SMALL_OVERRIDES = ["basis.chunk_edges=512", "basis.chunks_per_shard=2", "basis.compressor=zstd"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield srv
    srv.stop()


@pytest.fixture
def aws_env(server, monkeypatch):
    """Valid credentials in the standard AWS variables (the only place se3t takes them)."""
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return server.env


@pytest.fixture
def cache_url(server, aws_env):
    bucket = server.make_bucket(f"se3t-{uuid.uuid4().hex[:10]}")
    return f"s3://{bucket}/team"


@pytest.fixture(scope="module")
def local_store(qm9_store, tmp_path_factory):
    """A complete local store (the SMALL test settings) to publish."""
    return Path(build(qm9_store, tmp_path_factory.mktemp("site_a")))


def _remote(server, cache_url):
    return RemoteCache(cache_url, {"endpoint_url": server.endpoint})


def _opts(server):
    return [f"basis.storage_options.endpoint_url={server.endpoint}"]


def _store_url(cache_url, qm9_store):
    return store_path(cache_url, basis_key(fingerprint(qm9_store), 3, "float32"))


def _num_shards(store: Path) -> int:
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["se3t_basis"]
    return int(meta["num_units"])


def _on_the_fly(qm9_store):
    """(store rows of all molecules, their bases computed on the fly from collate's edges)."""
    ds = MoleculeDataset(qm9_store, split="all")
    batch = collate([ds[i] for i in range(len(ds))])
    return batch.index, compute_basis_flat(batch.edge_vec, 3)


# ------------------------------------------------------------------------------------- server


def test_server_honours_if_none_match(server, cache_url):
    """moto honours If-None-Match: * on PutObject (412 for the second writer); se3t's publisher
    does not depend on it (identical content, adoption and the verify pass), but uses it."""
    r = _remote(server, cache_url)
    url = f"{cache_url}/probe"
    assert r.put(url, b"first", if_absent=True) is True
    assert r.put(url, b"second", if_absent=True) is False
    assert r.get(url) == b"first"


def test_secrets_in_storage_options_are_refused():
    from se3t.config import ConfigError, load

    with pytest.raises(ConfigError, match="basis.storage_options.secret"):
        load(None, ["basis.storage_options.secret=abc"])
    with pytest.raises(ConfigError, match="client_kwargs.aws_secret_access_key"):
        load(None, {"basis.storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}})
    cfg = load(None, ["basis.storage_options.endpoint_url=http://127.0.0.1:9000"])
    assert cfg.basis.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}


# ------------------------------------------------------------------- publish, read elsewhere


def test_precompute_publish_then_read_from_second_process_and_site(
    server, cache_url, aws_env, qm9_store, tmp_path
):
    site_a, site_b = tmp_path / "site_a", tmp_path / "site_b"
    common = ["--dataset", str(qm9_store), "--cache", cache_url, "--quiet"]
    a = [*SMALL_OVERRIDES, *_opts(server), f"basis.local_cache={site_a}"]
    se3t(aws_env, "basis", "precompute", *common, "--receipt", str(tmp_path / "r0.json"), *a)
    r0 = json.loads((tmp_path / "r0.json").read_text())
    assert r0["chunks_computed"] == r0["chunks_total"] > 0 and r0["downloaded"] is False
    url = r0["store"]
    assert url.startswith(cache_url) and r0["upload"]["uploaded"] > 0
    # shards uploaded, not yet visible: no manifest object
    bucket, prefix = url[5:].split("/", 1)
    assert f"{prefix}/{CHECKSUMS_FILE}" not in keys(server, bucket, prefix)
    manifest = tmp_path / "run" / "basis.json"
    key = r0["key"]
    # (overrides right after the positional argument, as the workflow's rule writes them)
    out = se3t(
        aws_env,
        "basis",
        "finalize",
        key,
        *_opts(server),
        f"basis.local_cache={site_a}",
        "--cache",
        cache_url,
        "--manifest",
        str(manifest),
    ).stdout
    assert "published" in out
    rec = json.loads(manifest.read_text())
    assert rec["store"] == url
    text = manifest.read_text() + (tmp_path / "r0.json").read_text()
    assert server.secret not in text and server.key_id not in text  # nothing secret written

    # a second site, same data settings: downloads instead of computing
    b = [*SMALL_OVERRIDES, *_opts(server), f"basis.local_cache={site_b}"]
    se3t(aws_env, "basis", "precompute", *common, "--receipt", str(tmp_path / "r1.json"), *b)
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert r1["chunks_computed"] == 0 and r1["downloaded"] is True
    assert (site_b / "basis" / f"{key}.zarr" / CHECKSUMS_FILE).is_file()

    # a second process at a third site reads the store through the manifest
    site_c = tmp_path / "site_c"
    code = (
        "import json,sys,torch\n"
        "from se3t.basis import open_basis\n"
        "from se3t.data.store import fingerprint\n"
        f"s = open_basis({str(manifest)!r}, dataset_fingerprint=fingerprint({str(qm9_store)!r}),"
        " max_degree=3, dtype='float32', read='chunks',"
        f" local_cache={str(site_c)!r}, storage_options={{'endpoint_url': {server.endpoint!r}}})\n"
        "torch.save(s.gather(torch.load(sys.argv[2])), sys.argv[1])\n"
    )
    out_file = tmp_path / "gathered.pt"
    index, ref = _on_the_fly(qm9_store)
    torch.save(index, tmp_path / "index.pt")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out_file), str(tmp_path / "index.pt")],
        env={**os.environ, **aws_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = torch.load(out_file)
    assert got.shape == ref.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)  # as the local store's test
    # the same values at site B (downloaded copy) as at site C
    sb = open_basis(
        manifest,
        dataset_fingerprint=fingerprint(qm9_store),
        max_degree=3,
        dtype="float32",
        local_cache=site_b,
        storage_options={"endpoint_url": server.endpoint},
    )
    assert torch.equal(sb.gather(index), got)


# ------------------------------------------------------------------------ kill and resume


def _wait(pred, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_publisher_mid_upload_then_resume(server, cache_url, aws_env, local_store, tmp_path):
    url = f"{cache_url}/basis/{local_store.name}"
    bucket, prefix = url[5:].split("/", 1)
    shards = lambda: [k for k in keys(server, bucket, prefix) if "/basis/c/" in k]  # noqa: E731
    gate = tmp_path / "gate"  # held before its third shard
    args = ("--endpoint", server.endpoint, "--gate", str(gate), "--gate-after", "2")
    proc = spawn(aws_env, "publish", str(local_store), url, *args)
    try:
        _wait(lambda: len(shards()) >= 2, what="two shard files uploaded")
        held(gate, [proc])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = keys(server, bucket, prefix)
    n_shards = _num_shards(local_store)
    assert len(shards()) == 2 < n_shards
    assert f"{prefix}/{CHECKSUMS_FILE}" not in before

    # readers never see it: not published, at any site
    r = _remote(server, cache_url)
    with pytest.raises(InputError, match="not published yet"):
        mirror(url, tmp_path / "reader", r)
    ls = se3t(aws_env, "basis", "ls", "--cache", cache_url, "--json", *_opts(server)).stdout
    (row,) = json.loads(ls)
    assert row["complete"] is False

    # the rerun uploads exactly what is missing
    out = se3t(
        aws_env, "basis", "publish", str(local_store), *_opts(server), "--to", cache_url
    ).stdout
    uploaded_objects = len(keys(server, bucket, prefix)) - len(before)
    data_objects = [k for k in before if "/.leases/" not in k]
    up = sum("/basis/c/" in k for k in before)
    print(f"kill: {up} of {n_shards} shard files up before the kill; rerun: {out}")
    assert f"{len(data_objects)} already there" in out
    assert f": {uploaded_objects - 1} objects uploaded" in out  # the rest, then checksums.json
    after = keys(server, bucket, prefix)
    assert f"{prefix}/{CHECKSUMS_FILE}" in after
    # the rerun's lease is gone; the killed publisher's stays until expiry or until gc on this
    # host sees that its process is dead
    leases = lambda objs: {k for k in objs if "/.leases/" in k}  # noqa: E731
    assert leases(after) == leases(before)
    r.live_leases(url)
    assert not leases(keys(server, bucket, prefix))
    v = se3t(
        aws_env,
        "basis",
        "verify",
        url,
        *_opts(server),
        f"basis.local_cache={tmp_path / 'verify'}",
        "--sample",
        "50",
    )
    assert "OK" in v.stdout


def test_two_publishers_race(server, cache_url, aws_env, local_store, qm9_store, tmp_path):
    """Two sites publish one key at once (each its own local store): both succeed, exactly one
    complete store results, and it verifies."""
    other = Path(build(qm9_store, tmp_path / "site_b"))
    url = f"{cache_url}/basis/{local_store.name}"
    gate = tmp_path / "gate"  # both held before their first shard, then released together
    procs = [
        spawn(
            aws_env,
            "publish",
            str(s),
            url,
            "--endpoint",
            server.endpoint,
            "--delay",
            "0.5",  # per object: a window of seconds in which both are uploading
            "--workers",
            "2",
            "--gate",
            str(gate),
            "--out",
            str(tmp_path / f"p{i}.json"),
        )
        for i, s in enumerate((local_store, other))
    ]
    held(gate, procs)
    open_gate(gate)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    receipts = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    print(f"race receipts: {receipts}")
    published = [r for r in receipts if r.get("published")]
    assert len(published) == 1, receipts  # one manifest written; the other reused it
    # they really raced: neither found the other's store finished when it began (that early
    # return carries no transfer counts); which of them put which object is the scheduler's
    assert all("uploaded" in r and "present" in r for r in receipts), receipts
    bucket, prefix = url[5:].split("/", 1)
    objs = keys(server, bucket, prefix)
    assert sum(k.endswith(CHECKSUMS_FILE) for k in objs) == 1
    assert sum("/basis/c/" in k for k in objs) == _num_shards(local_store)
    assert not [k for k in objs if "/.leases/" in k]
    v = se3t(
        aws_env,
        "basis",
        "verify",
        url,
        *_opts(server),
        f"basis.local_cache={tmp_path / 'v'}",
        "--sample",
        "100",
    )
    assert "OK" in v.stdout, v.stdout


# -------------------------------------------------------------------------- a flipped byte


def test_flipped_byte_in_remote_shard(server, cache_url, aws_env, local_store, qm9_store, tmp_path):
    r = _remote(server, cache_url)
    url = f"{cache_url}/basis/{local_store.name}"
    publish(r, local_store, url)
    manifest = tmp_path / "basis.json"
    write_remote_manifest(url, manifest, r, tmp_path / "writer")
    bucket, prefix = url[5:].split("/", 1)
    name = f"{prefix}/basis/c/1/0"
    c = server.client()
    data = bytearray(c.get_object(Bucket=bucket, Key=name)["Body"].read())
    data[len(data) // 2] ^= 0x01
    c.put_object(Bucket=bucket, Key=name, Body=bytes(data))  # at-rest damage, not se3t's write

    v = se3t(aws_env, "basis", "verify", url, *_opts(server), "--sample", "0", check=False)
    assert v.returncode == 1
    assert f"BAD {url}/basis/c/1/0: sha256 differs from checksums.json" in v.stdout
    assert "Traceback" not in v.stderr
    # a flipped byte in an index array (not a shard) is caught just the same
    idx = f"{prefix}/row_start/c/0"
    body = bytearray(c.get_object(Bucket=bucket, Key=idx)["Body"].read())
    body[-1] ^= 0x01
    c.put_object(Bucket=bucket, Key=idx, Body=bytes(body))
    v = se3t(aws_env, "basis", "verify", url, *_opts(server), "--sample", "0", check=False)
    assert f"BAD {url}/row_start/c/0: sha256 differs from checksums.json" in v.stdout
    # training refuses it: the read-through copy checks every object before use
    with pytest.raises(InputError, match=r"(basis/c/1/0|row_start/c/0).*differs from checksums"):
        open_basis(
            manifest,
            dataset_fingerprint=fingerprint(qm9_store),
            max_degree=3,
            dtype="float32",
            local_cache=tmp_path / "trainer",
            storage_options={"endpoint_url": server.endpoint},
        )
    assert not (tmp_path / "trainer" / "basis" / local_store.name / CHECKSUMS_FILE).exists()


# ------------------------------------------------------------------------------ clear errors


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and "botocore" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_wrong_credentials_missing_bucket_unreachable_endpoint(server, cache_url, aws_env):
    wrong = {**aws_env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    p = se3t(wrong, "basis", "ls", "--cache", cache_url, *_opts(server), check=False)
    _one_line_error(p, cache_url, "access denied")
    bad_key = {**aws_env, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"}
    p = se3t(bad_key, "basis", "ls", "--cache", cache_url, *_opts(server), check=False)
    _one_line_error(p, cache_url, "access denied")

    missing = "s3://no-such-bucket-se3t/team"
    p = se3t(aws_env, "basis", "ls", "--cache", missing, *_opts(server), check=False)
    _one_line_error(p, missing, "bucket 'no-such-bucket-se3t' does not exist")

    # a port with "403" in it: once classified as access denied by searching the message
    dead = f"http://127.0.0.1:{free_port(containing='403')}"
    t0 = time.monotonic()
    p = se3t(
        aws_env,
        "basis",
        "ls",
        "--cache",
        cache_url,
        f"basis.storage_options.endpoint_url={dead}",
        check=False,
    )
    _one_line_error(p, cache_url, "cannot reach", dead)
    assert time.monotonic() - t0 < 60


# --------------------------------------------------------------------------- gc while in use


def test_gc_during_read_removes_nothing_in_use(server, cache_url, aws_env, local_store, tmp_path):
    r = _remote(server, cache_url)
    url = f"{cache_url}/basis/{local_store.name}"
    publish(r, local_store, url)
    bucket, prefix = url[5:].split("/", 1)
    before = {k for k in keys(server, bucket, prefix) if "/.leases/" not in k}
    empty = tmp_path / "no-manifests"
    empty.mkdir()
    gc_args = [
        "basis",
        "gc",
        *_opts(server),
        "--cache",
        cache_url,
        "--unreferenced",
        "--manifests",
        str(empty),
        "--older-than",
        "0",
        "--yes",
    ]

    reader = spawn(
        aws_env,
        "mirror",
        str(tmp_path / "reader"),
        url,
        "--endpoint",
        server.endpoint,
        "--gate",
        str(tmp_path / "gate"),
        "--gate-after",
        "1",
        "--out",
        str(tmp_path / "m.json"),
    )
    try:
        _wait(
            lambda: any("/.leases/" in k for k in keys(server, bucket, prefix)),
            what="the reader's lease",
        )
        held(tmp_path / "gate", [reader])
        out = se3t(aws_env, *gc_args).stdout
        assert reader.poll() is None
        open_gate(tmp_path / "gate")
        assert "removed 0 store(s)" in out
        assert f"kept {url} (" in out and "in progress (" in out and ", read)" in out
        assert before <= set(keys(server, bucket, prefix))
    finally:
        open_gate(tmp_path / "gate")
        _, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err  # the read completed, verified
    assert json.loads((tmp_path / "m.json").read_text())["local"]

    # an incomplete store being uploaded is in use too (lease, recent objects)
    other = f"{cache_url}/basis/{'0' * 24}.zarr"
    upload(r, local_store, other, units=range(0, 1))  # part of a store, no manifest
    with r.lease(other, "publish"):
        out = se3t(aws_env, *gc_args).stdout
        assert f"removed {url}" in out  # the finished read released the complete store
        assert f"kept {other} (" in out and f"in progress ({getpass.getuser()}, " in out
    # without leases and past the age rule, gc takes it (the rule itself works)
    out = se3t(aws_env, *gc_args).stdout
    assert f"removed {other}" in out
    assert not keys(server, bucket, prefix)


def test_gc_on_remote_cache_asks_without_yes(server, cache_url, aws_env, local_store, tmp_path):
    r = _remote(server, cache_url)
    url = f"{cache_url}/basis/{local_store.name}"
    publish(r, local_store, url)
    (tmp_path / "m").mkdir()
    p = se3t(
        aws_env,
        "basis",
        "gc",
        *_opts(server),
        "--cache",
        cache_url,
        "--unreferenced",
        "--manifests",
        str(tmp_path / "m"),
        check=False,
    )
    _one_line_error(p, "--yes")
    bucket, prefix = url[5:].split("/", 1)
    assert f"{prefix}/{CHECKSUMS_FILE}" in keys(server, bucket, prefix)


def test_finalize_remote_refuses_incomplete_and_is_idempotent(server, cache_url, local_store):
    r = _remote(server, cache_url)
    url = f"{cache_url}/basis/{local_store.name}"
    upload(r, local_store, url, units=range(0, 1))
    with pytest.raises(InputError, match="incomplete"):
        finalize_remote(r, url)
    upload(r, local_store, url)
    rec, won = finalize_remote(r, url)
    assert won
    rec2, won2 = finalize_remote(r, url)
    assert rec2 == rec and not won2
    local = json.loads((local_store / CHECKSUMS_FILE).read_text())
    for name, info in local["files"].items():  # the same shard bytes as the local store
        assert rec["files"][name] == info, name
    # and every other object (metadata, index arrays) is covered too
    assert {"zarr.json", "basis/zarr.json", "row_start/zarr.json"} <= set(rec["files"])
    assert len(rec["files"]) == len([p for p in local_store.rglob("*") if p.is_file()]) - 1
