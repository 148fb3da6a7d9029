"""Sharing a basis store through an S3-compatible object store: upload and download throughput
against a loopback S3 server (moto_server), with the local file system as the baseline, and
the publishing overhead (checksums, verify listing, manifest). Figures go to BENCHMARKS.md.

    flock /tmp/se3t-bench.lock .venv/bin/python benchmarks/basis_s3.py \\
        --dataset /tmp/s3bench/qm9-20k.zarr --work /tmp/s3bench/work [--rounds 2]

Points, each in a fresh process, alternated A B C ... A B C ... (the machine is shared:
compare ratios within one run):

- ``copy_local``: the store's files copied to a fresh local folder (the baseline: moving the
  bytes through the file system);
- ``put_raw``: every file PUT to a fresh bucket, 8 at a time, no checks (the wire alone);
- ``publish``: ``se3t.basis.publish`` to a fresh bucket (HEAD, Content-MD5,
  sha256, If-None-Match, verify listing, checksums.json last);
- ``mirror``: a fresh local copy of the published store (download, sha256 of every shard,
  rename, read-only).

The publish receipt splits its time into upload + verify and the manifest (``finalize_remote``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file() and not p.name.startswith("."))


def _nbytes(store: Path) -> int:
    return sum(p.stat().st_size for p in _files(store))


def _point(args: argparse.Namespace) -> dict:
    """One measurement (run in its own process)."""
    from se3t.basis import RemoteCache, mirror, publish

    store = Path(args.store)
    opts = {"endpoint_url": args.endpoint}
    out: dict = {"point": args.point, "bytes": _nbytes(store)}
    if args.point == "copy_local":
        dest = Path(args.work) / f"copy-{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        shutil.copytree(store, dest)
        out["seconds"] = time.perf_counter() - t
        shutil.rmtree(dest, ignore_errors=True)
        return out
    bucket = args.bucket
    cache = f"s3://{bucket}/bench"
    remote = RemoteCache(cache, opts)
    url = f"{cache}/basis/{store.name}"
    if args.point == "put_raw":
        files = _files(store)

        def put(p: Path) -> None:
            key = remote.key_of(remote.join(url, p.relative_to(store).as_posix()))
            remote.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=p.read_bytes())

        t = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))
        out["seconds"] = time.perf_counter() - t
    elif args.point == "publish":
        t = time.perf_counter()
        receipt = publish(remote, store, url)
        out["seconds"] = time.perf_counter() - t
        out["manifest_seconds"] = receipt["manifest_seconds"]
        out["upload_verify_seconds"] = receipt["seconds"]
        out["uploaded"] = receipt["uploaded"]
        # the checksums alone, as publish computes them (MD5 for Content-MD5, sha256 metadata)
        t = time.perf_counter()
        for p in _files(store):
            data = p.read_bytes()
            hashlib.md5(data, usedforsecurity=False).digest()
            hashlib.sha256(data).digest()
        out["checksum_seconds"] = time.perf_counter() - t
    elif args.point == "mirror":
        local = Path(args.work) / f"mirror-{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        path = mirror(url, local, remote)
        out["seconds"] = time.perf_counter() - t
        out["bytes"] = _nbytes(path)
        for dirpath, _dirs, _names in os.walk(local):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(local, ignore_errors=True)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log, "wb"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


def _bucket(endpoint: str, name: str, *, delete: bool = False) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        **{k.lower(): v for k, v in ENV.items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    )
    if not delete:
        s3.create_bucket(Bucket=name)
        return
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", []) or []]
        if objs:
            s3.delete_objects(Bucket=name, Delete={"Objects": objs})
    s3.delete_bucket(Bucket=name)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", required=False)
    ap.add_argument("--work", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--point", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bucket", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        print(json.dumps(_point(args)))
        return

    from se3t.basis import BasisSettings, finalize, precompute

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    receipt = precompute(args.dataset, work / "cache", BasisSettings(), progress=False)
    finalize(receipt["store"])
    store = Path(receipt["store"])
    server, endpoint = _start_server(work / "moto.log")
    env = {**os.environ, **ENV}
    results = []
    try:
        published = f"bench-src-{uuid.uuid4().hex[:6]}"  # what the mirror points download from
        _bucket(endpoint, published)
        base = [
            sys.executable,
            __file__,
            "--work",
            str(work),
            "--store",
            str(store),
            "--endpoint",
            endpoint,
        ]
        subprocess.run(
            [*base, "--point", "publish", "--bucket", published],
            env=env,
            check=True,
            capture_output=True,
        )
        for r in range(args.rounds):
            for point in ("copy_local", "put_raw", "publish", "mirror"):
                bucket = published
                if point in ("put_raw", "publish"):
                    bucket = f"bench-{uuid.uuid4().hex[:8]}"
                    _bucket(endpoint, bucket)
                proc = subprocess.run(
                    [*base, "--point", point, "--bucket", bucket],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    raise SystemExit(proc.stderr)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["round"] = r
                res["MB_per_s"] = res["bytes"] / 1e6 / res["seconds"]
                print(json.dumps(res), flush=True)
                results.append(res)
                if bucket != published:
                    _bucket(endpoint, bucket, delete=True)
    finally:
        server.terminate()
        server.wait()
    summary = {
        "store": str(store),
        "store_bytes": _nbytes(store),
        "files": len(_files(store)),
        "points": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "points"}))


if __name__ == "__main__":
    main()
