#!/usr/bin/env bash
# Compiles and links the CUDA kernels against a CUDA build of torch, so that
# they never rot unseen on machines without a GPU, and checks that the built
# module reports them. The venv lives outside the clone and is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MSMIX_CUDA_VENV:-$HOME/.cache/msmix_ext/venv-cuda}
TORCH_CUDA_VERSION=${MSMIX_CUDA_TORCH_VERSION:-2.14.1}
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_CUDA_VERSION' or torch.version.cuda is None)" 2>/dev/null; then
  echo "cuda_compile_check: creating $VENV with torch==$TORCH_CUDA_VERSION (a CUDA build, ~5 GB)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_CUDA_VERSION" numpy ninja pybind11 setuptools wheel
fi
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -r csrc msmix_ext setup.py pyproject.toml README.md "$BUILD"/
rm -f "$BUILD"/msmix_ext/_C*.so
cd "$BUILD"
start=$(date +%s)
if ! MSMIX_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS=-g0 "$VENV/bin/python" setup.py build_ext --inplace >build.log 2>&1; then
  tail -n 60 build.log
  echo "cuda_compile_check: the CUDA build failed"
  exit 1
fi
# Show what nvcc compiled (the full command lines are long).
grep -E "building CUDA|/nvcc " build.log | sed -E 's#.*/nvcc .* -c ([^ ]+) .*#nvcc compiled \1#' || true
echo "cuda_compile_check: built in $(( $(date +%s) - start )) s"
"$VENV/bin/python" -c "
import msmix_ext, torch
assert msmix_ext.CUDA_COMPILED, 'the module was built without its CUDA kernels'
kernels = torch._C._dispatch_dump_table('msmix::mix')
assert 'CUDA: registered at' in kernels, kernels
print('cuda_compile_check: msmix_ext._C has CUDA kernels; torch', torch.__version__, 'CUDA', torch.version.cuda)
"
