// bench_memoize.cpp — what memoization costs on a hit, and the seed's
// headline: a 50 ms metadata extraction, without the cache, cold and warm.
//
//   BM_PlainGetAs        Cache::get_as<Metadata> of a cached value: the reference
//   BM_GetOrComputeHit   get_or_compute<Metadata> of the same value (target < 2x the reference)
//   BM_MemoizerHit       extract(app, model, user): key building + get_or_compute
//   BM_HitVsPlainGet     both in one loop, alternating: the ratio as a counter
//                        (for the Metadata and for a small integer)
//   BM_Extraction/...    uncached, cold (clear() first, so it computes) and warm
//   BM_SeedReport        the seed's figures: time per call with and without
//                        the cache and the improvement in percent
// After the run, method_stats() is printed as the seed reports it.
//
// Every benchmark checks what it read: a hit that misses, or a value that is
// not the extraction's, skips the benchmark with an error instead of a number.
#include <benchmark/benchmark.h>
#include <hostcache/cache.h>
#include <hostcache/memoize.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// Roughly what the seed extracts for one model: a few dozen fields.
struct Metadata {
  std::string app, model, user;
  std::vector<std::string> fields;
  std::vector<std::string> filters;
  MSGPACK_DEFINE(app, model, user, fields, filters)
};

Metadata make_metadata(const std::string& app, const std::string& model, const std::string& user) {
  Metadata m{app, model, user, {}, {}};
  for (int i = 0; i < 40; ++i) m.fields.push_back("field_" + std::to_string(i));
  for (int i = 0; i < 10; ++i) m.filters.push_back("filter_" + std::to_string(i) + "__icontains");
  return m;
}

// The seed's extraction: 50 ms of work (modelled by a sleep) for one model.
Metadata extract_slow(const std::string& app, const std::string& model, const std::string& user) {
  std::this_thread::sleep_for(50ms);
  return make_metadata(app, model, user);
}

hostcache::Cache& cache() {
  static const std::string name = "hcbench-memo-" + std::to_string(::getpid());
  static hostcache::Cache c = [] {
    hostcache::Config config;
    config.name = name;
    config.capacity_bytes = 16u << 20;
    return hostcache::Cache::open(config);
  }();
  static struct Remove {
    ~Remove() { hostcache::Cache::remove(name); }
  } remove;
  return c;
}

constexpr const char* kKey = "metadata_bench_shop_order_any";

hostcache::ComputeOptions options(std::string_view method) {
  hostcache::ComputeOptions o;
  o.set.ttl = 30min;
  o.method = method;
  return o;
}

