// bench_cache.cpp — single-process microbenchmarks of hostcache::Cache, with
// in-process reference tables under the same workload for the ratios.
//
// Workload (after abseil's raw_hash_set_benchmark): 48-byte keys, values of
// 256 B and 4 KiB, the table half full (half of the arena bytes the segment
// really provides, measured, not assumed), keys visited in a random
// permutation so that neither the prefetcher nor the cache hierarchy sees a
// pattern. Every benchmark is a steady state: get-hit and get-miss leave the
// table unchanged, set overwrites existing keys with values of the same size
// (the arena reclaims what it overwrote), and the mix is 95% get-hit.
//
// A run is only reported if it was sound: a get-hit benchmark that misses once,
// a get-miss that hits, a set that fails, or a value that does not verify
// (bench_common.h) skips the benchmark with an error instead of a number.
#include <benchmark/benchmark.h>
#include <hostcache/cache.h>
#include <hostcache/inspect.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "bench_common.h"
#include "ref_tables.h"

namespace {

using namespace hcbench;

constexpr std::size_t kKeyBytes = 48;
constexpr std::size_t kCapacity = 64u << 20;

std::string segment_name(const char* what, std::size_t value_size) {
  return "hcbench-cache-" + std::to_string(::getpid()) + "-" + what + "-" +
         std::to_string(value_size);
}

hostcache::Config config_for(const std::string& name) {
  hostcache::Config c;
  c.name = name;
  c.capacity_bytes = kCapacity;
  c.max_value_bytes = 64u << 10;
  return c;
}

// The keys, their values and the visiting order for one value size, shared by
// every table so that they all see exactly the same workload.
struct Workload {
  std::size_t value_size = 0;
  std::uint64_t count = 0;        // keys present: half of the arena
  std::uint64_t arena_bytes = 0;  // measured: stripes * arena bytes per stripe
  std::uint64_t entry_bytes = 0;  // measured: bytes_used / entries
  std::unique_ptr<KeySet> hit_keys, miss_keys;
  std::string values;             // value i at i * value_size, verified by verify_value
  std::vector<std::uint32_t> order;

  std::string_view value(std::uint64_t i) const {
    return {values.data() + i * value_size, value_size};
  }

  explicit Workload(std::size_t vs) : value_size(vs) {
    // Measure what one entry really costs and how much arena there is, on a
    // probe segment of the same capacity.
    const std::string probe = segment_name("probe", vs);
    {
      auto cache = hostcache::Cache::open(config_for(probe));
      std::string v(vs, '\0');
      KeySet keys(1000, kKeyBytes, 'p');
      for (std::uint64_t i = 0; i < keys.count(); ++i) {
        fill_value(keys[i], 0, v);
        cache.set(keys[i], v);
      }
      const hostcache::Stats s = cache.stats();
      entry_bytes = s.entries ? s.bytes_used / s.entries : 0;
      hostcache::inspect::Filter none;
      none.limit = 0;
      const auto snap = hostcache::inspect::read(probe, none);
      arena_bytes = std::uint64_t(snap.segment.stripes) * snap.segment.arena_bytes;
    }
    hostcache::Cache::remove(probe);
    if (entry_bytes == 0) throw std::runtime_error("probe segment stored nothing");
    count = arena_bytes / 2 / entry_bytes;

    hit_keys = std::make_unique<KeySet>(count, kKeyBytes, 'k');
    miss_keys = std::make_unique<KeySet>(count, kKeyBytes, 'm');
    values.resize(count * vs);
    std::string v(vs, '\0');
    for (std::uint64_t i = 0; i < count; ++i) {
      fill_value((*hit_keys)[i], 1, v);
      values.replace(i * vs, vs, v);
    }
    order.resize(count);
    for (std::uint32_t i = 0; i < count; ++i) order[i] = i;
    Rng rng(42);
    for (std::uint64_t i = count - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
  }
};

Workload& workload(std::size_t vs) {
  static std::mutex mu;
  static std::map<std::size_t, std::unique_ptr<Workload>> all;
  std::lock_guard<std::mutex> lock(mu);
  auto& w = all[vs];
  if (!w) w = std::make_unique<Workload>(vs);
  return *w;
}

// ---- the tables under test -------------------------------------------------------

class HostcacheTable {
 public:
  static constexpr const char* kName = "hostcache";
  explicit HostcacheTable(std::size_t vs)
      : name_(segment_name("table", vs)), cache_(hostcache::Cache::open(config_for(name_))) {}
  ~HostcacheTable() { hostcache::Cache::remove(name_); }
  bool get(std::string_view k, std::string& v) { return cache_.get(k, v); }
  bool set(std::string_view k, std::string_view v) {
    return cache_.set(k, v) == hostcache::Errc::ok;
  }
  std::string describe() {
    const auto s = cache_.stats();
    return "entries=" + std::to_string(s.entries) + " bytes_used=" + std::to_string(s.bytes_used);
  }

 private:
  std::string name_;
  hostcache::Cache cache_;
};

template <class Ref>
class RefTable {
 public:
  static constexpr const char* kName = Ref::kName;
  explicit RefTable(std::size_t) {}
  bool get(std::string_view k, std::string& v) { return ref_.get(k, v); }
  bool set(std::string_view k, std::string_view v) {
    ref_.set(k, v);
    return true;
  }
  std::string describe() { return "entries=" + std::to_string(ref_.size()); }

