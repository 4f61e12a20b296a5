#!/usr/bin/env bash
# Builds hostcache and runs the demo: processes sharing one cache.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target shared_demo
./build/examples/shared_demo
