#!/usr/bin/env python
"""Collate throughput: molecules/s to turn dataset items into a ``Batch`` on one CPU core.

Times ``[dataset[i] for i in batch]`` + ``collate`` (what a DataLoader with num_workers=0 does
per step) over random training batches, next to the per-molecule reference collate of the tests
(same inputs, so the ratio is measured side by side). Pinned to one core, torch on one thread.

    .venv/bin/python benchmarks/collate.py --store results/data/qm9.zarr --batch-size 240
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))


def _rate(fn, batches, repeat: int) -> float:
    n, best = 0, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for idx in batches:
            fn(idx)
        best = min(best, time.perf_counter() - t0)
    n = sum(len(b) for b in batches)
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="results/data/qm9.zarr", help="dataset store")
    p.add_argument("--batch-size", type=int, default=240)
    p.add_argument("--batches", type=int, default=200, help="batches per timed pass")
    p.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin to")
    args = p.parse_args()

    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    from test_data_dataset import _reference_collate

    from se3t.data import MoleculeDataset, collate

    ds = MoleculeDataset(args.store, "train")
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(ds), args.batch_size, replace=False) for _ in range(args.batches)]

    def fast(idx):
        return collate([ds[int(i)] for i in idx])

    def reference(idx):
        return _reference_collate([ds[int(i)] for i in idx])

    fast(batches[0])
    r_fast = _rate(fast, batches, args.repeat)
    r_ref = _rate(reference, batches[: max(1, args.batches // 20)], 1)
    print(f"store {args.store}: {len(ds)} training molecules, batch {args.batch_size}, 1 core")
    print(
        f"collate (getitem + collate): {r_fast:,.0f} mol/s "
        f"({1e3 * args.batch_size / r_fast:.2f} ms/batch)"
    )
    print(f"reference per-molecule collate: {r_ref:,.0f} mol/s; speed-up {r_fast / r_ref:.1f}x")


if __name__ == "__main__":
    main()