 private:
  Ref ref_;
};

// One filled table per (type, value size), built on first use and kept for
// the process's life, so that benchmarks (and threads) share a warm table.
template <class Table>
Table& table(std::size_t vs) {
  static std::mutex mu;
  static std::map<std::size_t, std::unique_ptr<Table>> all;
  std::lock_guard<std::mutex> lock(mu);
  auto& t = all[vs];
  if (!t) {
    Workload& w = workload(vs);
    t = std::make_unique<Table>(vs);
    std::string out;
    for (std::uint64_t i = 0; i < w.count; ++i) {
      if (!t->set((*w.hit_keys)[i], w.value(i))) throw std::runtime_error("fill: set failed");
    }
    // Everything must be there: the get-hit numbers are only meaningful if
    // the fill did not evict (half full leaves room for the index's limits).
    for (std::uint64_t i = 0; i < w.count; ++i) {
      if (!t->get((*w.hit_keys)[i], out) || verify_value((*w.hit_keys)[i], out) != Verdict::ok)
        throw std::runtime_error(std::string(Table::kName) + ": key " + std::to_string(i) +
                                 " missing or corrupt after fill");
    }
  }
  return *t;
}

template <class Table>
void label(benchmark::State& state, const Workload& w, const char* op) {
  char text[200];
  std::snprintf(text, sizeof(text), "%s %s; 48B key; %zuB value; %llu keys = 50%% of %llu arena B",
                Table::kName, op, w.value_size, static_cast<unsigned long long>(w.count),
                static_cast<unsigned long long>(w.arena_bytes));
  state.SetLabel(text);
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * std::int64_t(w.value_size));
}

// Each thread starts at its own point of the permutation.
std::uint64_t start_of(const benchmark::State& state, std::uint64_t n) {
  return (n / std::uint64_t(state.threads())) * std::uint64_t(state.thread_index());
}

template <class Table>
void BM_get_hit(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::string out;
  out.reserve(w.value_size);
  std::uint64_t i = start_of(state, w.count), hits = 0, last = 0;
  for (auto _ : state) {
    last = w.order[i];
    hits += t.get((*w.hit_keys)[last], out);
    if (++i == w.count) i = 0;
  }
  if (hits != std::uint64_t(state.iterations())) return state.SkipWithError("get-hit missed");
  if (verify_value((*w.hit_keys)[last], out) != Verdict::ok)
    return state.SkipWithError("get-hit returned a value that does not verify");
  label<Table>(state, w, "get hit");
}

template <class Table>
void BM_get_miss(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::string out;
  std::uint64_t i = start_of(state, w.count), hits = 0;
  for (auto _ : state) {
    hits += t.get((*w.miss_keys)[w.order[i]], out);
    if (++i == w.count) i = 0;
  }
  if (hits != 0) return state.SkipWithError("get-miss hit");
  label<Table>(state, w, "get miss");
}

template <class Table>
void BM_set(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::uint64_t i = start_of(state, w.count), failed = 0;
  for (auto _ : state) {
    const std::uint32_t k = w.order[i];
    failed += !t.set((*w.hit_keys)[k], w.value(k));
    if (++i == w.count) i = 0;
  }
  if (failed != 0) return state.SkipWithError("set failed");
  label<Table>(state, w, "set (overwrite)");
}

// 95% get-hit, 5% overwrite: the read-mostly steady state of a metadata cache.
template <class Table>
void BM_mix_95_5(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::string out;
  out.reserve(w.value_size);
  std::uint64_t i = start_of(state, w.count), misses = 0, n = 0;
  for (auto _ : state) {
    const std::uint32_t k = w.order[i];
    if (n++ % 20 == 19) {
      misses += !t.set((*w.hit_keys)[k], w.value(k));
    } else {
      misses += !t.get((*w.hit_keys)[k], out);
    }
    if (++i == w.count) i = 0;
  }
  if (misses != 0) return state.SkipWithError("mix: a get missed or a set failed");
  label<Table>(state, w, "95% get / 5% set");
}

using Mutex = RefTable<MutexMap>;
using Sharded = RefTable<ShardedMap>;

void sizes(benchmark::internal::Benchmark* b) { b->ArgName("value")->Arg(256)->Arg(4096); }

#define HC_BENCH_ALL(fn)                                                                  \
  BENCHMARK_TEMPLATE(fn, HostcacheTable)->Apply(sizes);                                   \
  BENCHMARK_TEMPLATE(fn, Mutex)->Apply(sizes);                                            \
  BENCHMARK_TEMPLATE(fn, Sharded)->Apply(sizes)

HC_BENCH_ALL(BM_get_hit);
HC_BENCH_ALL(BM_get_miss);
HC_BENCH_ALL(BM_set);
HC_BENCH_ALL(BM_mix_95_5);

// Two threads of one process: hostcache's readers write no shared line, the
// single mutex is a shared line every get writes.
BENCHMARK_TEMPLATE(BM_get_hit, HostcacheTable)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_get_hit, Mutex)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_get_hit, Sharded)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_mix_95_5, HostcacheTable)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_mix_95_5, Mutex)->Arg(256)->ArgName("value")->Threads(2);

}  // namespace

BENCHMARK_MAIN();
