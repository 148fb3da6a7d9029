"""Cost of verifying a dataset store on open (se3t.data.integrity), side by side with an open
that skips it, each point in a fresh process, alternating A B A B.

    flock /tmp/se3t-bench.lock .venv/bin/python benchmarks/dataset_verify.py \\
        --dataset results/data/qm9.zarr --reps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

POINT = """
import json, sys, time
import se3t.data.store as S
import se3t.data.integrity as I
mode, path = sys.argv[1], sys.argv[2]
if mode == "unverified":  # the same reads, the checks replaced by no-ops
    S.check_chunks = lambda *a, **k: None
    S.verify_dataset = lambda *a, **k: None
t0 = time.perf_counter()
ds = S.open_dataset(path)
print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t0, "molecules": len(ds)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    runs: dict[str, list[float]] = {"unverified": [], "verified": []}
    for _ in range(args.reps):
        for mode in ("unverified", "verified"):
            out = subprocess.run(
                [sys.executable, "-c", POINT, mode, args.dataset],
                capture_output=True,
                text=True,
                check=True,
            )
            point = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(point["seconds"])
    med = {m: statistics.median(v) for m, v in runs.items()}
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "molecules": point["molecules"],
                "runs": runs,
                "median_s": med,
                "overhead_s": med["verified"] - med["unverified"],
                "ratio": med["verified"] / med["unverified"],
                "when": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
