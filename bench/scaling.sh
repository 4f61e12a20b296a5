#!/usr/bin/env bash
# scaling.sh — hostcache-bench at 1, 2, 4, 8 and 16 processes, for a machine
# with the cores to show it. Bounded: each run stops after DURATION seconds
# (plus warmup) and is killed past a hard limit.
#
#   bench/scaling.sh [BUILD_DIR] [extra hostcache-bench args...]
#   DURATION=3 READ_RATIO=0.95 KEYS=100000 bench/scaling.sh build-bench --dist zipf
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-bench}
shift || true
BIN=$BUILD/bench/hostcache-bench
[[ -x $BIN ]] || { echo "scaling.sh: build $BIN first (see bench/compare.sh)" >&2; exit 1; }
DURATION=${DURATION:-3} READ_RATIO=${READ_RATIO:-0.95} KEYS=${KEYS:-100000}
OUT=${OUT:-$ROOT/bench/results/$(hostname -s)-$(date +%Y-%m-%d)-scaling.csv}
mkdir -p "$(dirname "$OUT")"
echo "scaling.sh: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); rows -> $OUT"
for p in 1 2 4 8 16; do
  timeout $((${DURATION%.*} + 60)) "$BIN" --backend hostcache -p "$p" --keys "$KEYS" --key-size 48 \
    --value-size 256 --read-ratio "$READ_RATIO" --duration "$DURATION" --warmup 0.5 \
    --max-seconds "$((${DURATION%.*} + 30))" --label scaling --csv "$OUT" "$@"
done
