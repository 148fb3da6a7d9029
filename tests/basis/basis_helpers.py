"""Shared helpers of the basis-store tests, and a worker run as a real subprocess.

``python tests/basis/basis_helpers.py DATASET CACHE RECEIPT --delay S`` runs
:func:`se3t.basis.precompute` with the real basis maths slowed by ``S`` seconds per
chunk (values and key unchanged), so that a test can ``kill -9`` it mid-way or run two at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[2]
# small chunks so the 275 test molecules (7,338 edges) make many chunks and shards
SMALL = {"chunk_edges": 512, "chunks_per_shard": 2, "compressor": "zstd"}


def settings(**kw):
    from se3t.basis import BasisSettings

    return BasisSettings(**{**SMALL, **kw})


def slow_backend(delay: float):
    """The real backend, sleeping ``delay`` s before each chunk: same values, same key."""
    from se3t.basis import default_backend

    real = default_backend()

    def compute(edge_vec, max_degree, dtype=None, out=None):
        time.sleep(delay)
        return real.compute(edge_vec, max_degree, dtype=dtype, out=out)

    return dataclasses.replace(real, compute=compute)


def build(dataset, cache, **kw) -> str:
    """Precompute + finalize a store with the SMALL settings; returns its path."""
    from se3t.basis import finalize, precompute

    receipt = precompute(dataset, cache, settings(**kw), progress=False)
    finalize(receipt["store"])
    return receipt["store"]


def stored_rows(store: str | os.PathLike) -> np.ndarray:
    """The whole ``basis`` array of a store (padding included)."""
    return np.asarray(zarr.open_group(str(store), mode="r")["basis"][:])


def shard_files(store: str | os.PathLike) -> list[Path]:
    root = Path(store) / "basis" / "c"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def spawn_worker(dataset, cache, receipt, *, delay: float, shard: str = "0/1") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__)),
            str(dataset),
            str(cache),
            str(receipt),
            "--delay",
            str(delay),
            "--shard",
            shard,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def se3t(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"se3t {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _main() -> None:
    from se3t.basis import precompute

    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("cache")
    ap.add_argument("receipt")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--shard", default="0/1")
    args = ap.parse_args()
    receipt = precompute(
        args.dataset,
        args.cache,
        settings(),
        shard=args.shard,
        backend=slow_backend(args.delay),
        progress=False,
        poll_s=0.05,
    )
    Path(args.receipt).write_text(json.dumps(receipt))


if __name__ == "__main__":
    _main()
