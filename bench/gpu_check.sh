#!/usr/bin/env bash
# The GPU check of msmix_ext in one run, on a machine with one CUDA GPU (written for an
# H200 with python3, torch 2.11+cu130, nvcc 13.0, 16 cores, no network):
#
#   bash bench/gpu_check.sh [--dry-run] [BUDGET_SECONDS]      (budget: default 480)
#
# Steps, in this order; every step runs whatever happened to the ones before it:
#   build      the extension in place with its CUDA kernels (sm_90), then an import check
#   test_cuda  pytest python_tests/test_cuda.py
#   graph      bench/gpu_graph.py: sync-free operators, a training step replayed in a CUDA graph
#   suite      pytest on the rest of python_tests (the device fixture adds CUDA to most tests)
#   memcheck, racecheck, synccheck
#              compute-sanitizer on bench/gpu_sanitize.py (racecheck and synccheck on the
#              msmix kernels only; memcheck without the caching allocator)
#   bench      bench/bench_mix.py --device cuda --quick --no-compile (the compiled reference's
#              first Inductor compiles would not fit)
#
# Time: each step has a share of the budget (SHARES, in seconds of the default 480 s,
# scaled to the budget given) and must end by the sum of the shares up to its own, so time
# a step leaves unused passes to the next and the run ends within the budget (plus up to
# 5 s for a step killed at its deadline to exit). Such a step fails ("timeout").
#
# Results: a sanitizer that cannot attach to the GPU (not installed, or "Device not
# supported", as under some GPU runtimes) is "not available", not a failure; an error it
# finds fails the step. A pytest step whose tests were all skipped is "skipped". The exit
# status is 1 when a step failed, timed out or got no time, else 0.
#
# Files, all under $OUT (default out/gpu_check), seven at most: gpu_check.log (every
# step's output, also printed), summary.txt (the table printed at the end), test_cuda.xml
# and suite.xml (pytest's JUnit reports: every test's outcome) and the benchmark's
# bench_<device>.md, .json and _sweep.png.
#
# --dry-run rehearses the same steps, order and budget on a machine without a GPU, with
# CPU stand-ins: build imports the CPU build that scripts/install.sh made; test_cuda runs
# as it is (its tests skip); graph byte-compiles gpu_graph.py; suite is
# python_tests/test_errors.py; each sanitizer step runs gpu_sanitize.py on the CPU and
# reports like compute-sanitizer; bench times one small configuration on the CPU. To test
# this script, GPU_CHECK_DRY_OVERRIDE="STEP=WHAT ..." (dry run only) replaces stand-ins
# with WHAT = pass, fail, hang, unsupported (a sanitizer that cannot attach) or errors (a
# sanitizer that finds one); STEP "*" stands for every step not named.
set -uo pipefail  # no -e: a failing step must not stop the steps after it

