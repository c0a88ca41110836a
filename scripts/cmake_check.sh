#!/usr/bin/env bash
# Builds the operators and the C++ test with CMake against .venv's torch and
# runs ctest. Run scripts/install.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(.venv/bin/python -c "import torch; print(torch.utils.cmake_prefix_path)")
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_CXX_FLAGS=-g0 >/dev/null
cmake --build build/cmake
ctest --test-dir build/cmake --output-on-failure
