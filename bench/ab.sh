#!/usr/bin/env bash
# ab.sh — two builds of bench_cache, interleaved round by round, on a noisy machine.
#
#   bench/ab.sh [--rounds N] [--min-time S] [--filter REGEX] OLD_BUILD_DIR NEW_BUILD_DIR
#
# Runs OLD's and NEW's bench_cache in turn, N rounds (default 5), each with
# the same Google Benchmark filter (default: the set rows, hostcache and the
# mutex map, 256 B and 4 KiB). On a VM whose figures move by 10-40% from one
# minute to the next, one run of each build compares the minutes, not the
# builds; rows taken in the same round share the machine's state. Prints
# every row's median per build and, for each hostcache row with a mutex-map
# row of the same arguments (and each get_many row with the one-get row of
# its size), the per-round ratios and their median.
#
# The build directories are those of a CMake build with benchmarks
# (HOSTCACHE_BUILD_BENCH, the default): OLD_BUILD_DIR/bench/bench_cache must
# exist. To build an older tree beside this one:
#
#   git archive REV | tar -x -C /tmp/old-src
#   cmake -S /tmp/old-src -B /tmp/old-build -DCMAKE_BUILD_TYPE=Release -DHOSTCACHE_BUILD_TESTS=OFF
#   cmake --build /tmp/old-build --target bench_cache
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

ROUNDS=5
MIN_TIME=0.5
FILTER='BM_set<(HostcacheTable|Mutex)>/value:(256|4096)$'
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --min-time) MIN_TIME=${2:?--min-time needs seconds}; shift 2 ;;
    --filter) FILTER=${2:?--filter needs a regex}; shift 2 ;;
    -*) echo "ab.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ ${#ARGS[@]} -ne 2 ]]; then
  echo "ab.sh: give two build directories, OLD and NEW (see --help)" >&2
  exit 2
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: --rounds must be a positive integer, not '$ROUNDS'" >&2; exit 2; }
for b in "${ARGS[@]}"; do
  [[ -x $b/bench/bench_cache ]] || { echo "ab.sh: $b/bench/bench_cache is missing (build the bench_cache target there)" >&2; exit 2; }
done

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for ((r = 1; r <= ROUNDS; r++)); do
  for side in old new; do
    dir=${ARGS[0]}; [[ $side == new ]] && dir=${ARGS[1]}
    echo "ab.sh: round $r/$ROUNDS, $side ($dir)" >&2
    "$dir/bench/bench_cache" --benchmark_filter="$FILTER" --benchmark_min_time="$MIN_TIME" \
      --benchmark_format=json --benchmark_out="$OUT/$side-$r.json" --benchmark_out_format=json >/dev/null
  done
done

/usr/bin/python3 - "$OUT" "$ROUNDS" "${ARGS[0]}" "${ARGS[1]}" <<'EOF'
import json, re, statistics, sys

out, rounds, old_dir, new_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def rows(side, r):
    with open(f"{out}/{side}-{r}.json") as f:
        data = json.load(f)
    got = {}
    for b in data["benchmarks"]:
        if "error_message" in b:
            sys.exit(f"ab.sh: {side} round {r}: {b['name']} failed: {b['error_message']}")
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
        got[b["name"]] = b["cpu_time"] * scale
    return got

data = {side: [rows(side, r) for r in range(1, rounds + 1)] for side in ("old", "new")}
print(f"old: {old_dir}\nnew: {new_dir}\nrounds: {rounds} (medians of CPU time per operation)\n")
names = sorted({n for side in data.values() for rnd in side for n in rnd})
print(f"| row | old | new | new/old |\n|---|---:|---:|---:|")
for n in names:
    o = [rnd[n] for rnd in data["old"] if n in rnd]
    w = [rnd[n] for rnd in data["new"] if n in rnd]
    if o and w:
        mo, mw = statistics.median(o), statistics.median(w)
        print(f"| {n} | {mo:.0f} ns | {mw:.0f} ns | {mw / mo:.2f} |")
print()
# The targets' ratios, per round: a hostcache row to the mutex map's, and
# get_many of 16 to one get hit of the same size.
def baseline(n):
    if m := re.match(r"(BM_\w+)<HostcacheTable>(.*)", n):
        return f"{m.group(1)}<Mutex>{m.group(2)}", "mutex map"
    if m := re.match(r"BM_get_many_16(?:_into)?(/.*)", n):
        return f"BM_get_hit<HostcacheTable>{m.group(1)}", "one get"
    return None, None

for side in ("old", "new"):
    for n in names:
        peer, what = baseline(n)
        ratios = [rnd[n] / rnd[peer] for rnd in data[side] if peer and n in rnd and peer in rnd]
        if ratios:
            print(f"{side} {n} / {what}: rounds {' '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}")
EOF
