#!/usr/bin/env bash
# Set up a fresh machine for se3t: a virtual environment in .venv with the CPU build of torch
# (taken first, so nothing pulls a CUDA build), se3t itself with its extras, and, with
# --system (as root), the Debian packages the tests need: a multi-node SLURM cluster (slurm-wlm, slurmdbd,
# munge, mariadb-server; iproute2 and util-linux for its network and UTS namespaces) and headless
# Chromium for the report test, and g++ for the fused TFN's CPU kernel (compiled at first use;
# without a compiler se3t falls back to torch, slower).
#
#   bash scripts/setup.sh            # Python environment only
#   bash scripts/setup.sh --system   # also the Debian packages (root)
#
# Environment: PYTHON (default python3), VENV (default .venv), TORCH_SPEC (default torch==2.13.0;
# on a GPU cluster set it to the CUDA build you want).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SYSTEM=0
for arg in "$@"; do
  case "$arg" in
    --system) SYSTEM=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

if [ "$SYSTEM" = 1 ]; then
  pkgs=(slurm-wlm slurmdbd munge mariadb-server iproute2 util-linux chromium g++)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e ".[qm9,s3,dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import se3t, torch, e3nn, zarr; print('se3t', se3t.__version__, '| torch', torch.__version__)"
