#!/usr/bin/env bash
# compare.sh — hostcache against its peers on this machine, end to end.
#
#   [RESULTS_DIR=dir] [JOBS=n] bench/compare.sh [--quick] [--no-build] [--no-install]
#
# Installs the peers (scripts/install-deps.sh --bench), builds build-bench,
# starts Redis and memcached on 127.0.0.1 at random free ports (each with its
# own pid file and directory, stopped by pid on exit), runs every benchmark
# with a bounded duration (a few minutes on 2 cores; --quick: well under one),
# and writes bench/results/<hostname>-<date>.md with gnuplot PNGs beside it.
#
# Google Benchmark results are JSON (its CSV reporter aborts when runs carry
# different counters), read with jq.
#
# Exits non-zero if any hostcache run failed or read a corrupt value; a peer
# that cannot be started or run is reported as missing, not fatal.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$ROOT/build-bench}
BIN=$BUILD/bench
JOBS=${JOBS:-1}
QUICK=0 BUILD_IT=1 INSTALL=1
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --no-build) BUILD_IT=0 ;;
    --no-install) INSTALL=0 ;;
    *) echo "usage: $0 [--quick] [--no-build] [--no-install]" >&2; exit 64 ;;
  esac
done

HOST=$(hostname -s)
STAMP=$(date +%Y-%m-%d)
OUT=${RESULTS_DIR:-$ROOT/bench/results}  # RESULTS_DIR: somewhere else (a trial run)
BASE=$OUT/$HOST-$STAMP
REPORT=$BASE.md
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hostcache-compare.XXXXXX")
RAW=$WORK/raw
mkdir -p "$OUT" "$RAW"
SEG_PREFIX="hcbench-cmp-$$"
export HCBENCH_PREFIX=$SEG_PREFIX  # every segment the benchmarks create starts with it
failed=0

# ---- peers: started here, stopped by pid ---------------------------------------

stop_pidfile() {
  local f=$1 pid
  [[ -s $f ]] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pidfile "$WORK/redis/redis.pid"
  stop_pidfile "$WORK/memcached/memcached.pid"
  rm -f /dev/shm/hostcache."$SEG_PREFIX"-* 2>/dev/null || true
  rm -rf "/dev/shm/$SEG_PREFIX-lmdb" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    port_open "$p" || { echo "$p"; return 0; }
  done
  return 1
}
wait_port() {
  for _ in $(seq 100); do port_open "$1" && return 0; sleep 0.05; done
  return 1
}

REDIS_PORT="" MEMCACHED_PORT=""
start_redis() {
  command -v redis-server >/dev/null || return 1
  local p dir=$WORK/redis
  mkdir -p "$dir"
  p=$(free_port) || return 1
  redis-server --bind 127.0.0.1 --port "$p" --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log" >/dev/null || return 1
  wait_port "$p" && REDIS_PORT=$p
}
start_memcached() {
  command -v memcached >/dev/null || return 1
  local p dir=$WORK/memcached user=()
  mkdir -p "$dir"
  p=$(free_port) || return 1
  [[ $(id -u) -eq 0 ]] && user=(-u root)  # memcached refuses root without -u
  memcached -l 127.0.0.1 -p "$p" -U 0 -m 2048 -d -P "$dir/memcached.pid" "${user[@]}" || return 1
  wait_port "$p" && MEMCACHED_PORT=$p
}

# ---- install, build ---------------------------------------------------------------

if ((INSTALL)); then "$ROOT/scripts/install-deps.sh" --bench; fi
if ((BUILD_IT)); then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHOSTCACHE_BUILD_TESTS=OFF \
    -DHOSTCACHE_BUILD_EXAMPLES=OFF -DHOSTCACHE_BUILD_TOOLS=OFF -DHOSTCACHE_BUILD_BENCHMARKS=ON >/dev/null
  cmake --build "$BUILD" -j"$JOBS"
fi
[[ -x $BIN/hostcache-bench ]] || { echo "compare.sh: $BIN/hostcache-bench not built" >&2; exit 1; }

cut -d' ' -f1-3 /proc/loadavg >"$RAW/loadavg_start"
start_redis || echo "compare.sh: redis not available; skipped" >&2
start_memcached || echo "compare.sh: memcached not available; skipped" >&2

NPROC=$(nproc)
PROCS=()
for p in 1 2 4 8 16; do ((p <= (NPROC > 4 ? NPROC : 4))) && PROCS+=("$p"); done
# Each load run REPEAT times; the report takes the median (a shared 2-core
# machine makes single runs noisy).
if ((QUICK)); then DUR=0.5 WARM=0.2 KEYS=20000 REPEAT=1; else DUR=1.5 WARM=0.5 KEYS=100000 REPEAT=3; fi
BACKENDS=(hostcache mutex-map lmdb)
[[ -n $REDIS_PORT ]] && BACKENDS+=(redis redis-pipelined)
[[ -n $MEMCACHED_PORT ]] && BACKENDS+=(memcached)
built=$("$BIN/hostcache-bench" --help | sed -n 's/.*--backend TEXT:{\(.*\)}.*/\1/p')

