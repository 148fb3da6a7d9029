"""Workers of the object-store tests, run as subprocesses (the server is tests/s3_server.py).

``python tests/basis/s3_helpers.py publish|mirror ...`` runs the real publisher or read-through
cache with every object transfer slowed by ``--delay`` seconds (bytes unchanged), so that a
test can kill it mid-upload, race two of them, or run gc while one reads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def _slowed(delay: float):
    """RemoteCache whose object transfers each wait ``delay`` s first (bytes unchanged)."""
    from se3t.basis import RemoteCache

    class Slow(RemoteCache):
        def put(self, url, data, **kw):
            if "/.leases/" not in url:
                time.sleep(delay)
            return super().put(url, data, **kw)

        def get(self, url):
            if "/.leases/" not in url and not url.endswith("checksums.json"):
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
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start at")
    args = ap.parse_args()
    cache_url = args.store_url.rsplit("/basis/", 1)[0]
    remote = _slowed(args.delay)(cache_url, {"endpoint_url": args.endpoint})
    from se3t.basis import mirror, publish

    # the client's lazy set-up (botocore's session, the first connection) happens before the
    # wait: taking seconds after it, it let one publisher finish before the other began
    remote.check_bucket()
    time.sleep(max(0.0, args.start_at - time.time()))
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
