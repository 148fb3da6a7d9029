#!/usr/bin/env bash
# Run the test suite: lint, then pytest. The SLURM tests start the multi-node cluster of
# tests/slurm/cluster.sh themselves (as root, where the Debian packages are installed) and stop
# what they started; where sbatch is absent they are skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# the workflow tests call `se3t` and `snakemake` as a user would: put the venv first on PATH
export PATH="$PWD/$VENV/bin:$PATH"
"$VENV/bin/ruff" check se3t tests benchmarks
"$VENV/bin/ruff" format --check se3t tests benchmarks
# the package's layering and acyclicity (the contracts in pyproject.toml)
"$VENV/bin/lint-imports"
exec "$VENV/bin/python" -m pytest "$@"
