#!/usr/bin/env bash
# Creates .venv (unless it exists) with the CPU torch, the training extras
# (numpy, tqdm, matplotlib; MMSA 2.2.1 for the tfn/lmf/mult backbones unless
# MSMIX_NO_MMSA=1) and the test/bench tools, then builds msmix_ext in place
# against that torch. Needs only Python 3.9+, a C++17 compiler and pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# torch 2.13.0 is the CPU wheel on these machines; any torch >= 2.4 works.
.venv/bin/python -m pip install -q "torch==${MSMIX_TORCH_VERSION:-2.13.0}" numpy ninja pybind11 tqdm matplotlib \
  pytest hypothesis expecttest
# MMSA pulls transformers, pandas and scikit-learn (~530 MB, a few minutes); it keeps the torch above.
if [ "${MSMIX_NO_MMSA:-0}" != 1 ]; then
  .venv/bin/python -m pip install -q "MMSA==2.2.1"
fi
# --no-build-isolation: build against the torch just installed, not a fresh download.
CFLAGS=${CFLAGS:--g0} .venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
.venv/bin/python -c "import msmix_ext; print('msmix_ext', msmix_ext.__version__, 'built; CUDA kernels:', msmix_ext.CUDA_COMPILED)"
