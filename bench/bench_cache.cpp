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
  return segment_prefix() + "-cache-" + std::to_string(::getpid()) + "-" + what + "-" +
         std::to_string(value_size);
}

hostcache::Config config_for(const std::string& name) {
  hostcache::Config c;
  c.name = name;
  c.capacity_bytes = kCapacity;
  c.max_value_bytes = 64u << 10;
  c.compress_min_bytes = 0;  // the tables compare raw copies; compression has its own rows
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
  std::string values;  // value i at i * value_size, verified by verify_value
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
  hostcache::Cache& cache() { return cache_; }
  std::string describe() {
    const auto s = cache_.stats();
    return "entries=" + std::to_string(s.entries) + " bytes_used=" + std::to_string(s.bytes_used) +
           " evictions=" + std::to_string(s.evictions);
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
struct Filled {
  std::unique_ptr<Table> table;
  bool dirty = true;  // written since the last check: top it up before the next benchmark
};

template <class Table>
std::map<std::size_t, Filled<Table>>& registry(std::unique_lock<std::mutex>& lock) {
  static std::mutex mu;
  static std::map<std::size_t, Filled<Table>> all;
  lock = std::unique_lock<std::mutex>(mu);
  return all;
}

// Every key present and every value verified: the state each benchmark
// starts from. A key lost since the last check (evicted although live data
// is half the arena) is put back and reported, so that it is seen, not hidden.
template <class Table>
void top_up(Table& t, const Workload& w, bool first) {
  std::string out;
  std::uint64_t lost = 0;
  for (std::uint64_t i = 0; i < w.count; ++i) {
    const std::string_view key = (*w.hit_keys)[i];
    if (t.get(key, out)) {
      if (verify_value(key, out) != Verdict::ok)
        throw std::runtime_error(std::string(Table::kName) + ": CORRUPT value for key " +
                                 std::to_string(i));
      continue;
    }
    if (!first) ++lost;
    if (!t.set(key, w.value(i))) throw std::runtime_error("fill: set failed");
  }
  if (lost != 0)
    std::fprintf(stderr,
                 "bench_cache: %s (%zu B values): %llu of %llu keys were lost by the "
                 "previous benchmark's sets; put back (%s)\n",
                 Table::kName, w.value_size, static_cast<unsigned long long>(lost),
                 static_cast<unsigned long long>(w.count), t.describe().c_str());
}

template <class Table>
Table& table(std::size_t vs) {
  std::unique_lock<std::mutex> lock;
  Filled<Table>& f = registry<Table>(lock)[vs];
  Workload& w = workload(vs);
  const bool first = !f.table;
  if (first) f.table = std::make_unique<Table>(vs);
  if (f.dirty) top_up(*f.table, w, first);
  f.dirty = false;
  return *f.table;
}

template <class Table>
void mark_dirty(std::size_t vs) {
  std::unique_lock<std::mutex> lock;
  registry<Table>(lock)[vs].dirty = true;
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

// The same gets over only kHotKeys keys of the table: the data stays in the
// CPU caches, so this is the cost of the code path itself (a memoized
// metadata cache mostly serves a few hot keys).
constexpr std::uint64_t kHotKeys = 1024;

template <class Table>
void BM_get_hit_hot(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::string out;
  out.reserve(w.value_size);
  std::uint64_t i = 0, hits = 0, last = 0;
  for (auto _ : state) {
    last = w.order[i];
    hits += t.get((*w.hit_keys)[last], out);
    i = (i + 1) & (kHotKeys - 1);
  }
  if (hits != std::uint64_t(state.iterations())) return state.SkipWithError("get-hit missed");
  if (verify_value((*w.hit_keys)[last], out) != Verdict::ok)
    return state.SkipWithError("get-hit returned a value that does not verify");
  label<Table>(state, w, "get hit over 1024 hot keys");
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
  mark_dirty<Table>(w.value_size);
  if (failed != 0) return state.SkipWithError("set failed");
  label<Table>(state, w, "set (overwrite)");
}

// 95% get-hit, 5% overwrite: the read-mostly steady state of a metadata
// cache. Cache-aside: a get that misses (a key evicted by the sets) is
// refilled and counted in the "misses" counter; over 1% fails the run.
template <class Table>
void BM_mix_95_5(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  Table& t = table<Table>(w.value_size);
  std::string out;
  out.reserve(w.value_size);
  std::uint64_t i = start_of(state, w.count), misses = 0, failed = 0, n = 0;
  for (auto _ : state) {
    const std::uint32_t k = w.order[i];
    if (n++ % 20 == 19 || !t.get((*w.hit_keys)[k], out)) {
      misses += n % 20 != 0;
      failed += !t.set((*w.hit_keys)[k], w.value(k));
    }
    if (++i == w.count) i = 0;
  }
  mark_dirty<Table>(w.value_size);
  if (failed != 0) return state.SkipWithError("mix: a set failed");
  if (misses * 100 > std::uint64_t(state.iterations()))
    return state.SkipWithError("mix: over 1% of gets missed although every key was present");
  state.counters["misses"] = double(misses);
  label<Table>(state, w, "95% get / 5% set");
}

using Mutex = RefTable<MutexMap>;
using Sharded = RefTable<ShardedMap>;

void sizes(benchmark::internal::Benchmark* b) { b->ArgName("value")->Arg(256)->Arg(4096); }

#define HC_BENCH_ALL(fn)                                \
  BENCHMARK_TEMPLATE(fn, HostcacheTable)->Apply(sizes); \
  BENCHMARK_TEMPLATE(fn, Mutex)->Apply(sizes);          \
  BENCHMARK_TEMPLATE(fn, Sharded)->Apply(sizes)

HC_BENCH_ALL(BM_get_hit);
HC_BENCH_ALL(BM_get_hit_hot);
HC_BENCH_ALL(BM_get_miss);
HC_BENCH_ALL(BM_set);
HC_BENCH_ALL(BM_mix_95_5);

// ---- the framework operations (issue 12), next to set's cost ----------------------

// get_many of 16 keys, per key: the bucket loads of all 16 are started first.
void BM_get_many_16(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  HostcacheTable& t = table<HostcacheTable>(w.value_size);
  std::vector<std::string_view> keys(16);
  std::uint64_t i = 0, hits = 0;
  for (auto _ : state) {
    for (auto& k : keys) {
      k = (*w.hit_keys)[w.order[i]];
      if (++i == w.count) i = 0;
    }
    for (const auto& v : t.cache().get_many(keys)) hits += v.has_value();
  }
  if (hits != 16 * std::uint64_t(state.iterations())) return state.SkipWithError("get_many missed");
  label<HostcacheTable>(state, w, "get_many of 16 (per call; /16 for per key)");
}

// The same into strings kept from call to call (Cache::get_many's second
// form), as BM_get_hit reuses its one string: no allocation per value.
void BM_get_many_16_into(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  HostcacheTable& t = table<HostcacheTable>(w.value_size);
  std::vector<std::string_view> keys(16);
  std::vector<std::string> values;
  std::vector<bool> found;
  std::uint64_t i = 0, hits = 0;
  for (auto _ : state) {
    for (auto& k : keys) {
      k = (*w.hit_keys)[w.order[i]];
      if (++i == w.count) i = 0;
    }
    hits += t.cache().get_many(keys, values, found);
  }
  if (hits != 16 * std::uint64_t(state.iterations())) return state.SkipWithError("get_many missed");
  label<HostcacheTable>(state, w, "get_many of 16 into reused strings (per call)");
}

// add of a key that exists (the common, refused case) and of one just erased.
void BM_add_existing(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  HostcacheTable& t = table<HostcacheTable>(w.value_size);
  std::uint64_t i = 0, stored = 0;
  for (auto _ : state) {
    const std::uint32_t k = w.order[i];
    stored += t.cache().add((*w.hit_keys)[k], w.value(k)) == hostcache::Errc::ok;
    if (++i == w.count) i = 0;
  }
  if (stored != 0) return state.SkipWithError("add stored over a valid entry");
  label<HostcacheTable>(state, w, "add (key exists: refused)");
}

void BM_incr(benchmark::State& state) {
  const std::string name = segment_name("incr", 0);
  auto cache = hostcache::Cache::open(config_for(name));
  KeySet keys(1024, kKeyBytes, 'i');
  for (std::uint64_t k = 0; k < keys.count(); ++k) cache.set(keys[k], "0");
  std::uint64_t i = 0, failed = 0;
  std::int64_t r = 0;
  for (auto _ : state) {
    failed += cache.incr(keys[i], 1, r) != hostcache::Errc::ok;
    i = (i + 1) & 1023;
  }
  hostcache::Cache::remove(name);
  if (failed) return state.SkipWithError("incr failed");
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("hostcache incr over 1024 keys; 48B key");
}

void BM_touch(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  HostcacheTable& t = table<HostcacheTable>(w.value_size);
  std::uint64_t i = 0, missed = 0;
  for (auto _ : state) {
    missed += !t.cache().touch((*w.hit_keys)[w.order[i]], std::chrono::minutes(30));
    if (++i == w.count) i = 0;
  }
  if (missed) return state.SkipWithError("touch missed");
  label<HostcacheTable>(state, w, "touch");
}

void BM_ttl(benchmark::State& state) {
  Workload& w = workload(std::size_t(state.range(0)));
  HostcacheTable& t = table<HostcacheTable>(w.value_size);
  std::uint64_t i = 0, missed = 0;
  for (auto _ : state) {
    missed += !t.cache().ttl((*w.hit_keys)[w.order[i]]).has_value();
    if (++i == w.count) i = 0;
  }
  if (missed) return state.SkipWithError("ttl missed");
  label<HostcacheTable>(state, w, "ttl");
}

BENCHMARK(BM_get_many_16)->Apply(sizes);
BENCHMARK(BM_get_many_16_into)->Apply(sizes);
BENCHMARK(BM_add_existing)->Apply(sizes);
BENCHMARK(BM_incr);
BENCHMARK(BM_touch)->Apply(sizes);
BENCHMARK(BM_ttl)->Apply(sizes);

// ---- compression on metadata-like JSON ----------------------------------------------

// A model's extracted metadata as the prefork example's extractor writes it:
// field records with repeated names and structure, `fields` of them.
std::string metadata_json(int fields, std::uint64_t seed) {
  Rng rng(seed);
  std::string s = "{\"app\":\"shop\",\"model\":\"Model" + std::to_string(seed % 50) +
                  "\",\"permissions\":[\"view\",\"add\",\"change\",\"delete\"],\"fields\":[";
  static const char* kTypes[] = {"CharField", "IntegerField", "ForeignKey", "DateTimeField", "BooleanField"};
  for (int i = 0; i < fields; ++i) {
    if (i) s += ",";
    s += "{\"name\":\"field_" + std::to_string(rng.below(100000)) + "\",\"type\":\"" + kTypes[rng.below(5)] +
         "\",\"null\":" + (rng.below(2) ? "true" : "false") + ",\"blank\":" + (rng.below(2) ? "true" : "false") +
         ",\"max_length\":" + std::to_string(rng.below(500)) + ",\"verbose_name\":\"Field " +
         std::to_string(rng.below(100000)) + "\",\"help_text\":\"\",\"filters\":[\"exact\",\"icontains\",\"in\"]}";
  }
  return s + "]}";
}

// Sets and gets of 64 metadata values of about `state.range(0)` KiB, with
// compression on (level 1, the default) or off; reports the stored/original ratio.
void BM_metadata(benchmark::State& state, bool compress, bool get) {
  const std::size_t kib = std::size_t(state.range(0));
  const std::string name = segment_name(compress ? "z" : "raw", kib);
  hostcache::Config c = config_for(name);
  c.compress_min_bytes = compress ? 1024 : 0;
  auto cache = hostcache::Cache::open(c);
  std::vector<std::string> values;
  KeySet keys(64, kKeyBytes, 'z');
  for (int i = 0; i < 64; ++i) values.push_back(metadata_json(int(kib * 1024 / 290) + 1, std::uint64_t(i)));
  for (int i = 0; i < 64; ++i) cache.set(keys[std::uint64_t(i)], values[std::size_t(i)]);
  std::string out;
  std::uint64_t i = 0, bad = 0, bytes = 0;
  for (auto _ : state) {
    const std::size_t k = i & 63;
    if (get) {
      bad += !cache.get(keys[k], out) || out.size() != values[k].size();
    } else {
      bad += cache.set(keys[k], values[k]) != hostcache::Errc::ok;
    }
    bytes += values[k].size();
    ++i;
  }
  const hostcache::Stats s = cache.stats();
  hostcache::Cache::remove(name);
  if (bad) return state.SkipWithError("metadata get/set failed");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(std::int64_t(bytes));
  state.counters["stored_ratio"] = s.compressed_in ? double(s.compressed_out) / double(s.compressed_in) : 1.0;
  state.SetLabel(std::string("hostcache ") + (get ? "get" : "set") + " of metadata JSON ~" + std::to_string(kib) +
                 " KiB, compression " + (compress ? "on (zstd 1)" : "off"));
}
void BM_metadata_set_raw(benchmark::State& s) { BM_metadata(s, false, false); }
void BM_metadata_set_zstd(benchmark::State& s) { BM_metadata(s, true, false); }
void BM_metadata_get_raw(benchmark::State& s) { BM_metadata(s, false, true); }
void BM_metadata_get_zstd(benchmark::State& s) { BM_metadata(s, true, true); }
void kib_sizes(benchmark::internal::Benchmark* b) { b->ArgName("KiB")->Arg(1)->Arg(4)->Arg(20); }
BENCHMARK(BM_metadata_set_raw)->Apply(kib_sizes);
BENCHMARK(BM_metadata_set_zstd)->Apply(kib_sizes);
BENCHMARK(BM_metadata_get_raw)->Apply(kib_sizes);
BENCHMARK(BM_metadata_get_zstd)->Apply(kib_sizes);

// Two threads of one process: hostcache's readers write no shared line, the
// single mutex is a shared line every get writes.
BENCHMARK_TEMPLATE(BM_get_hit, HostcacheTable)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_get_hit, Mutex)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_get_hit, Sharded)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_mix_95_5, HostcacheTable)->Arg(256)->ArgName("value")->Threads(2);
BENCHMARK_TEMPLATE(BM_mix_95_5, Mutex)->Arg(256)->ArgName("value")->Threads(2);

// What one dependent memory load costs on this machine, over a buffer the size
// of the tables above and over one that fits in L2: the floor under a get
// that misses the CPU caches (a bucket group and an entry header at least).
void BM_memory_latency(benchmark::State& state) {
  const std::size_t lines = (std::size_t(state.range(0)) << 20) / 64;
  struct alignas(64) Line {
    std::uint64_t next;
  };
  std::vector<Line> buf(lines);
  std::vector<std::uint64_t> perm(lines);
  for (std::size_t i = 0; i < lines; ++i) perm[i] = i;
  Rng rng(9);
  for (std::size_t i = lines - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
  for (std::size_t i = 0; i < lines; ++i) buf[perm[i]].next = perm[(i + 1) % lines];
  std::uint64_t p = perm[0];
  for (auto _ : state) {
    p = buf[p].next;
    benchmark::DoNotOptimize(p);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("one dependent load; random cycle over " + std::to_string(state.range(0)) +
                 " MiB");
}
BENCHMARK(BM_memory_latency)->ArgName("MiB")->Arg(2)->Arg(64);

}  // namespace

BENCHMARK_MAIN();