CSV=$RAW/load.csv
run_load() {  # run_load LABEL BACKEND PROCS [extra args...]
  local label=$1 backend=$2 procs=$3 rc=0
  shift 3
  [[ ",$built," == *",$backend,"* ]] || { echo "  $backend not built; skipped"; return 0; }
  local port=()
  [[ $backend == redis* ]] && port=(--port "$REDIS_PORT")
  [[ $backend == memcached ]] && port=(--port "$MEMCACHED_PORT")
  for ((r = 1; r <= REPEAT; r++)); do
    echo "== $label: $backend x$procs ($r/$REPEAT)"
    rc=0
    timeout 120 "$BIN/hostcache-bench" --backend "$backend" -p "$procs" --keys "$KEYS" \
      --key-size 48 --value-size 256 --duration "$DUR" --warmup "$WARM" --max-seconds 60 \
      --name "$SEG_PREFIX-$label-$backend-$procs" --lmdb-dir "/dev/shm/$SEG_PREFIX-lmdb" \
      --seed "$r" --label "$label" --csv "$CSV" "${port[@]}" "$@" || rc=$?
    if ((rc != 0)); then
      echo "compare.sh: $label $backend x$procs exited $rc" >&2
      [[ $backend == hostcache ]] && failed=1
    fi
  done
  return 0
}

# 1. One process, every get a hit: the headline ratios.
for b in "${BACKENDS[@]}"; do run_load gethit "$b" 1 --read-ratio 1.0 --pipeline 32; done
# 2. 95% reads, uniform keys, against processes.
for b in "${BACKENDS[@]}"; do
  for p in "${PROCS[@]}"; do run_load scale "$b" "$p" --read-ratio 0.95 --pipeline 32; done
done
# 3. hostcache with everything on: Zipf, TTL, tags, clears and invalidations.
run_load churn hostcache 2 --read-ratio 0.9 --dist zipf --zipf 0.99 --ttl-ms 500 --tags 64 \
  --clear-per-s 2 --invalidate-per-s 50

# 4. Microbenchmarks, eviction quality, clear cost, memoize.
MIN_TIME=$([[ $QUICK == 1 ]] && echo 0.05 || echo 0.3)
REPS=$([[ $QUICK == 1 ]] && echo 1 || echo 3)
if [[ -x $BIN/bench_cache ]]; then
  echo "== bench_cache"
  timeout 300 "$BIN/bench_cache" --benchmark_min_time="$MIN_TIME" --benchmark_repetitions="$REPS" \
    --benchmark_report_aggregates_only=$([[ $REPS == 1 ]] && echo false || echo true) \
    --benchmark_out="$RAW/bench_cache.json" --benchmark_out_format=json || failed=1
fi
if [[ -x $BIN/eviction_quality ]]; then
  echo "== eviction_quality"
  ev=(--keys 100000 --requests 2000000 --warmup 1000000)
  ((QUICK)) && ev=(--keys 20000 --requests 200000 --warmup 100000)
  timeout 300 "$BIN/eviction_quality" "${ev[@]}" --markdown "$RAW/eviction.md" \
    --csv "$RAW/eviction.csv" || failed=1
fi
if [[ -x $BIN/clear_cost ]]; then
  echo "== clear_cost"
  cc=(--entries 1000 1000000 --capacity-mb 512)
  ((QUICK)) && cc=(--entries 1000 100000 --capacity-mb 64 --repeats 1 --loop 10000)
  timeout 300 "$BIN/clear_cost" "${cc[@]}" --markdown "$RAW/clear.md" --csv "$RAW/clear.csv" || failed=1
fi
if [[ -x $BIN/bench_memoize ]]; then  # the memoize work's headline (issue: memoize)
  echo "== bench_memoize"
  timeout 300 "$BIN/bench_memoize" --benchmark_min_time="$MIN_TIME" \
    --benchmark_out="$RAW/bench_memoize.json" --benchmark_out_format=json || failed=1
fi

# ---- report --------------------------------------------------------------------------

cut -d' ' -f1-3 /proc/loadavg >"$RAW/loadavg_end"
cp "$CSV" "$BASE-load.csv" 2>/dev/null || true
# Raw rows beside the report (CSV is git-ignored: the report carries the tables).
for f in eviction.csv clear.csv; do
  [[ -f $RAW/$f ]] && cp "$RAW/$f" "$BASE-$f"
done
"$ROOT/bench/report.sh" "$RAW" "$BASE" "$((failed))" "${PROCS[*]}"
echo "compare.sh: wrote $REPORT"
exit "$failed"
