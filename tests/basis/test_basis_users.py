"""Sharing one cache between users: gc never removes a store being written, and a second
user's precompute joins, waits for, reuses or takes over the first's store.

The first tests run as one user (any machine); the ``team`` tests run the real command line as
two Unix users of one group on a setgid group-shared folder (root only: CI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from basis_helpers import REPO, held, open_gate, settings, shard_files, spawn_worker, worker_args
from users_helpers import reachable, team

from se3t.basis import finalize, gc, precompute

pytestmark = pytest.mark.slow


def _wait_for_shards(store_root: Path, proc: subprocess.Popen, n: int = 1, timeout=120) -> Path:
    """The store a running precompute writes, once it holds ``n`` shard files."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"the writer ended early: {proc.communicate()[1][-2000:]}"
        stores = list(store_root.glob("basis/*.zarr"))
        if stores and len(shard_files(stores[0])) >= n:
            return stores[0]
        time.sleep(0.02)
    pytest.fail("the writer wrote no shard in time")


# ------------------------------------------------------------------------------- one user


def test_gc_keeps_a_store_whose_writer_is_at_work(qm9_store, tmp_path):
    """gc --older-than 0 while a (slow) precompute writes: the store is kept and listed as in
    progress with user, host and start; the precompute finishes and the store finalizes."""
    gate = tmp_path / "gate"
    proc = spawn_worker(qm9_store, tmp_path, tmp_path / "receipt.json", gate=gate, gate_after=2)
    store = _wait_for_shards(tmp_path, proc)
    held(gate, [proc])
    out = gc(tmp_path, older_than_s=0)
    assert proc.poll() is None
    open_gate(gate)
    assert [r["path"] for r in out] == [str(store)] and out[0]["kept"]
    assert out[0]["reason"].startswith(f"in progress ({os.environ.get('USER', '')}".rstrip())
    assert socket.gethostname() in out[0]["reason"] and "since 20" in out[0]["reason"]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    finalize(store)


def test_gc_removes_the_store_of_a_killed_writer(qm9_store, tmp_path):
    """A writer killed with SIGKILL holds no live claim: its store is abandoned work, removed
    once older than --older-than (and kept while younger)."""
    gate = tmp_path / "gate"
    proc = spawn_worker(qm9_store, tmp_path, tmp_path / "receipt.json", gate=gate, gate_after=2)
    store = _wait_for_shards(tmp_path, proc)
    held(gate, [proc])
    from se3t.basis.claims import live_claims

    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert live_claims(store) == []
    assert gc(tmp_path, older_than_s=3600) == []
    out = gc(tmp_path, older_than_s=0)
    assert [r["path"] for r in out] == [str(store)] and not out[0].get("kept")
    assert "abandoned" in out[0]["reason"] and not store.exists()


def test_a_lease_from_another_host_keeps_the_store_until_it_expires(qm9_store, tmp_path):
    """Another host's writer cannot be probed: its lease keeps the store while it is renewed
    (touched within its time to live), then the store is abandoned work."""
    store = Path(precompute(qm9_store, tmp_path, settings(), shard="0/4", progress=False)["store"])
    lease = store / ".claims" / "writer-elsewhere-1-abcd.json"
    since = time.time() - 7200
    record = {"user": "bob", "host": "elsewhere", "pid": 1, "since": since, "ttl_s": 600}
    lease.write_text(json.dumps(record))
    kept = gc(tmp_path, older_than_s=0)
    assert kept[0]["kept"] and kept[0]["reason"].startswith("in progress (bob, elsewhere, since")
    os.utime(lease, (time.time() - 700, time.time() - 700))  # not renewed for 700 s > 600 s
    assert not gc(tmp_path, older_than_s=0)[0].get("kept") and not store.exists()


def test_a_writer_lease_is_renewed_while_held(tmp_path):
    from se3t.basis.claims import WriterLease, live_claims

    store = tmp_path / "s.zarr"
    store.mkdir()
    with WriterLease(store, ttl_s=0.3) as lease:
        os.utime(lease.path, (0, 0))
        time.sleep(0.4)
        assert lease.path.stat().st_mtime > time.time() - 1
        (claim,) = live_claims(store)
        assert claim["pid"] == os.getpid() and claim["host"] == socket.gethostname()
    assert not lease.path.exists() and live_claims(store) == []


