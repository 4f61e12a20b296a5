#!/usr/bin/env bash
# The main demo: a prefork HTTP server (examples/prefork-server) whose worker
# processes share one hostcache segment.
#
# Builds the server and its load generator, then, on a free loopback port:
#   1. drives the server with the cache off, then on, and prints requests/s,
#      latency p50/p99 and the hit ratio (every response is verified);
#   2. proves that an invalidation sent to one worker is seen by all of them;
#   3. stops the server with SIGTERM and checks that it exits 0 and leaves no
#      worker behind.
# Ends by itself in well under a minute once built.
#   BUILD_DIR=build  SECONDS_PER_RUN=5  WORKERS=4  CONNECTIONS=8  scripts/demo-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
WORKERS=${WORKERS:-4}
CONNECTIONS=${CONNECTIONS:-8}

echo "== building prefork-server and prefork-loadgen in $BUILD_DIR/ (a few minutes the first time) =="
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target prefork-server prefork-loadgen >/dev/null
server_bin=$BUILD_DIR/examples/prefork-server
loadgen_bin=$BUILD_DIR/examples/prefork-loadgen

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true  # its workers follow (PR_SET_PDEATHSIG)
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# start_server CACHE: starts the server, sets server_pid and port.
start_server() {
  : >"$work/out"
  "$server_bin" --port 0 --workers "$WORKERS" --cache "$1" --segment "demo-server-$$" \
    --unlink-on-exit >"$work/out" 2>"$work/err" &
  server_pid=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$work/out" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/err"; exit 1; }
    sleep 0.1
  done
  port=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/out" | head -1 | cut -d: -f2)
  [[ -n "$port" ]] || { echo "the server did not start"; cat "$work/err"; exit 1; }
  sed 's/^/  /' "$work/out"
}

# stop_server: SIGTERM, then checks exit 0 and that no worker is left.
stop_server() {
  local workers
  workers=$(pgrep -P "$server_pid" | tr '\n' ' ')
  kill -TERM "$server_pid"
  local status=0
  wait "$server_pid" || status=$?
  server_pid=""
  local left=""
  for pid in $workers; do
    kill -0 "$pid" 2>/dev/null && left+=" $pid"
  done
  if [[ $status -ne 0 || -n "$left" ]]; then
    echo "  SIGTERM: exit status $status; workers left:${left:- none}"
    cat "$work/err"
    exit 1
  fi
  echo "  SIGTERM: server exited 0; workers ${workers}all gone"
}

load() {  # load LABEL [extra loadgen args]
  local label=$1
  shift
  "$loadgen_bin" load --port "$port" --seconds "$SECONDS_PER_RUN" --connections "$CONNECTIONS" \
    --label "$label" "$@" | sed 's/^/  /'
}

echo
echo "== 1. cache off: every request extracts the metadata (50 ms of CPU) =="
echo "   ($CONNECTIONS connections share $(nproc) cores: latency is mostly waiting for a core)"
start_server off
load "cache off"
stop_server

echo
echo "== 2. cache on: the $WORKERS workers share one cache in /dev/shm =="
start_server on
load "cache on " --server-stats

echo
echo "== 3. an invalidation sent to one worker is seen by every worker =="
"$loadgen_bin" prove-invalidation --port "$port"

echo
echo "== 4. graceful stop =="
stop_server
