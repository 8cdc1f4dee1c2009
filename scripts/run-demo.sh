#!/usr/bin/env bash
# Installs what is needed, builds, and runs the main job on its built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${RETRO_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)" --target retroinfer
"$BUILD_DIR"/launcher/retroinfer info
"$BUILD_DIR"/launcher/retroinfer demo
