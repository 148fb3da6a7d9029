#!/usr/bin/env bash
# The model's GPU table in ONE call of a few minutes: training steps of the SE(3)-Transformer
# (paper hyperparameters) on real QM9 batches carried in benchmarks/batches.pt, each point in a
# fresh process (peak memory = torch.cuda.max_memory_allocated of that point alone).
#
#   benchmarks/gpu.sh [--out DIR] [--python PY] [--cpu]
#
#   --out DIR     where results.json and table.md go (default: results/bench_gpu, or $OUT/gpu
#                 when the device tool's $OUT is set)
#   --python PY   interpreter (default: python3); needs only torch and e3nn — no zarr,
#                 omegaconf or rdkit: the batches are plain tensors made on the dev machine by
#                 `python benchmarks/train_step.py make-batches benchmarks/batches.pt`
#   --cpu         the CPU smoke mode (one small point per path) that shows the script works
#                 where no GPU is present
#
# Points (GPU): batch 240 pairwise/fused in tf32, fused in bf16 and fp16 (AMP): the throughput
# table; batch 240 with AMP (fp16): the Triton kernel (model.kernel=triton) vs the eager fused
# torch evaluation vs pairwise, in mol/ms (target >= 6; NVIDIA 2.92 on an A100); batch 100 fused
# fp16, torch and Triton, with and without low-memory mode: peak memory (target <= 2 GB; NVIDIA
# 3.8 / 3.0 GB on a V100); the largest batch that trains with the Triton kernel and with the
# torch evaluation (doubling from 1000 molecules until a point fails: out of memory).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
OUTDIR="${OUT:+$OUT/gpu}"
OUTDIR="${OUTDIR:-results/bench_gpu}"
CPU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BATCHES=benchmarks/batches.pt
if [ ! -f "$BATCHES" ]; then
  echo "gpu.sh: $BATCHES missing; make it with: python benchmarks/train_step.py make-batches $BATCHES" >&2
  exit 2
fi
mkdir -p "$OUTDIR"
RUN=("$PY" benchmarks/train_step.py run --batches "$BATCHES")
"$PY" - <<'PYEOF'
import torch, e3nn
print(f"torch {torch.__version__}, e3nn {e3nn.__version__}, cuda {torch.cuda.is_available()}",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PYEOF
if [ "$CPU" = 1 ]; then
  "${RUN[@]}" --device cpu --sizes 32 --paths pairwise full --precisions fp32 \
    --warmup 0 --steps 1 --out "$OUTDIR/cpu"
  cat "$OUTDIR/cpu/table.md" > "$OUTDIR/table.md"
  exit 0
fi
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: no CUDA device (use --cpu for the smoke mode)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
G=(--device cuda --warmup 3 --steps 10)
"${RUN[@]}" "${G[@]}" --sizes 240 --paths pairwise full --precisions tf32 --out "$OUTDIR/tf32"
"${RUN[@]}" "${G[@]}" --sizes 240 --paths full --precisions bf16 fp16 --out "$OUTDIR/amp"
# Triton vs eager fused vs pairwise, AMP, batch 240, A B A B
"${RUN[@]}" "${G[@]}" --sizes 240 --paths pairwise full --kernels torch triton --precisions fp16 \
  --repeat 2 --out "$OUTDIR/triton240"
"${RUN[@]}" "${G[@]}" --sizes 100 --paths full --kernels torch triton --precisions fp16 \
  --low-memory off on --out "$OUTDIR/mem100"
# the largest batch that fits: copies of the 1000-molecule batch, doubling until a point fails
: > "$OUTDIR/largest.txt"
for kernel in triton torch; do
  best=0
  for copies in 1 2 4 8 16 32; do
    if "$PY" benchmarks/train_step.py point --batches "$BATCHES" --device cuda --size 1000 \
        --copies "$copies" --path full --kernel "$kernel" --precision fp16 --warmup 1 --steps 1 \
        --sgemm-n 0 > "$OUTDIR/largest_${kernel}_${copies}.json" 2>/dev/null; then
      best=$((1000 * copies))
    else
      break
    fi
  done
  echo "largest batch that trains (fp16, kernel $kernel): $best molecules (doubling from 1000)" \
    | tee -a "$OUTDIR/largest.txt"
done
{
  echo "### GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
  echo "(mol/ms = mol/s / 1000)"
  for part in tf32 amp triton240 mem100; do
    cat "$OUTDIR/$part/table.md"
    echo
  done
  cat "$OUTDIR/largest.txt"
} > "$OUTDIR/table.md"
cat "$OUTDIR/table.md"
