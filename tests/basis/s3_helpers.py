"""Workers of the object-store tests, run as subprocesses (the server is tests/s3_server.py).

``python tests/basis/s3_helpers.py publish|mirror ...`` runs the real publisher or read-through
cache with every object transfer slowed by ``--delay`` seconds (bytes unchanged), and with
``--gate FILE --gate-after N`` holds every shard transfer from the ``N``-th on until ``FILE``
exists (``basis_helpers.held`` / ``open_gate``), so that a test can kill it mid-upload, race two
of them, or run gc while one reads, at a known point however loaded the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Run this file's worker (``publish`` or ``mirror``) in a fresh Python process."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__)), *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def se3t(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"se3t {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _slowed(delay: float, gate: Path | None = None, gate_after: int = 0):
    """RemoteCache whose object transfers each wait ``delay`` s first (bytes unchanged), and
    whose shard transfers from the ``gate_after``-th on wait for the file ``gate``."""
    from basis_helpers import wait_at

    from se3t.basis import RemoteCache

    lock, shards = threading.Lock(), [0]

    def hold(url: str) -> None:
        if gate is None or "/basis/c/" not in url:
            return
        with lock:
            n, shards[0] = shards[0], shards[0] + 1
        if n >= gate_after:
            wait_at(gate)

    class Slow(RemoteCache):
        def put(self, url, data, **kw):
            if "/.leases/" not in url:
                hold(url)
                time.sleep(delay)
            return super().put(url, data, **kw)

        def get(self, url):
            if "/.leases/" not in url and not url.endswith("checksums.json"):
                hold(url)
                time.sleep(delay)
            return super().get(url)

    return Slow


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["publish", "mirror"])
    ap.add_argument("local")  # publish: the local store; mirror: the local cache folder
    ap.add_argument("store_url")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--gate", type=Path, default=None)
    ap.add_argument("--gate-after", type=int, default=0)
    args = ap.parse_args()
    cache_url = args.store_url.rsplit("/basis/", 1)[0]
    slow = _slowed(args.delay, args.gate, args.gate_after)
    remote = slow(cache_url, {"endpoint_url": args.endpoint})
    from se3t.basis import mirror, publish

    if args.action == "publish":
        result = publish(remote, args.local, args.store_url, workers=args.workers)
    else:
        result = {"local": str(mirror(args.store_url, args.local, remote, workers=args.workers))}
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    _main()
