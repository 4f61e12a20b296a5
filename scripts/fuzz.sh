#!/usr/bin/env bash
# Builds the libFuzzer target with clang (ASan + UBSan) and fuzzes the segment
# parser for a bounded time.
#   scripts/fuzz.sh [SECONDS]     default 60
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
out=build-fuzz
mkdir -p "$out/corpus" "$out/seeds"
rm -rf "$out/obj" && mkdir -p "$out/obj"
# The sources compiled side by side, one per core, then linked.
flags=(-std=c++20 -O1 -g1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -DSPDLOG_FMT_EXTERNAL -Iinclude -Isrc)
printf '%s\n' tests/fuzz/fuzz_segment.cpp src/*.cpp |
  xargs -P "$(nproc)" -I{} sh -c 'f="$1"; shift; o="'"$out"'/obj/$(basename "$f" .cpp).o"; clang++ "$@" -fsanitize=fuzzer-no-link -c "$f" -o "$o"' _ {} "${flags[@]}"
clang++ "${flags[@]}" -fsanitize=fuzzer "$out"/obj/*.o -o "$out/fuzz_segment" \
  $(pkg-config --libs libxxhash libzstd) -lspdlog -lfmt -lpthread -lrt
HOSTCACHE_FUZZ_SEEDS="$out/seeds" "$out/fuzz_segment" >/dev/null 2>&1 || true
echo "fuzz: $(ls "$out/seeds" | wc -l) seeds, ${seconds}s"
HOSTCACHE_LOG=off "$out/fuzz_segment" "$out/corpus" "$out/seeds" -max_len=200000 -timeout=20 -artifact_prefix="$out/" -rss_limit_mb=4096 \
  -max_total_time="$seconds" -print_final_stats=1 2>&1 | grep -E "^(#|stat::|==|SUMMARY|Done)|ERROR|crash|timeout" | tail -25
