#!/usr/bin/env bash
# NVIDIA's SE3Transformer in its own virtual environment, outside the repository.
#
#   bash benchmarks/nvidia/setup_venv.sh NVIDIA_SRC VENV
#
# NVIDIA_SRC: DeepLearningExamples' DGLPyTorch/DrugDiscovery/SE3Transformer folder (pinned commit
# in benchmarks/nvidia/make_fixtures.py); VENV: where to create the venv (e.g. /work/nvidia-venv).
# DGL's wheels stop at torch 2.2, so this venv has its own torch; the recipe below installs from
# PyPI on a CPU machine. setuptools<70 goes LAST: dgl 2.1 imports setuptools.extern; 'numpy<2'
# is repeated at every step because pandas would otherwise pull numpy 2 (dgl 2.1 needs 1.x).
set -euo pipefail
if [[ $# -ne 2 ]]; then
    echo "usage: $0 NVIDIA_SRC VENV" >&2
    exit 2
fi
src=$1
venv=$2
if [[ ! -f "$src/se3_transformer/model/transformer.py" ]]; then
    echo "$src: not NVIDIA's SE3Transformer folder (no se3_transformer/model/transformer.py)" >&2
    exit 1
fi
python3 -m venv "$venv"
"$venv/bin/pip" install torch==2.2.1 dgl==2.1.0 e3nn==0.3.3 'numpy<2'
"$venv/bin/pip" install torchdata==0.7.1 pandas pyyaml pydantic 'numpy<2'
"$venv/bin/pip" install 'setuptools<70' 'numpy<2'
# a smoke import of NVIDIA's model from its folder (nothing is installed from it)
PYTHONPATH="$src" "$venv/bin/python" -c \
    "import dgl, se3_transformer.model as m; print('NVIDIA SE3Transformer OK, dgl', dgl.__version__)"
