"""Shared helpers of the basis-store tests, and a worker run as a real subprocess.

``python tests/basis/basis_helpers.py DATASET CACHE RECEIPT --delay S [--gate FILE
--gate-after N]`` runs :func:`se3t.basis.precompute` with the real basis maths slowed by ``S``
seconds per chunk (values and key unchanged), and with ``--gate``, holding every chunk from the
``N``-th on until ``FILE`` exists: a test can ``kill -9`` it, run gc or a second writer beside it
while it is certainly at work (:func:`held`, then :func:`open_gate`), however loaded the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
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


def slow_backend(delay: float, gate: Path | None = None, gate_after: int = 0):
    """The real backend, sleeping ``delay`` s before each chunk: same values, same key. With
    ``gate``, the ``gate_after``-th chunk and every later one first wait for the file ``gate``
    to exist (the wait announced by a marker file beside it, :func:`held`)."""
    from se3t.basis import default_backend

    real = default_backend()
    lock, calls = threading.Lock(), [0]

    def compute(edge_vec, max_degree, dtype=None, out=None):
        with lock:
            n, calls[0] = calls[0], calls[0] + 1
        if gate is not None and n >= gate_after:
            wait_at(gate)
        time.sleep(delay)
        return real.compute(edge_vec, max_degree, dtype=dtype, out=out)

    return dataclasses.replace(real, compute=compute)


def wait_at(gate: Path, timeout: float = 900.0) -> None:
    """Return once the file ``gate`` exists, leaving a marker beside it while waiting; end the
    process after ``timeout`` s (a failed test that never opens its gate leaves no worker)."""
    if gate.exists():
        return
    gate.with_name(f"{gate.name}.held-{os.getpid()}").touch()
    end = time.monotonic() + timeout
    while not gate.exists():
        if time.monotonic() > end:
            os._exit(3)
        time.sleep(0.01)


def held(gate: Path, procs: list[subprocess.Popen], timeout: float = 300.0) -> None:
    """Wait until every one of ``procs`` waits at ``gate`` (each failing the test if it ends)."""
    end = time.monotonic() + timeout
    while len(list(gate.parent.glob(f"{gate.name}.held-*"))) < len(procs):
        for p in procs:
            assert p.poll() is None, f"a worker ended before the gate: {p.communicate()[1][-2000:]}"
        assert time.monotonic() < end, f"no worker reached the gate {gate} in {timeout} s"
        time.sleep(0.01)


def open_gate(gate: Path) -> None:
    gate.touch()


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


def worker_args(delay: float, shard: str, gate: Path | None, gate_after: int) -> list[str]:
    """The worker's options after its three paths."""
    gated = ["--gate", str(gate), "--gate-after", str(gate_after)] if gate else []
    return ["--delay", str(delay), "--shard", shard, *gated]


def spawn_worker(
    dataset,
    cache,
    receipt,
    *,
    delay: float = 0.0,
    shard: str = "0/1",
    gate: Path | None = None,
    gate_after: int = 0,
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__)),
            str(dataset),
            str(cache),
            str(receipt),
            *worker_args(delay, shard, gate, gate_after),
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
    ap.add_argument("--gate", type=Path, default=None)
    ap.add_argument("--gate-after", type=int, default=0)
    args = ap.parse_args()
    receipt = precompute(
        args.dataset,
        args.cache,
        settings(),
        shard=args.shard,
        backend=slow_backend(args.delay, args.gate, args.gate_after),
        progress=False,
        poll_s=0.05,
    )
    Path(args.receipt).write_text(json.dumps(receipt))


if __name__ == "__main__":
    _main()