void BM_PlainGetAs(benchmark::State& state) {
  hostcache::Cache& c = cache();
  if (c.put(kKey, make_metadata("shop", "order", "any")) != hostcache::Errc::ok) {
    return state.SkipWithError("put failed");
  }
  for (auto _ : state) {
    std::optional<Metadata> m = c.get_as<Metadata>(kKey);
    if (!m || m->fields.size() != 40) return state.SkipWithError("plain get missed");
    benchmark::DoNotOptimize(m);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PlainGetAs);

void BM_GetOrComputeHit(benchmark::State& state) {
  hostcache::Cache& c = cache();
  bool computed = false;
  auto compute = [&] {
    computed = true;
    return make_metadata("shop", "order", "any");
  };
  hostcache::get_or_compute<Metadata>(c, kKey, compute, options("bench_hit"));
  computed = false;
  for (auto _ : state) {
    Metadata m = hostcache::get_or_compute<Metadata>(c, kKey, compute, options("bench_hit"));
    if (computed || m.fields.size() != 40) return state.SkipWithError("memoized call missed");
    benchmark::DoNotOptimize(m);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GetOrComputeHit);

void BM_MemoizerHit(benchmark::State& state) {
  hostcache::Cache& c = cache();
  int computes = 0;
  auto extract = hostcache::memoize<Metadata>(
      c, {.method = "bench_memoizer", .ttl = 30min, .user_specific = true},
      [&](const std::string& app, const std::string& model, const std::string& user) {
        ++computes;
        return make_metadata(app, model, user);
      });
  const std::string app = "shop", model = "order", user = "alice";
  extract(app, model, user);  // cached from here on (also by earlier runs of this benchmark)
  const int warmed = computes;
  for (auto _ : state) {
    Metadata m = extract(app, model, user);
    if (computes != warmed || m.user != user) return state.SkipWithError("memoizer missed");
    benchmark::DoNotOptimize(m);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MemoizerHit);

// Alternating batches of both calls, so that the two see the same machine
// state. Arg 0: the Metadata value; arg 1: a small integer, where the
// memoization overhead is not hidden behind decoding; arg 2: the same without
// per-method statistics (what they cost: two clock reads and four atomic adds).
template <class T>
void hit_vs_plain_get(benchmark::State& state, const char* key, const T& value,
                      std::string_view method = "bench_hit") {
  hostcache::Cache& c = cache();
  auto compute = [&] { return value; };
  hostcache::get_or_compute<T>(c, key, compute, options(method));
  constexpr int kBatch = 256;
  std::uint64_t plain_ns = 0, memo_ns = 0;
  for (auto _ : state) {
    auto t0 = steady::now();
    for (int i = 0; i < kBatch; ++i) benchmark::DoNotOptimize(c.get_as<T>(key));
    auto t1 = steady::now();
    for (int i = 0; i < kBatch; ++i) {
      benchmark::DoNotOptimize(hostcache::get_or_compute<T>(c, key, compute, options(method)));
    }
    auto t2 = steady::now();
    plain_ns +=
        std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    memo_ns += std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(t2 - t1).count());
  }
  if (!c.get_as<T>(key)) return state.SkipWithError("the value was not cached");
  const double calls = double(state.iterations()) * kBatch;
  state.counters["plain_get_ns"] = double(plain_ns) / calls;
  state.counters["memoized_ns"] = double(memo_ns) / calls;
  state.counters["ratio"] = plain_ns == 0 ? 0.0 : double(memo_ns) / double(plain_ns);
  state.SetItemsProcessed(state.iterations() * 2 * kBatch);
}

void BM_HitVsPlainGet(benchmark::State& state) {
  if (state.range(0) == 0) {
    state.SetLabel("metadata");
    hit_vs_plain_get(state, kKey, make_metadata("shop", "order", "any"));
  } else if (state.range(0) == 1) {
    state.SetLabel("int");
    hit_vs_plain_get(state, "small", 42);
  } else {
    state.SetLabel("int, no per-method statistics");
    hit_vs_plain_get(state, "small", 42, "");
  }
}
BENCHMARK(BM_HitVsPlainGet)->Arg(0)->Arg(1)->Arg(2);

// ---- the seed's headline ------------------------------------------------------------

enum Mode { kUncached, kCold, kWarm };

void BM_Extraction(benchmark::State& state) {
  hostcache::Cache& c = cache();
  const Mode mode = Mode(state.range(0));
  auto extract = hostcache::memoize<Metadata>(
      c, {.method = "extract_model_metadata", .ttl = 30min, .user_specific = true}, extract_slow);
  const std::string app = "shop", model = "order", user = "alice";
  if (mode == kWarm) extract(app, model, user);
  for (auto _ : state) {
    if (mode == kCold) {
      state.PauseTiming();
      c.clear();
      state.ResumeTiming();
    }
    Metadata m = mode == kUncached ? extract_slow(app, model, user) : extract(app, model, user);
    if (m.model != model) return state.SkipWithError("wrong metadata");
    benchmark::DoNotOptimize(m);
  }
  state.SetLabel(mode == kUncached ? "uncached" : mode == kCold ? "cold" : "warm");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Extraction)->Arg(kUncached)->Iterations(20)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Extraction)->Arg(kCold)->Iterations(20)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Extraction)->Arg(kWarm)->Unit(benchmark::kMicrosecond);

// One cold call per model, then repeated warm calls, as a worker serving
// requests sees them: time per call without and with the cache.
void BM_SeedReport(benchmark::State& state) {
  hostcache::Cache& c = cache();
  auto extract = hostcache::memoize<Metadata>(
      c, {.method = "seed_report", .ttl = 30min, .user_specific = true}, extract_slow);
  constexpr int kModels = 4, kWarmCalls = 1000;
  double uncached_ms = 0, cached_ms = 0;
  for (auto _ : state) {
    c.clear();
    auto t0 = steady::now();
    for (int i = 0; i < kModels; ++i) extract("shop", "model" + std::to_string(i), "alice");
    auto t1 = steady::now();
    for (int i = 0; i < kWarmCalls; ++i)
      extract("shop", "model" + std::to_string(i % kModels), "alice");
    auto t2 = steady::now();
    uncached_ms = std::chrono::duration<double, std::milli>(t1 - t0).count() / kModels;
    cached_ms = std::chrono::duration<double, std::milli>(t2 - t1).count() / kWarmCalls;
  }
  state.counters["uncached_ms_per_call"] = uncached_ms;
  state.counters["cached_ms_per_call"] = cached_ms;
  state.counters["improvement_pct"] =
      uncached_ms == 0 ? 0 : 100.0 * (1.0 - cached_ms / uncached_ms);
}
BENCHMARK(BM_SeedReport)->Iterations(3)->Unit(benchmark::kMillisecond);

void print_method_stats() {
  std::printf("\n%-24s %9s %9s %9s %7s %12s %12s %12s %10s\n", "method", "requests", "hits",
              "misses", "hit%", "cached ms", "uncached ms", "improvement", "bytes");
  for (const hostcache::MethodStats& m : hostcache::method_stats(cache())) {
    std::printf("%-24s %9llu %9llu %9llu %6.1f%% %12.4f %12.3f %11.2f%% %10llu\n", m.method.c_str(),
                (unsigned long long)m.requests, (unsigned long long)m.hits,
                (unsigned long long)m.misses, 100.0 * m.hit_ratio(), m.mean_hit_ms(),
                m.mean_miss_ms(), m.improvement_percent(), (unsigned long long)m.bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_method_stats();
  return 0;
}
