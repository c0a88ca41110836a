#!/usr/bin/env bash
# Installs everything (scripts/install.sh) and runs the test suite. Extra
# arguments go to pytest (e.g. --slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pytest python_tests -q "$@"
