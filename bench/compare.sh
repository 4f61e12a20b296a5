#!/usr/bin/env bash
# compare.sh — hostcache against its peers on this machine, end to end.
#
#   [RESULTS_DIR=dir] [JOBS=n] bench/compare.sh [--quick] [--peers] [--no-build] [--no-install]
#
# Installs the peers (scripts/install-deps.sh --bench), builds build-bench,
# starts Redis and memcached on 127.0.0.1 at random free ports (each with its
# own pid file and directory, stopped by pid on exit), runs every benchmark
# with a bounded duration (a few minutes on 2 cores; --quick: well under one),
# and writes bench/results/<hostname>-<date>.md with gnuplot PNGs beside it.
#
# The peer matrix (issue 15) runs in every mode: hostcache, floor (the minimal
# in-process seqlock table, backend_floor.cpp), APCu (bench/apcu_worker.php,
# and php-array, PHP's own ceiling), LMDB in /dev/shm, mutex-map, Redis and
# memcached side by side, for PEER_KEYS keys of 43-46 B, values of each
# PEER_VALUES size, 95% gets, uniform and Zipf 0.99, 1 and 2 workers; the
# report gives hostcache/floor and hostcache/APCu per cell. --peers runs only
# that matrix (about 8 minutes on 2 cores with the defaults below). Knobs:
# PEER_VALUES="256 4096" PEER_PROCS="1 2" PEER_DUR=1 PEER_WARM=0.3 PEER_REPEAT=3
# PEER_KEYS=100000 PEER_BACKENDS="hostcache floor apcu php-array lmdb mutex-map
# redis memcached" APCU_JIT=1 (PHP's tracing JIT for the APCu worker; 0: off).
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
QUICK=0 BUILD_IT=1 INSTALL=1 PEERS_ONLY=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    --peers) PEERS_ONLY=1 ;;
    --no-build) BUILD_IT=0 ;;
    --no-install) INSTALL=0 ;;
    *) echo "usage: $0 [--quick] [--peers] [--no-build] [--no-install]" >&2; exit 64 ;;
  esac
done

HOST=$(hostname -s)
STAMP=$(date +%Y-%m-%d)
OUT=${RESULTS_DIR:-$ROOT/bench/results}  # RESULTS_DIR: somewhere else (a trial run)
BASE=$OUT/${REPORT_NAME:-$HOST-$STAMP}  # REPORT_NAME: another file name (no .md)
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
  if ((PEERS_ONLY)); then
    cmake --build "$BUILD" -j"$JOBS" --target hostcache-bench
  else
    cmake --build "$BUILD" -j"$JOBS"
  fi
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
  local keys=${LKEYS:-$KEYS} ksize=${LKSIZE:-48} vsize=${LVSIZE:-256} dur=${LDUR:-$DUR}
  local warm=${LWARM:-$WARM} repeat=${LREPEAT:-$REPEAT}
  for ((r = 1; r <= repeat; r++)); do
    echo "== $label: $backend x$procs ($r/$repeat)"
    rc=0
    timeout 120 "$BIN/hostcache-bench" --backend "$backend" -p "$procs" --keys "$keys" \
      --key-size "$ksize" --value-size "$vsize" --duration "$dur" --warmup "$warm" --max-seconds 60 \
      --name "$SEG_PREFIX-$label-$backend-$procs" --lmdb-dir "/dev/shm/$SEG_PREFIX-lmdb" \
      --seed "$r" --label "$label" --csv "$CSV" "${port[@]}" "$@" || rc=$?
    if ((rc != 0)); then
      echo "compare.sh: $label $backend x$procs exited $rc" >&2
      [[ $backend == hostcache ]] && failed=1
    fi
  done
  return 0
}

# ---- the peer matrix (issue 15) ----------------------------------------------------

PEER_KEYS=${PEER_KEYS:-$KEYS} PEER_VALUES=${PEER_VALUES:-256 4096} PEER_PROCS=${PEER_PROCS:-1 2}
if ((QUICK)); then PEER_DUR=${PEER_DUR:-0.5} PEER_WARM=${PEER_WARM:-0.2} PEER_REPEAT=${PEER_REPEAT:-1}
else PEER_DUR=${PEER_DUR:-1} PEER_WARM=${PEER_WARM:-0.3} PEER_REPEAT=${PEER_REPEAT:-3}; fi
PEER_BACKENDS=${PEER_BACKENDS:-hostcache floor apcu php-array lmdb mutex-map redis memcached}
APCU_JIT=${APCU_JIT:-1}
have_apcu=0
php -d apc.enable_cli=1 -r 'exit(function_exists("apcu_enabled") && apcu_enabled() && function_exists("pcntl_fork") && in_array("xxh3", hash_algos()) ? 0 : 1);' 2>/dev/null && have_apcu=1
((have_apcu)) || echo "compare.sh: php-cli with APCu (php-apcu) not available; apcu skipped" >&2