cd "$(dirname "${BASH_SOURCE[0]}")/.."
usage="usage: bash bench/gpu_check.sh [--dry-run] [BUDGET_SECONDS]"
DRY_RUN=0
BUDGET=480
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    '' | *[!0-9]*) echo "$usage" >&2; exit 2 ;;
    *) BUDGET=$((10#$arg)) ;;
  esac
done
if ((BUDGET < 1)); then echo "$usage (the budget must be at least 1 s)" >&2; exit 2; fi

STEPS=(build test_cuda graph suite memcheck racecheck synccheck bench)
SHARES=(140 70 25 125 45 30 20 25)  # seconds of the default budget, 480 in all
DEFAULT_BUDGET=480

declare -A OVERRIDE=()
if [[ -n "${GPU_CHECK_DRY_OVERRIDE:-}" ]]; then
  if ((!DRY_RUN)); then echo "gpu_check: GPU_CHECK_DRY_OVERRIDE is for --dry-run only" >&2; exit 2; fi
  for item in $GPU_CHECK_DRY_OVERRIDE; do
    step=${item%%=*} what=${item#*=}
    if [[ $step != "*" && " ${STEPS[*]} " != *" $step "* ]] ||
      [[ " pass fail hang unsupported errors " != *" $what "* ]]; then
      echo "gpu_check: bad GPU_CHECK_DRY_OVERRIDE item '$item'" >&2
      exit 2
    fi
    OVERRIDE[$step]=$what
  done
fi

export PY=${PYTHON:-python3} DRY_RUN PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
LOG=$OUT/gpu_check.log
: >"$LOG"
STEP_LOG=$(mktemp)
trap 'rm -f "$STEP_LOG"' EXIT

# --- the steps on the GPU ---------------------------------------------------------------
# -v: each test's outcome reaches the log as it ends, so a step killed at its deadline still
# shows what ran and where it stopped; -rfEs: failures, errors and skips with their reasons
# at the end; the JUnit XML (written when pytest ends) holds every outcome.
run_pytest() { "$PY" -m pytest "$@" -v -rfEs -p no:cacheprovider; }

gpu_build() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  MSMIX_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace &&
    "$PY" -c "import torch, msmix_ext as mx
assert mx.CUDA_COMPILED, 'msmix_ext was built without its CUDA kernels'
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(), '| msmix_ext', mx.__version__)"
}
gpu_test_cuda() { run_pytest python_tests/test_cuda.py --junitxml="$OUT/test_cuda.xml"; }
gpu_graph() { "$PY" bench/gpu_graph.py; }
gpu_suite() {
  run_pytest python_tests --ignore=python_tests/test_cuda.py --junitxml="$OUT/suite.xml"
}
sanitize() {  # sanitize TOOL [OPTION...]: compute-sanitizer on the sanitizer workload
  if ! command -v compute-sanitizer >/dev/null; then
    echo "gpu_check: compute-sanitizer not found on PATH"
    return 1
  fi
  compute-sanitizer --tool "$@" --error-exitcode 1 --print-limit 20 "$PY" bench/gpu_sanitize.py
}
# Without the caching allocator every tensor is its own cudaMalloc, so an out-of-bounds
# access is caught at the tensor's edge.
gpu_memcheck() { PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitize memcheck; }
gpu_racecheck() { sanitize racecheck --kernel-name kns=msmix; }
gpu_synccheck() { sanitize synccheck --kernel-name kns=msmix; }
gpu_bench() { "$PY" bench/bench_mix.py --device cuda --quick --no-compile --out "$OUT"; }

# --- the CPU stand-ins of --dry-run -----------------------------------------------------
dry_build() {
  "$PY" -c "import torch, msmix_ext as mx
assert mx.HAS_EXTENSION, 'msmix_ext._C is not built: run scripts/install.sh'
print('stand-in: the CPU build of scripts/install.sh | torch', torch.__version__, '| msmix_ext', mx.__version__)"
}
dry_test_cuda() { gpu_test_cuda; }
dry_graph() { "$PY" -m py_compile bench/gpu_graph.py && echo "stand-in: bench/gpu_graph.py compiles"; }
dry_suite() { run_pytest python_tests/test_errors.py --junitxml="$OUT/suite.xml"; }
fake_sanitize() {  # the workload on the CPU, then the summary line compute-sanitizer prints
  "$PY" bench/gpu_sanitize.py --device cpu && echo "========= ERROR SUMMARY: 0 errors (stand-in)"
}
dry_memcheck() { fake_sanitize; }
dry_racecheck() { fake_sanitize; }
dry_synccheck() { fake_sanitize; }
dry_bench() {
  "$PY" bench/bench_mix.py --device cpu --quick --no-compile --no-e2e --workloads pooled --sweep 16 \
    --rounds 1 --min-run-time 0.01 --out "$OUT"
}

# step_command STEP WHAT: the step's command, or the canned behaviour WHAT of an override.
step_command() {
  case $2 in
    pass) echo "stand-in for $1: passes" ;;
    fail) echo "stand-in for $1: fails on purpose"; return 1 ;;
    hang) echo "stand-in for $1: hangs"; sleep 100000 ;;
    unsupported) echo "========= Error: Device not supported (stand-in)"; return 1 ;;
    errors)
      echo "========= Invalid __global__ write of size 4 bytes (stand-in)"
      echo "========= ERROR SUMMARY: 1 error"
      return 1
      ;;
    *) if ((DRY_RUN)); then "dry_$1"; else "gpu_$1"; fi ;;
  esac
}
# The steps run in a child bash (under timeout), which needs these functions.
export -f step_command run_pytest sanitize fake_sanitize $(compgen -A function | grep -E '^(gpu|dry)_')