def test_gc_command_lists_live_work_as_in_progress(qm9_store, tmp_path):
    # held at the gate: the writer is still at work while the command runs
    gate = tmp_path / "gate"
    proc = spawn_worker(qm9_store, tmp_path, tmp_path / "receipt.json", gate=gate, gate_after=2)
    store = _wait_for_shards(tmp_path, proc)
    held(gate, [proc])
    res = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "basis", "gc", "--cache", str(tmp_path)]
        + ["--older-than", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.poll() is None
    open_gate(gate)
    assert res.returncode == 0, res.stderr
    assert f"kept {store} (" in res.stdout and "in progress (" in res.stdout
    assert "removed 0 store(s)" in res.stdout
    proc.communicate(timeout=300)
    assert proc.returncode == 0


# ------------------------------------------------------------------------------ two users


@pytest.fixture
def two_users():
    t = team()
    with reachable(Path(sys.executable).resolve(), REPO):
        yield t
    shutil.rmtree(t.root, ignore_errors=True)


def _worker(t, user: str, dataset: Path, cache: Path, gate: Path, gate_after: int, delay=0.0):
    """A precompute (the real maths, ``delay`` s per chunk) run as ``user``, held at ``gate``
    from its ``gate_after``-th chunk on."""
    helper = str(Path(__file__).with_name("basis_helpers.py"))
    receipt = t.home(user) / "receipt.json"
    args = worker_args(delay, "0/1", gate, gate_after)
    return t.spawn(user, sys.executable, helper, str(dataset), str(cache), str(receipt), *args)


def test_b_gc_and_precompute_while_a_writes(two_users, qm9_store):
    """A precomputes (slowly); meanwhile B runs gc --older-than 0 and a precompute of the same
    key. A's store survives, B's precompute shares or reuses A's work, and the store is
    finalized once; B can verify it."""
    t = two_users
    data, cache = t.share(qm9_store), t.root / "cache"
    gate = t.root / "gate"
    a = _worker(t, "se3t-a", data, cache, gate, gate_after=2, delay=0.5)
    store = _wait_for_shards(cache, a)
    held(gate, [a])
    res = t.se3t("se3t-b", "basis", "gc", "--cache", str(cache), "--older-than", "0")
    assert a.poll() is None
    open_gate(gate)  # A goes on (half a second a chunk) while B precomputes the same key
    assert res.returncode == 0, res.stderr
    assert "in progress (se3t-a, " in res.stdout and store.is_dir()
    common = ("--cache", str(cache), "--dataset", str(data), "--quiet")
    chunks = ("basis.chunk_edges=512", "basis.chunks_per_shard=2", "basis.compressor=zstd")
    b = t.se3t("se3t-b", "basis", "precompute", *common, *chunks)
    assert b.returncode == 0, b.stderr
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err[-3000:]
    done = [
        t.se3t(u, "basis", "finalize", store.name[:-5], "--cache", str(cache))
        for u in ("se3t-a", "se3t-b")
    ]
    assert all(r.returncode == 0 for r in done), [r.stderr for r in done]
    record = json.loads((store / "checksums.json").read_text())
    assert record["finalized_by"].split("@")[0] in ("se3t-a", "se3t-b")
    assert not (store / ".claims").exists()
    ver = t.se3t("se3t-b", "basis", "verify", store.name[:-5], "--cache", str(cache))
    assert ver.returncode == 0, ver.stdout + ver.stderr


def test_a_finished_store_is_read_and_verified_by_b(two_users, qm9_store):
    t = two_users
    data, cache = t.share(qm9_store), t.root / "cache"
    common = ("--cache", str(cache), "--dataset", str(data), "--quiet")
    assert t.se3t("se3t-a", "basis", "precompute", *common).returncode == 0
    (store,) = cache.glob("basis/*.zarr")
    fin = t.se3t("se3t-a", "basis", "finalize", store.name[:-5], "--cache", str(cache))
    assert fin.returncode == 0, fin.stderr
    ver = t.se3t("se3t-b", "basis", "verify", store.name[:-5], "--cache", str(cache))
    assert ver.returncode == 0, ver.stdout + ver.stderr
    again = t.se3t("se3t-b", "basis", "precompute", *common)
    assert again.returncode == 0 and "complete store reused" in again.stdout, again.stderr
    # B cannot remove A's finalized store: gc says whose it is, and nothing is hidden
    gc_b = t.se3t(
        "se3t-b", "basis", "gc", "--cache", str(cache), "--unreferenced", "--manifests", str(t.root)
    )
    assert gc_b.returncode == 0, gc_b.stderr
    assert "owned by se3t-a" in gc_b.stdout and store.is_dir()
    assert not list(cache.glob("basis/.trash-*"))


def test_an_abandoned_store_is_taken_over_by_b(two_users, qm9_store):
    """A is killed with SIGKILL mid-way; B (same group, site umask) continues A's store: A's
    shards are reused, A's stale claims taken over, and the store finalizes and verifies."""
    t = two_users
    data, cache = t.share(qm9_store), t.root / "cache"
    gate = t.root / "gate"
    a = _worker(t, "se3t-a", data, cache, gate, gate_after=4)
    store = _wait_for_shards(cache, a, n=2)
    held(gate, [a])
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=60)
    before = len(shard_files(store))
    common = ("--cache", str(cache), "--dataset", str(data), "--quiet")
    chunks = ("basis.chunk_edges=512", "basis.chunks_per_shard=2", "basis.compressor=zstd")
    b = t.se3t("se3t-b", "basis", "precompute", *common, *chunks)
    assert b.returncode == 0, b.stderr
    assert f"{before * 2 - 2}" in b.stdout or "reused" in b.stdout
    fin = t.se3t("se3t-b", "basis", "finalize", store.name[:-5], "--cache", str(cache))
    assert fin.returncode == 0, fin.stderr
    ver = t.se3t("se3t-a", "basis", "verify", store.name[:-5], "--cache", str(cache))
    assert ver.returncode == 0, ver.stdout + ver.stderr