# run_apcu LABEL STORE PROCS VSIZE [extra args...]: bench/apcu_worker.php, one CSV row per run.
run_apcu() {
  local label=$1 store=$2 procs=$3 vsize=$4 rc name
  shift 4
  name=$([[ $store == apcu ]] && echo apcu || echo php-array)
  ((have_apcu)) || { echo "  $name not available; skipped"; return 0; }
  # Room for every entry (APCu's ~100 B of overhead each) twice over, and a
  # hash table of 2 buckets per key: APCu does not resize it (entries_hint).
  local shm_mb=$(((PEER_KEYS * (vsize + 46 + 160) * 2 / 1048576 + 63) / 64 * 64))
  ((shm_mb < 256)) && shm_mb=256
  local php=(php -d apc.enable_cli=1 -d "apc.shm_size=${shm_mb}M" -d "apc.entries_hint=$((2 * PEER_KEYS))"
    -d apc.slam_defense=0 -d apc.ttl=0 -d apc.gc_ttl=0 -d memory_limit=-1)
  ((APCU_JIT)) && php+=(-d opcache.enable_cli=1 -d opcache.jit_buffer_size=64M -d opcache.jit=tracing)
  for ((r = 1; r <= PEER_REPEAT; r++)); do
    echo "== $label: $name x$procs ($r/$PEER_REPEAT)"
    rc=0
    timeout 120 "${php[@]}" "$ROOT/bench/apcu_worker.php" --store "$store" -p "$procs" \
      --keys "$PEER_KEYS" --key-size 43-46 --value-size "$vsize" --duration "$PEER_DUR" \
      --warmup "$PEER_WARM" --seed "$r" --label "$label" --csv "$CSV" "$@" || rc=$?
    ((rc == 0)) || echo "compare.sh: $label $name x$procs exited $rc" >&2
  done
}

peer_load() {  # peer_load VSIZE LABEL BACKEND PROCS [extra args...]: run_load with the matrix's sizes
  local vsize=$1
  shift
  LKEYS=$PEER_KEYS LKSIZE=43-46 LVSIZE=$vsize LDUR=$PEER_DUR LWARM=$PEER_WARM LREPEAT=$PEER_REPEAT \
    run_load "$@"
}

cut -d' ' -f1-3 /proc/loadavg >"$RAW/loadavg_peers_start"
peer_t0=$(date +%s)
for v in $PEER_VALUES; do
  for d in uniform zipf; do
    for p in $PEER_PROCS; do
      for b in $PEER_BACKENDS; do
        mix=(--read-ratio 0.95 --dist "$d" --zipf 0.99)
        case $b in
          apcu) run_apcu "peer-v$v-$d" apcu "$p" "$v" "${mix[@]}" ;;
          php-array) run_apcu "peer-v$v-$d" array "$p" "$v" "${mix[@]}" ;;
          redis | memcached)
            if [[ $b == redis && -z $REDIS_PORT ]] || [[ $b == memcached && -z $MEMCACHED_PORT ]]; then
              echo "  $b not running; skipped"
            else
              peer_load "$v" "peer-v$v-$d" "$b" "$p" "${mix[@]}"
            fi ;;
          *) peer_load "$v" "peer-v$v-$d" "$b" "$p" "${mix[@]}" ;;
        esac
      done
      echo "   (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
    done
  done
done
cut -d' ' -f1-3 /proc/loadavg >"$RAW/loadavg_peers_end"
echo "compare.sh: peer matrix took $(($(date +%s) - peer_t0)) s"
echo "$PEER_VALUES" >"$RAW/peer_values"
echo "$PEER_DUR s (after $PEER_WARM s of warmup)" >"$RAW/peer_window"
echo "$PEER_PROCS" >"$RAW/peer_procs"

if ((!PEERS_ONLY)); then
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
fi  # PEERS_ONLY

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
