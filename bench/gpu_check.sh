#!/usr/bin/env bash
# GPU checks of msmix_ext, run from anywhere on a machine with a CUDA GPU
# (written for one H200, torch 2.11+cu130, nvcc 13.0, 16 cores, no network):
#   1. build the extension in place with its CUDA kernels (sm_90)
#   2. the test suite (CUDA tests are parametrised over the device)
#   3. compute-sanitizer memcheck (every kernel), racecheck and synccheck
#      (msmix kernels) on bench/gpu_sanitize.py
#   4. sync-free and CUDA-graph checks: bench/gpu_graph.py
#   5. compute-sanitizer initcheck (msmix kernels; reported, not fatal; only
#      with 90 s left)
#   6. a short benchmark, if bench/bench_mix.py exists (in the time left;
#      its failure is reported, not fatal)
# Each step's output is tee'd to $OUT/<step>.log when OUT is set. Every step
# runs under a timeout cut to what is left of GPU_CHECK_BUDGET seconds
# (default 360); a failing step stops the script with its exit status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET:-360}
START=$SECONDS
if [[ -n "${OUT:-}" ]]; then mkdir -p "$OUT"; fi

section() {
  echo
  echo "=============== $1  [$((SECONDS - START))s of ${BUDGET}s] ==============="
}

# run NAME LIMIT CMD...: CMD under a timeout of min(LIMIT, time left), tee'd to $OUT/NAME.log.
run() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((limit > left)); then limit=$left; fi
  if ((limit < 10)); then
    echo "gpu_check: no time left for $name" >&2
    return 124
  fi
  if [[ -n "${OUT:-}" ]]; then
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1
  fi
}

section "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
run environment 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name())"
command -v compute-sanitizer >/dev/null || { echo "gpu_check: compute-sanitizer not on PATH" >&2; exit 1; }

section "build (MSMIX_FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0)"
export MSMIX_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16}
run build 150 "$PY" setup.py build_ext --inplace
run import 30 "$PY" -c "import msmix_ext; assert msmix_ext.CUDA_COMPILED, 'CUDA kernels missing'; print('msmix_ext', msmix_ext.__version__, 'CUDA_COMPILED', msmix_ext.CUDA_COMPILED)"

section "tests"
run pytest 120 "$PY" -m pytest python_tests -x -q

section "compute-sanitizer memcheck (all kernels, no caching allocator)"
# Without the caching allocator every tensor is its own cudaMalloc, so an
# out-of-bounds access is caught at the tensor's edge.
run memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
  --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py

section "compute-sanitizer racecheck (msmix kernels)"
run racecheck 45 compute-sanitizer --tool racecheck --kernel-name kns=msmix \
  --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py

section "compute-sanitizer synccheck (msmix kernels)"
run synccheck 35 compute-sanitizer --tool synccheck --kernel-name kns=msmix \
  --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py

section "sync-free and CUDA graph"
run graph 40 "$PY" bench/gpu_graph.py

section "compute-sanitizer initcheck (msmix kernels; reported, not fatal)"
if (( BUDGET - (SECONDS - START) > 90 )); then
  run initcheck 30 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool initcheck \
    --kernel-name kns=msmix --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py ||
    echo "gpu_check: initcheck reported problems (or ran out of time); see its log"
else
  echo "skipped: the benchmark gets the time left"
fi

section "benchmark (gets the time left; not fatal)"
bench_status="skipped (bench/bench_mix.py not found)"
if [[ -f bench/bench_mix.py ]]; then
  bench_out=()
  if [[ -n "${OUT:-}" ]]; then bench_out=(--out "$OUT/bench_results"); fi
  if run bench 300 "$PY" bench/bench_mix.py --device cuda --quick ${bench_out[@]+"${bench_out[@]}"}; then
    bench_status="done"
  else
    bench_status="FAILED or out of time (exit $?)"
  fi
fi

section "done"
echo "gpu_check: build, tests, sanitizers, sync and graph checks passed; benchmark: $bench_status;" \
  "$((SECONDS - START))s"
