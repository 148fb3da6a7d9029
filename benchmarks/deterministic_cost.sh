#!/usr/bin/env bash
# What train.deterministic=true costs: `se3t train` of the paper's model on a dataset store,
# deterministic off and on, alternating REPS times (A B A B), each run a fresh process; prints
# the median mol/s of steps 6..STEPS per run (docs/kernel.md, determinism; BENCHMARKS.md).
#   flock /tmp/se3t-bench.lock bash benchmarks/deterministic_cost.sh DATASET.zarr [REPS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?dataset store (se3t data build output)}
REPS=${2:-2}
STEPS=${3:-25}
OUT=$(mktemp -d)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
lscpu | grep -E "Model name" || true
for rep in $(seq 1 "$REPS"); do
  for det in false true; do
    run="$OUT/det-$det-$rep"
    .venv/bin/se3t train --no-progress --config config/config.yaml data.path="$DATA" \
      basis.use=compute train.batch_size=32 train.max_steps="$STEPS" train.log_every=1 \
      train.eval_every=100 train.seed=0 train.device=cpu train.deterministic="$det" \
      run.dir="$run" > "$run.log" 2>&1
    .venv/bin/python - "$run/metrics.jsonl" "$det" "$rep" <<'PY'
import json, statistics, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
rates = [r["mol_per_s"] for r in steps if r.get("kind") == "step" and r["step"] > 5]
print(f"deterministic={sys.argv[2]} rep {sys.argv[3]}: median {statistics.median(rates):.2f} mol/s")
PY
  done
done
rm -rf "$OUT"
