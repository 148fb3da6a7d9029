"""A seeded random subset of QM9 (qm9pack's CSV files), as a folder ``se3t data build`` reads.

    .venv/bin/python benchmarks/accuracy/subset.py --size 20000 --seed 0 --out work/raw

QM9's index order is by heavy-atom count, so ``data.limit`` (the first N) would train on small
molecules only; this draws N rows uniformly from all 130,831 characterized molecules instead and
writes them, in index order, as one ``qm9_part1.csv`` with qm9pack's header.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")


def qm9pack_dir() -> Path:
    """The CSV folder of the installed qm9pack (read as files: its module needs pkg_resources)."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("qm9pack is not installed: pip install 'se3t[qm9]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def write_subset(src: Path, out: Path, size: int, seed: int) -> int:
    csv.field_size_limit(1 << 26)
    rows, header = [], None
    for part in PARTS:
        with open(src / part, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows.extend(reader)
    rows = [r for r in rows if r]
    if size > len(rows):
        raise SystemExit(f"--size {size} > the {len(rows)} molecules of {src}")
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "qm9_part1.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(header)
        w.writerows(rows[i] for i in keep)
    tmp.replace(out / "qm9_part1.csv")
    return size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--src", type=Path, default=None, help="qm9pack's CSV folder (default: installed)"
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    n = write_subset(a.src or qm9pack_dir(), a.out, a.size, a.seed)
    print(f"wrote {n} molecules to {a.out / 'qm9_part1.csv'}")


if __name__ == "__main__":
    main()