# result STEP EXIT_STATUS: sets RESULT and DETAIL from the exit status and STEP_LOG.
result() {
  local step=$1 status=$2 errors
  DETAIL=""
  if ((status == 124 || status == 137)); then
    RESULT=timeout
  elif [[ $step == memcheck || $step == racecheck || $step == synccheck ]]; then
    errors=$(grep -oE "ERROR SUMMARY: [0-9]+ error" "$STEP_LOG" | tail -n 1 | grep -oE "[0-9]+")
    DETAIL=$(grep -m 1 -oE "ERROR SUMMARY: .*" "$STEP_LOG")
    if grep -qiE "device not supported|compute-sanitizer not found" "$STEP_LOG"; then
      RESULT="not available"
      DETAIL=$(grep -m 1 -iE "device not supported|compute-sanitizer not found" "$STEP_LOG" | sed 's/^=* *//')
    elif [[ -n $errors && $errors != 0 ]]; then
      RESULT=FAIL
    elif ((status == 0)); then
      RESULT=pass
    else
      RESULT=FAIL DETAIL="the workload failed (exit status $status)"
    fi
  elif [[ $step == test_cuda || $step == suite ]]; then
    DETAIL=$(grep -E "^(=+ )?([0-9]+ [a-z]+|no tests ran).* in [0-9.]+s" "$STEP_LOG" | tail -n 1 |
      sed -E 's/^=+ //; s/ =+$//')
    if ((status == 5)) || { ((status == 0)) && [[ $DETAIL != *passed* && $DETAIL == *skipped* ]]; }; then
      RESULT=skipped
    elif ((status == 0)); then
      RESULT=pass
    else
      RESULT=FAIL
    fi
  elif ((status == 0)); then
    RESULT=pass
  else
    RESULT=FAIL
  fi
  if [[ $RESULT == FAIL && -z $DETAIL ]]; then DETAIL="exit status $status"; fi
}

mode="on the GPU"
if ((DRY_RUN)); then mode="dry run: CPU stand-ins for the GPU parts"; fi
START=$SECONDS
share_sum=0
failed=0
ROWS=()
for i in "${!STEPS[@]}"; do
  step=${STEPS[$i]}
  share_sum=$((share_sum + SHARES[i]))
  deadline=$((BUDGET * share_sum / DEFAULT_BUDGET))
  begin=$SECONDS
  elapsed=$((begin - START))
  cap=$((deadline - elapsed))
  what=${OVERRIDE[$step]:-${OVERRIDE["*"]:-}}
  echo "=============== $step [${elapsed}s of ${BUDGET}s; cap ${cap}s]${what:+ (override: $what)} ===============" |
    tee -a "$LOG"
  if ((cap < 1)); then
    RESULT="no time" DETAIL="its deadline (${deadline}s into the run) had passed"
    cap=0 took=0
  else
    : >"$STEP_LOG"
    timeout --kill-after=5 "$cap" bash -c 'step_command "$@"' _ "$step" "$what" 2>&1 | tee -a "$LOG" "$STEP_LOG"
    status=${PIPESTATUS[0]}
    took=$((SECONDS - begin))
    result "$step" "$status"
    if [[ $RESULT == timeout ]]; then DETAIL="killed at its deadline, after ${took}s"; fi
  fi
  if [[ $RESULT == FAIL || $RESULT == timeout || $RESULT == "no time" ]]; then failed=$((failed + 1)); fi
  ROWS+=("$(printf "%-10s %-14s %5ss %5ss %5ss  %s" "$step" "$RESULT" "$elapsed" "$took" "$cap" "$DETAIL")")
done

{
  echo
  echo "gpu_check summary ($mode): ${BUDGET}s budget, $((SECONDS - START))s used"
  printf "%-10s %-14s %6s %6s %6s  %s\n" step result start time cap detail
  printf "%s\n" "${ROWS[@]}"
  if ((failed)); then echo "gpu_check: $failed step(s) failed"; else echo "gpu_check: no step failed"; fi
  echo "outputs: $OUT"
} | tee "$OUT/summary.txt" | tee -a "$LOG"
((failed == 0))
