#!/usr/bin/env bash
# Mutation testing: how many planted bugs make some test fail. Not part of CI (it takes
# tens of minutes); run it before you stop on any change to the ops or to the tests.
#
#   bash scripts/mutation.sh [python|cpp|all]   (default all)
#
# python: mutmut (PyPI, installed into .venv on first use) mutates the core Python
#   modules (MUTATE below) and runs, for each mutant, the tests that reach the mutated
#   function. Results: `cd "$WORK/repo" && ../../.venv/bin/mutmut results` is printed at
#   the end; the summary goes to $WORK/python.txt.
# cpp: each line of scripts/cpp_mutants.tsv is one single-line mutant of a csrc file (a
#   fixed string replaced once; \n in either field is a newline). The script applies it to a copy, rebuilds incrementally, runs
#   the fast suite (FAST below) and records killed / survived in $WORK/cpp.txt.
#
# Everything happens in a copy of the tracked files under $WORK (default
# /tmp/msmix-mutation); the checkout is never modified.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHAT=${1:-all}
WORK=${WORK:-/tmp/msmix-mutation}
PY=$ROOT/.venv/bin/python
# One thread: forked test processes must not inherit an OpenMP pool.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
MUTATE='["msmix_ext/mixing.py", "msmix_ext/ratios.py", "msmix_ext/augment.py", "msmix_ext/module.py",
  "msmix_ext/sig.py", "msmix_ext/train/metrics.py"]'
# The C++ mutants' suite: the op tests, quickest and most sensitive first (-x stops at the
# first failure, so a killed mutant costs seconds; a survivor runs all of it).
FAST=(python_tests/test_draws.py python_tests/test_parameters.py python_tests/test_errors.py
      python_tests/test_ops.py python_tests/test_msmix.py python_tests/test_augment.py
      python_tests/test_hardening.py -k "not leak and not compile and not export and not threads")

copy_repo() {  # tracked and new (not ignored) files, plus the built extension
  rm -rf "$1" && mkdir -p "$1"
  git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$1"
  cp msmix_ext/_C*.so "$1/msmix_ext/"
}

run_python() {
  "$PY" -m pip show mutmut >/dev/null 2>&1 || "$PY" -m pip install -q mutmut
  copy_repo "$WORK/repo"
  cat >> "$WORK/repo/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["msmix_ext"]
only_mutate = $MUTATE
also_copy = ["python_tests", "README.md"]
pytest_add_cli_args_test_selection = ["python_tests"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q", "-k",
  "not leak and not compile and not export and not threads and not every_augmentation_runs"]
TOML
  (cd "$WORK/repo" && "$ROOT/.venv/bin/mutmut" run --max-children 2 || true)
  (cd "$WORK/repo" && "$ROOT/.venv/bin/mutmut" results --all true > "$WORK/python_all.txt" 2>&1 || true)
  (cd "$WORK/repo" && "$ROOT/.venv/bin/mutmut" export-cicd-stats >/dev/null 2>&1 && cat mutants/mutmut-cicd-stats.json \
    | tee "$WORK/python.txt")
  echo
}

run_cpp() {
  local repo="$WORK/cpp" killed=0 survived=0 n=0
  copy_repo "$repo"
  (cd "$repo" && CFLAGS=-g0 "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1)
  : > "$WORK/cpp.txt"
  while IFS=$'\t' read -r file old new; do
    [[ -z "$file" || "$file" == \#* ]] && continue
    n=$((n + 1))
    cp "$ROOT/$file" "$repo/$file"
    "$PY" - "$repo/$file" "$old" "$new" <<'PYEOF'
import sys
path, old, new = sys.argv[1:]
old, new = (x.encode().decode("unicode_escape") for x in (old, new))
text = open(path).read()
assert text.count(old) == 1, f"{path}: {old!r} must occur exactly once, found {text.count(old)}"
open(path, "w").write(text.replace(old, new))
PYEOF
    if ! (cd "$repo" && CFLAGS=-g0 "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1); then
      verdict="killed (does not compile)"
    elif (cd "$repo" && timeout 900 "$PY" -m pytest "${FAST[@]}" -x -q -p no:cacheprovider >/dev/null 2>&1); then
      verdict="SURVIVED"
    else
      verdict="killed"
    fi
    [[ $verdict == SURVIVED ]] && survived=$((survived + 1)) || killed=$((killed + 1))
    printf '%s\t%s: %s -> %s\n' "$verdict" "$file" "$old" "$new" | tee -a "$WORK/cpp.txt"
    cp "$ROOT/$file" "$repo/$file"
  done < scripts/cpp_mutants.tsv
  (cd "$repo" && CFLAGS=-g0 "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1)
  echo "C++: $killed of $n mutants killed, $survived survived" | tee -a "$WORK/cpp.txt"
}

mkdir -p "$WORK"
case $WHAT in
  python) run_python ;;
  cpp) run_cpp ;;
  all) run_python; run_cpp ;;
  *) echo "usage: $0 [python|cpp|all]" >&2; exit 2 ;;
esac