def test_an_abandoned_store_b_cannot_write_is_refused_in_one_line(two_users, qm9_store):
    """A wrote under umask 022 (its store is not group-writable) and stopped half-way: B's
    precompute refuses in one line naming A and what to do; B's gc keeps it, saying whose it is."""
    t = two_users
    data, cache = t.share(qm9_store), t.root / "cache"
    common = ("--cache", str(cache), "--dataset", str(data), "--quiet")
    for folder in (cache, cache / "basis"):  # the shared cache, set up group-writable
        folder.mkdir()
        os.chmod(folder, 0o2770)
    part = t.run(
        "se3t-a",
        sys.executable,
        "-m",
        "se3t.cli",
        "basis",
        "precompute",
        *common,
        "--shard",
        "0/2",
        umask="0022",
    )
    assert part.returncode == 0, part.stderr
    b = t.se3t("se3t-b", "basis", "precompute", *common)
    assert b.returncode != 0
    lines = b.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in b.stderr, b.stderr
    assert "se3t-a" in lines[0] and "ask se3t-a" in lines[0] and ".zarr" in lines[0]
    gc_b = t.se3t("se3t-b", "basis", "gc", "--cache", str(cache), "--older-than", "0")
    assert gc_b.returncode == 0, gc_b.stderr
    assert "owned by se3t-a" in gc_b.stdout
    assert len(list(cache.glob("basis/*.zarr"))) == 1


def test_s3_gc_by_b_keeps_a_store_a_publishes_and_b_reads_it(two_users, qm9_store, tmp_path):
    """The same on a bucket: A publishes (slowly) a store; B's gc --older-than 0 keeps it as in
    progress under A's name; once published, B reads it through B's own local cache."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from basis_helpers import build
    from s3_server import S3Server

    t = two_users
    server = S3Server(tmp_path / "moto.log")
    try:
        bucket = server.make_bucket("se3t-team")
        local = t.share(Path(build(qm9_store, tmp_path / "site")).parent.parent)
        (store,) = local.glob("basis/*.zarr")
        url = f"s3://{bucket}/team/basis/{store.name}"
        helper = str(Path(__file__).with_name("s3_helpers.py"))
        gate = t.root / "gate"  # A held before its first shard
        a = t.spawn(
            "se3t-a",
            sys.executable,
            helper,
            "publish",
            str(store),
            url,
            "--endpoint",
            server.endpoint,
            "--gate",
            str(gate),
            env=server.env,
        )
        opts = [f"basis.storage_options.endpoint_url={server.endpoint}"]
        cache = ("--cache", f"s3://{bucket}/team")
        end = time.monotonic() + 120
        while not any("/.leases/" in k for k in _keys(server, bucket)):
            assert a.poll() is None and time.monotonic() < end, a.communicate()[1][-2000:]
            time.sleep(0.05)
        held(gate, [a])
        gc_b = t.se3t(
            "se3t-b", "basis", "gc", *cache, "--older-than", "0", "--yes", *opts, env=server.env
        )
        assert a.poll() is None
        open_gate(gate)
        assert gc_b.returncode == 0, gc_b.stderr
        assert f"kept {url} (" in gc_b.stdout and "in progress (se3t-a, " in gc_b.stdout
        _, err = a.communicate(timeout=300)
        assert a.returncode == 0, err[-3000:]
        b_cache = t.home("se3t-b") / "local"
        ver = t.se3t(
            "se3t-b",
            "basis",
            "verify",
            url,
            "--dataset",
            str(t.share(qm9_store)),
            *opts,
            f"basis.local_cache={b_cache}",
            env=server.env,
        )
        assert ver.returncode == 0, ver.stdout + ver.stderr
    finally:
        server.stop()


def _keys(server, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
