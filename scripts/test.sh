#!/usr/bin/env bash
# Builds hostcache and runs every test: the plain build, the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer, and the in-process
# concurrency tests under ThreadSanitizer. Exits non-zero on any failure.
#   scripts/test.sh            everything
#   scripts/test.sh --quick    the plain build only
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

# -g1: line tables and function names, which is what a sanitizer's report or
# a crash's stack needs; full -g made each test's compile about 60% longer
# (17.4 s against 10.8 s for test_attack_ops.cpp on the 2-core VM).
build() {  # build DIR [cmake args...]  (TARGETS="a b" builds only those)
  local dir=$1
  shift
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
    -DPython3_EXECUTABLE=/usr/bin/python3 "${launcher[@]}" "$@" >/dev/null
  if [[ -n "${TARGETS:-}" ]]; then
    cmake --build "$dir" -j "$jobs" --target ${TARGETS}
  else
    cmake --build "$dir" -j "$jobs"
  fi
}

# ctest in DIR [ctest args...]: everything but the relay label with one job
# per core, then the relay label with twice as many. Its cases mostly wait
# (on timeouts, a stopped Redis, a paused relay): 500 s of tests took 85 s
# of CPU on the 2-core VM, and side by side they take half the time.
run_tests() {
  local dir=$1
  shift
  (cd "$dir" && ctest --output-on-failure -j "$jobs" --timeout 900 -LE "relay${NOT_LABELS:+|$NOT_LABELS}" "$@")
  if [[ -d "$dir/relay" ]]; then
    (cd "$dir" && ctest --output-on-failure -j "$((2 * jobs))" --timeout 900 -L relay ${NOT_LABELS:+-LE "$NOT_LABELS"} "$@")
  fi
}

echo "== plain build =="
build build -DHOSTCACHE_CRASH_POINTS=OFF
run_tests build

echo "== Python: the hostcache module, the Django backend and app, gunicorn (pytest) =="
# Fails the script on any failure; exit 5 (no tests collected) is a failure too.
PYTHONPATH=build/python /usr/bin/python3 -m pytest -q tests/python
[[ "${1:-}" == "--quick" ]] && exit 0

echo "== AddressSanitizer + UndefinedBehaviorSanitizer =="
build build-asan -DHOSTCACHE_SANITIZE=address -DHOSTCACHE_CRASH_POINTS=ON -DHOSTCACHE_BUILD_BENCHMARKS=OFF -DHOSTCACHE_BUILD_EXAMPLES=OFF -DHOSTCACHE_BUILD_PYTHON=OFF
ASAN_OPTIONS=detect_leaks=1 NOT_LABELS=nosan run_tests build-asan

echo "== ThreadSanitizer (in-process concurrency tests) =="
TARGETS="test_threads test_memoize test_words" build build-tsan -DHOSTCACHE_SANITIZE=thread -DHOSTCACHE_BUILD_BENCHMARKS=OFF -DHOSTCACHE_BUILD_EXAMPLES=OFF -DHOSTCACHE_BUILD_TOOLS=OFF -DHOSTCACHE_BUILD_PYTHON=OFF -DHOSTCACHE_BUILD_RELAY=OFF
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j "$jobs" --timeout 900 -R "^(test_threads|test_memoize|test_words)$")

echo "== libFuzzer (clang, ASan + UBSan), bounded =="
scripts/fuzz.sh "${HOSTCACHE_FUZZ_SECONDS:-60}"
