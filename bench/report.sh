#!/usr/bin/env bash
# report.sh — turns compare.sh's raw results into BASE.md and BASE-*.png.
#
#   bench/report.sh RAW_DIR BASE FAILED "PROCS..."
#
# Every figure in the report is read from a file a benchmark wrote in this
# run; a missing one is printed as "n/a", never estimated.
set -euo pipefail
RAW=$1 BASE=$2 FAILED=$3 PROCS=$4
REPORT=$BASE.md
LOAD=$RAW/load.csv
NAME=$(basename "$BASE")

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
virt=$(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1)
top=$(dirname "$0")/..
rev=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo "no commit")
[[ -n $(git -C "$top" status --porcelain -- src include 2>/dev/null) ]] && rev="$rev with uncommitted library changes"
MACHINE="$(nproc)-core ${virt:+$virt VM, }$cpu, $mem, Debian $(cat /etc/debian_version 2>/dev/null), Linux $(uname -r)"

# Google Benchmark JSON -> TSV: name real_time cpu_time unit items/s label error.
# Repeated runs keep only their median; single runs keep their iteration row.
gb_tsv() {
  jq -r '.benchmarks[]
    | select((.run_type == "aggregate" and .aggregate_name == "median") or
             (.run_type == "iteration" and (.repetitions // 1) <= 1))
    | [(.run_name // .name), .real_time, .cpu_time, .time_unit, (.items_per_second // ""),
       ((.label // "") | gsub("\t"; " ")), (if .error_occurred then (.error_message // "error") else "" end)]
    | @tsv' "$1"
}
for f in bench_cache bench_memoize; do
  [[ -f $RAW/$f.json ]] && command -v jq >/dev/null && gb_tsv "$RAW/$f.json" >"$RAW/$f.tsv"
done

# load_field LABEL BACKEND PROCS COLUMN: the median over repeated runs, from the load CSV.
load_field() {
  [[ -f $LOAD ]] || { echo ""; return; }
  awk -F, -v l="$1" -v b="$2" -v p="$3" -v col="$4" '
    NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["label"] == l && $c["backend"] == b && $c["processes"] == p { v[n++] = $c[col] + 0 }
    END {
      if (n == 0) { print ""; exit }
      for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
      print v[int((n - 1) / 2)] }' "$LOAD"
}
# load_max LABEL BACKEND COLUMN: the largest value over every process count and repeat.
load_max() {
  [[ -f $LOAD ]] || { echo ""; return; }
  awk -F, -v l="$1" -v b="$2" -v col="$3" '
    NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["label"] == l && $c["backend"] == b && (m == "" || $c[col] + 0 > m) { m = $c[col] + 0 }
    END { if (m != "") printf "%.0f", m }' "$LOAD"
}
# bench_field NAME COLUMN(2 real, 3 cpu): a Google Benchmark figure.
bench_field() {
  [[ -f $RAW/bench_cache.tsv ]] || { echo ""; return; }
  awk -F'\t' -v n="$1" -v col="$2" '$1 == n { v = $col } END { print v }' "$RAW/bench_cache.tsv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print ""; else printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "") print "n/a"; else if (v >= 1e6) printf "%.2f M", v / 1e6; else if (v >= 1e3) printf "%.1f k", v / 1e3; else printf "%.0f", v }'; }
# has_label LABEL: whether the load CSV has a row with this label.
has_label() { [[ -f $LOAD ]] && awk -F, -v l="$1" 'NR > 1 && $1 == l { f = 1; exit } END { exit !f }' "$LOAD"; }
# label_backends LABEL...: the backends with rows under these labels, in the order they ran.
label_backends() {
  [[ -f $LOAD ]] || return 0
  awk -F, -v ls=" $* " 'NR > 1 && index(ls, " " $1 " ") { print $2 }' "$LOAD" | awk '!seen[$0]++'
}
# load_best LABEL BACKEND PROCS COLUMN: the largest value over repeated runs (on a
# shared machine, other programs only ever take throughput away).
load_best() {
  [[ -f $LOAD ]] || { echo ""; return; }
  awk -F, -v l="$1" -v b="$2" -v p="$3" -v col="$4" '
    NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $c["label"] == l && $c["backend"] == b && $c["processes"] == p && (m == "" || $c[col] + 0 > m) { m = $c[col] + 0 }
    END { print m }' "$LOAD"
}
# load_count LABEL BACKEND PROCS: how many runs the median is of.
load_count() {
  awk -F, -v l="$1" -v b="$2" -v p="$3" 'NR > 1 && $1 == l && $2 == b && $3 == p { n++ } END { print n + 0 }' "$LOAD"
}
vname() { awk -v v="$1" 'BEGIN { if (v % 1024 == 0) printf "%d KiB", v / 1024; else printf "%d B", v }'; }

# The peer matrix (issue 15): ops/s per backend and cell, then hostcache's
# ratio to the floor and to APCu per cell.
peer_section() {
  local values procs dists="uniform zipf" v d p b cells=() label
  values=$(cat "$RAW/peer_values" 2>/dev/null || awk -F, 'NR > 1 && $1 ~ /^peer-v/ { print $6 }' "$LOAD" | awk '!seen[$0]++' | xargs)
  procs=$(cat "$RAW/peer_procs" 2>/dev/null || echo "1 2")
  local labels=()
  for v in $values; do for d in $dists; do labels+=("peer-v$v-$d"); done; done
  local first=${labels[0]}
  has_label "$first" || return 0
  local keys nrep
  keys=$(awk -F, -v l="$first" 'NR > 1 && $1 == l { print $4; exit }' "$LOAD")
  nrep=$(load_count "$first" hostcache 1)
  echo "## hostcache, the floor and its peers (issue 15)"
  echo
  echo "$keys keys of 43-46 B (key i has 43 + i % 4 bytes), 95% gets / 5% sets, a miss refilled (cache-aside), uniform or Zipf 0.99 keys; every get verified (key, length, checksum) in every backend, APCu's in PHP by the same format. ops/s summed over the workers, the median of $nrep runs of $(cat "$RAW/peer_window" 2>/dev/null || echo "?") each. Workers are processes, except floor and mutex-map (threads of one process). floor is the minimal in-process seqlock table (bench/backend_floor.cpp); php-array is a PHP array in each worker (nothing shared), the ceiling PHP's own loop puts on the APCu figure."
  if [[ -f $RAW/loadavg_peers_start ]]; then
    echo "Load average (1, 5, 15 min) before the matrix: $(cat "$RAW/loadavg_peers_start"); after: $(cat "$RAW/loadavg_peers_end" 2>/dev/null). The last column is the largest share of the machine's CPU that other programs used during one run of the row (for Redis and memcached it includes their server)."
  fi
  echo
  for v in $values; do
    echo "### $(vname "$v") values: ops/s"
    echo
    printf "| backend |"
    for d in $dists; do for p in $procs; do printf " %s x%s |" "$d" "$p"; done; done
    echo " others' CPU, worst |"
    printf "|---|"
    for d in $dists; do for p in $procs; do printf -- "---|"; done; done
    echo "---|"
    for b in $(label_backends "peer-v$v-uniform" "peer-v$v-zipf"); do
      printf "| %s |" "$b"
      local worst=""
      for d in $dists; do
        for p in $procs; do printf " %s |" "$(fmt "$(load_field "peer-v$v-$d" "$b" "$p" ops_per_s)")"; done
        local w
        w=$(load_max "peer-v$v-$d" "$b" other_cpu_pct)
        [[ -n $w ]] && { [[ -z $worst ]] || awk -v a="$w" -v b="$worst" 'BEGIN { exit !(a > b) }'; } && worst=$w
      done
      echo " ${worst:-n/a}% |"
    done
    echo
  done
  local peer name target stat fn
  for stat in median best; do
  fn=$([[ $stat == median ]] && echo load_field || echo load_best)
  for peer in floor apcu; do
    name=$([[ $peer == floor ]] && echo "the floor" || echo "APCu")
    target=$([[ $peer == floor ]] && echo " (target: >= 0.7)" || echo "")
    echo "### hostcache / $name$target, $([[ $stat == median ]] && echo "medians" || echo "best of $nrep runs each")"
    echo
    printf "| values |"
    for d in $dists; do for p in $procs; do printf " %s x%s |" "$d" "$p"; done; done
    echo
    printf "|---|"
    for d in $dists; do for p in $procs; do printf -- "---|"; done; done
    echo
    for v in $values; do
      printf "| %s |" "$(vname "$v")"
      for d in $dists; do
        for p in $procs; do
          local r
          r=$(ratio "$($fn "peer-v$v-$d" hostcache "$p" ops_per_s)" "$($fn "peer-v$v-$d" "$peer" "$p" ops_per_s)")
          if [[ -n $r && $peer == floor ]] && awk -v r="$r" 'BEGIN { exit !(r < 0.7) }'; then r="**$r**"; fi
          printf " %s |" "${r:-n/a}"
        done
      done
      echo
    done
    echo
  done
  done
  echo "Get latency, sampled (p50 / p99 ns; APCu's includes PHP's call overhead, floor's and mutex-map's are in-process):"
  echo
  printf "| backend |"
  for v in $values; do for d in $dists; do printf " %s %s x1 |" "$(vname "$v")" "$d"; done; done
  echo
  printf "|---|"
  for v in $values; do for d in $dists; do printf -- "---|"; done; done
  echo
  for b in $(label_backends "${labels[@]}"); do
    printf "| %s |" "$b"
    for v in $values; do
      for d in $dists; do
        local p50 p99
        p50=$(load_field "peer-v$v-$d" "$b" 1 get_p50_ns) p99=$(load_field "peer-v$v-$d" "$b" 1 get_p99_ns)
        printf " %s |" "$([[ -n $p50 ]] && echo "$p50 / $p99" || echo n/a)"
      done
    done
    echo
  done
  echo
}

verdict() { # verdict VALUE OP LIMIT
  awk -v v="$1" -v op="$2" -v lim="$3" 'BEGIN {
    if (v == "") { print "not measured"; exit }
    ok = (op == ">=") ? v >= lim : v <= lim; print ok ? "met" : "**missed**" }'
}

{
  echo "# hostcache benchmarks: $NAME"
  echo
  echo "Machine: $MACHINE. Tree: $rev. Produced by \`bench/compare.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo "Every value read was verified (key, length, checksum); a corrupt read fails the run."
  if [[ -f $RAW/loadavg_start ]]; then
    echo "Load average (1, 5, 15 min) before the runs: $(cat "$RAW/loadavg_start"); after: $(cat "$RAW/loadavg_end" 2>/dev/null)."
    echo "Anything else running on the machine inflates every figure here and flattens the scaling."
  fi
  ((FAILED)) && echo && echo "**Some hostcache runs FAILED; see the log. Their figures are absent.**"
  echo

  peer_section

  # ---- targets --------------------------------------------------------------------
  if has_label gethit || has_label scale || [[ -f $RAW/bench_cache.tsv || -f $RAW/eviction.csv ]]; then
  hc=$(load_field gethit hostcache 1 ops_per_s)
  redis=$(load_field gethit redis 1 ops_per_s)
  lmdb=$(load_field gethit lmdb 1 ops_per_s)
  mm=$(load_field gethit mutex-map 1 ops_per_s)
  gh=$(bench_field "BM_get_hit<HostcacheTable>/value:256" 2)
  gm=$(bench_field "BM_get_hit<Mutex>/value:256" 2)
  s1=$(load_field scale hostcache 1 ops_per_s)
  s2=$(load_field scale hostcache 2 ops_per_s)
  evmin=""
  [[ -f $RAW/eviction.csv ]] && evmin=$(awk -F, 'NR > 1 { if (m == "" || $11 < m) m = $11 } END { print m }' "$RAW/eviction.csv")
  clear_r="" inval_r=""
  if [[ -f $RAW/clear.csv ]]; then
    clear_r=$(awk -F, 'NR == 2 { a = $4 } END { if (a > 0) printf "%.2f", $4 / a }' "$RAW/clear.csv")
    inval_r=$(awk -F, 'NR == 2 { a = $6 } END { if (a > 0) printf "%.2f", $6 / a }' "$RAW/clear.csv")
  fi
  [[ -n $gh ]] && gh=$(printf "%.1f" "$gh")
  r_redis=$(ratio "$hc" "$redis") r_lmdb=$(ratio "$hc" "$lmdb") r_map=$(ratio "$gh" "$gm")
  r_map_load=$(ratio "$mm" "$hc") r_scale=$(ratio "$s2" "$s1")
  echo "## Targets"
  echo
  echo "| target | measured | verdict |"
  echo "|---|---|---|"
  echo "| get hit, 48 B key, 256 B value, one process: under 100 ns | ${gh:-n/a} ns (bench_cache, median) | $(verdict "$gh" "<=" 100) |"
  echo "| one process get hit: >= 100x Redis (one round trip per op) | ${r_redis:-n/a}x ($(fmt "$hc") vs $(fmt "$redis") ops/s) | $(verdict "$r_redis" ">=" 100) |"
  echo "| one process get hit: >= 3x LMDB | ${r_lmdb:-n/a}x ($(fmt "$hc") vs $(fmt "$lmdb") ops/s) | $(verdict "$r_lmdb" ">=" 3) |"
  echo "| one process get hit: within 3x of unordered_map under a mutex | ${r_map:-n/a}x the map's time (bench_cache); the map does ${r_map_load:-n/a}x hostcache's ops/s in hostcache-bench | $(verdict "$r_map" "<=" 3) |"
  echo "| 95% reads uniform: 2 processes >= 1.8x one | ${r_scale:-n/a}x ($(fmt "$s2") vs $(fmt "$s1") ops/s; other programs used up to $(load_max scale hostcache other_cpu_pct)% of the CPU during these runs) | $(verdict "$r_scale" ">=" 1.8) |"
  echo "| eviction within 2 points of exact LRU (same arena bytes) | worst row ${evmin:-n/a} points | $(verdict "$evmin" ">=" -2) |"
  echo "| clear()/invalidate() cost at 1M entries = at 1k | 1M/1k: clear ${clear_r:-n/a}x, invalidate ${inval_r:-n/a}x (mean of back-to-back calls; met when <= 1.5x, a walk of 1M entries would be ~1000x) | $(verdict "$clear_r" "<=" 1.5) |"
  echo
  fi

  # ---- load runs ------------------------------------------------------------------
  if has_label gethit; then
    echo "## One process, every get a hit (hostcache-bench)"
    echo
    echo "$(awk -F, 'NR == 2 { print $4 }' "$LOAD") keys of 48 B, values of 256 B, all present; uniform keys; 1 worker; latency sampled (every op over a socket, 1 in 32 in memory). redis-pipelined latency is per batch of $(load_field gethit redis-pipelined 1 pipeline) ops."
    echo
    echo "| backend | ops/s | hostcache / backend | get p50 | get p99 | get p999 |"
    echo "|---|---|---|---|---|---|"
    for b in $(awk -F, 'NR > 1 && $1 == "gethit" { print $2 }' "$LOAD" | awk '!seen[$0]++'); do
      ops=$(load_field gethit "$b" 1 ops_per_s)
      kind=get
      [[ $(load_field gethit "$b" 1 get_p50_ns) == 0 ]] && kind=batch
      echo "| $b$([[ $kind == batch ]] && echo " (latency per batch)") | $(fmt "$ops") | $(ratio "$hc" "$ops")x | $(load_field gethit "$b" 1 ${kind}_p50_ns) ns | $(load_field gethit "$b" 1 ${kind}_p99_ns) ns | $(load_field gethit "$b" 1 ${kind}_p999_ns) ns |"
    done
    echo
  fi
  if has_label scale; then
    echo "## 95% reads, uniform keys, against processes (mutex-map: threads)"
    echo
    printf "| backend |"; for p in $PROCS; do printf " %s |" "$p"; done; echo " x2/x1 | get p99 at 2 | others' CPU, worst run |"
    printf "|---|"; for p in $PROCS; do printf -- "---|"; done; echo "---|---|---|"
    for b in $(awk -F, 'NR > 1 && $1 == "scale" { print $2 }' "$LOAD" | awk '!seen[$0]++'); do
      printf "| %s |" "$b"
      for p in $PROCS; do printf " %s |" "$(fmt "$(load_field scale "$b" "$p" ops_per_s)")"; done
      p99=$(load_field scale "$b" 2 get_p99_ns)
      [[ $p99 == 0 ]] && p99="$(load_field scale "$b" 2 batch_p99_ns) (batch)"
      other="$(load_max scale "$b" other_cpu_pct)%"
      [[ $b == redis* || $b == memcached ]] && other="(the server)"
      echo " $(ratio "$(load_field scale "$b" 2 ops_per_s)" "$(load_field scale "$b" 1 ops_per_s)") | ${p99:-n/a} ns | $other |"
    done
    echo
    echo "ops/s summed over workers; every figure is the median of the repeated runs. With $(nproc) cores, runs with more workers than cores measure time-slicing, not parallelism."
    echo
    if [[ -n $(load_field churn hostcache 2 ops_per_s) ]]; then
      echo "## Under churn (hostcache, 2 processes)"
      echo
      echo "Zipf 0.99, 90% reads, TTL 500 ms, 64 tags, 2 clear()/s and 50 invalidate(tag)/s, a miss refilled (cache-aside):"
      echo "$(fmt "$(load_field churn hostcache 2 ops_per_s)") ops/s, hit ratio $(load_field churn hostcache 2 hit_ratio), get p50/p99/p999 $(load_field churn hostcache 2 get_p50_ns)/$(load_field churn hostcache 2 get_p99_ns)/$(load_field churn hostcache 2 get_p999_ns) ns, no corrupt read."
      echo
    fi
  fi

  # ---- microbenchmarks ----------------------------------------------------------------
  if [[ -f $RAW/bench_cache.tsv ]]; then
    echo "## Microbenchmarks (bench_cache, one process)"
    echo
    echo "Google Benchmark (Debian's libbenchmark, which warns it was built as DEBUG: that is the harness library, not the code measured); the median of repetitions where repeated. Keys visited in a random permutation; the table half full. The hot rows cycle over 1024 keys (data in the CPU caches); BM_memory_latency is one dependent load, the floor under a get that misses the caches."
    echo
    echo "| benchmark | ns/op (wall) | ns/op (CPU) | items/s | workload |"
    echo "|---|---|---|---|---|"
    awk -F'\t' '$7 != "" { printf "| %s | ERROR: %s | | | |\n", $1, $7; next }
      { printf "| %s | %.1f | %.1f | %.2f M | %s |\n", $1, $2, $3, $5 / 1e6, $6 }' "$RAW/bench_cache.tsv"
    echo
  fi
  if [[ -f $RAW/eviction.md ]]; then
    echo "## Eviction quality (eviction_quality)"
    echo
    echo "Cache-aside replay (get; on a miss, set). capacity_bytes is the whole segment; the arena (what entries can use) is read from the segment. The policy target compares with an exact LRU holding the same arena bytes, each entry charged what hostcache charges it; the last column is an LRU given all of capacity_bytes for keys and values alone."
    echo
    cat "$RAW/eviction.md"
    echo
  fi
  if [[ -f $RAW/clear.md ]]; then
    echo "## Clear cost (clear_cost)"
    echo
    cat "$RAW/clear.md"
    echo
  fi
  if [[ -f $RAW/bench_memoize.tsv ]]; then
    echo "## Memoize (bench_memoize)"
    echo
    echo "| benchmark | time/op (wall) | time/op (CPU) | items/s |"
    echo "|---|---|---|---|"
    awk -F'\t' '$7 != "" { printf "| %s | ERROR: %s | | |\n", $1, $7; next }
      { printf "| %s | %.4g %s | %.4g %s | %s |\n", $1, $2, $4, $3, $4, $5 == "" ? "" : sprintf("%.0f", $5) }' \
      "$RAW/bench_memoize.tsv"
    echo
  fi
  if has_label scale; then
    echo "## Plots"
    echo
    echo "![throughput against processes]($NAME-throughput.png)"
    echo "![get latency, one process]($NAME-latency.png)"
  fi
} >"$REPORT"

# ---- plots -------------------------------------------------------------------------------
command -v gnuplot >/dev/null && [[ -f $LOAD ]] || exit 0
plots=()
for b in $(awk -F, 'NR > 1 && $1 == "scale" { print $2 }' "$LOAD" | awk '!seen[$0]++'); do
  for p in $PROCS; do
    v=$(load_field scale "$b" "$p" ops_per_s)
    [[ -n $v ]] && echo "$p $v"
  done >"$RAW/scale-$b.dat"
  plots+=("'$RAW/scale-$b.dat' using 1:2 with linespoints title '$b'")
done
for b in $(awk -F, 'NR > 1 && $1 == "gethit" && $21 > 0 { print $2 }' "$LOAD" | awk '!seen[$0]++'); do
  echo "$b $(load_field gethit "$b" 1 get_p50_ns) $(load_field gethit "$b" 1 get_p99_ns) $(load_field gethit "$b" 1 get_p999_ns)"
done >"$RAW/latency.dat"
if ((${#plots[@]})); then
  gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set output '$BASE-throughput.png'
set title "95% reads, 48 B keys, 256 B values, uniform: ops/s against workers\n$MACHINE"
set xlabel 'workers (processes; threads for mutex-map)'
set ylabel 'ops/s (log)'
set logscale y
set logscale x 2
set key outside right
set grid
plot $(IFS=,; echo "${plots[*]}")
EOF
fi
if [[ -s $RAW/latency.dat ]]; then
  gnuplot <<EOF
set terminal pngcairo size 900,560 noenhanced
set output '$BASE-latency.png'
set title "get-hit latency, one process (sampled)\n$MACHINE"
set ylabel 'ns (log)'
set logscale y
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.8 border -1
set grid ytics
plot '$RAW/latency.dat' using 2:xtic(1) title 'p50', '' using 3 title 'p99', '' using 4 title 'p999'
EOF
fi
