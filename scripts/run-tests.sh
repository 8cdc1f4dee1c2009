#!/usr/bin/env bash
# Installs what is needed, builds everything (CUDA code too when nvcc is present) and runs every test.
# GPU tests skip with their reason when no device is visible; MPI tests run with 2 ranks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${RETRO_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" --timeout 900
