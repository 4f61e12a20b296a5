// eviction_quality — hostcache's hit ratio on Zipf traces against an exact
// LRU of the same byte capacity, computed here on the very same trace.
//
// For each exponent and each cache size (a fraction of the working set, in
// bytes of key + value), one process replays a cache-aside trace: get, and on
// a miss set. Two exact LRUs replay it too:
//  - "LRU (arena)": the bytes hostcache really has for entries (the segment
//    minus header, index and stripe headers, read from the segment with
//    inspect::read), each entry charged what hostcache charges it (its
//    header included, measured on a probe segment, not assumed). This isolates
//    the eviction policy: the target is within 2 points of it.
//  - "LRU (nominal)": capacity_bytes, each entry charged key + value only, what
//    a user who sized the cache by capacity_bytes might expect. The gap to it
//    is the price of the index and the per-entry headers.
// Every hit is verified (bench_common.h), so a figure never comes from a cache
// that returned wrong bytes.
#include <hostcache/cache.h>
#include <hostcache/inspect.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>

#include "bench_common.h"

namespace {

using namespace hcbench;

// Exact LRU over key indexes, byte-bounded: an intrusive list in arrays.
class ExactLru {
 public:
  ExactLru(std::uint64_t keys, std::uint64_t capacity)
      : cap_(capacity), prev_(keys, kNone), next_(keys, kNone), cost_(keys, 0) {}
  // True on a hit; on a miss inserts `key` at cost `cost` and evicts from the
  // cold end until it fits (an entry larger than the capacity is not kept).
  bool access(std::uint64_t key, std::uint64_t cost) {
    if (cost_[key] != 0) {
      unlink(key);
      push_front(key);
      return true;
    }
    if (cost > cap_) return false;
    while (used_ + cost > cap_) {
      const std::uint64_t victim = tail_;
      unlink(victim);
      used_ -= cost_[victim];
      cost_[victim] = 0;
    }
    cost_[key] = cost;
    used_ += cost;
    push_front(key);
    return false;
  }

 private:
  static constexpr std::uint64_t kNone = ~std::uint64_t{0};
  void unlink(std::uint64_t k) {
    (prev_[k] == kNone ? head_ : next_[prev_[k]]) = next_[k];
    (next_[k] == kNone ? tail_ : prev_[next_[k]]) = prev_[k];
  }
  void push_front(std::uint64_t k) {
    prev_[k] = kNone;
    next_[k] = head_;
    (head_ == kNone ? tail_ : prev_[head_]) = k;
    head_ = k;
  }
  std::uint64_t cap_, used_ = 0, head_ = kNone, tail_ = kNone;
  std::vector<std::uint64_t> prev_, next_, cost_;
};

struct Params {
  std::uint64_t keys = 100000, requests = 2000000, warmup = 1000000;
  std::size_t key_size = 48;
  SizeSpec value_size;
  std::vector<double> exponents{0.9, 1.1};
  std::vector<double> fractions{0.10, 0.25, 0.50};
  std::uint64_t seed = 7;
};

std::string seg_name(const char* what) {
  return segment_prefix() + "-evict-" + std::to_string(::getpid()) + "-" + what;
}

// What hostcache charges for an entry beyond its key and value bytes: the
// bytes_used of one entry on a probe segment, minus key and value (chosen so
// that they need no alignment padding).
std::uint64_t measured_overhead(std::size_t key_size) {
  const std::string name = seg_name("probe");
  std::uint64_t overhead = 0;
  {
    hostcache::Config c;
    c.name = name;
    c.capacity_bytes = 16u << 20;
    auto cache = hostcache::Cache::open(c);
    KeySet keys(1, key_size, 'p');
    std::string v(256 + (8 - (key_size + 256) % 8) % 8, '\0');
    fill_value(keys[0], 0, v);
    cache.set(keys[0], v);
    overhead = cache.stats().bytes_used - key_size - v.size();
  }
  hostcache::Cache::remove(name);
  return overhead;
}

struct Row {
  double s = 0, fraction = 0;
  std::uint64_t working_set = 0, capacity = 0, arena = 0, stripes = 0, evictions = 0;
  double hostcache = 0, lru_arena = 0, lru_nominal = 0;
};

Row run_one(const Params& p, const KeySet& keys, const std::vector<std::uint32_t>& vsize,
            std::uint64_t working_set, std::uint64_t overhead, double s, double fraction) {
  Row row;
  row.s = s;
  row.fraction = fraction;
  row.working_set = working_set;
  row.capacity = std::uint64_t(double(working_set) * fraction);
  const std::string name = seg_name("run");
  hostcache::Config c;
  c.name = name;
  c.capacity_bytes = row.capacity;
  c.max_value_bytes = std::max<std::size_t>(p.value_size.max, 1024);
  auto cache = hostcache::Cache::open(c);
  {
    hostcache::inspect::Filter none;
    none.limit = 0;
    const auto snap = hostcache::inspect::read(name, none);
    row.stripes = snap.segment.stripes;
    row.arena = std::uint64_t(snap.segment.stripes) * snap.segment.arena_bytes;
  }
  ExactLru lru_arena(p.keys, row.arena), lru_nominal(p.keys, row.capacity);
  const KeyChooser chooser(p.keys, s);
  Rng rng(p.seed);
  std::string out, value;
  std::uint64_t hits = 0, hits_a = 0, hits_n = 0, corrupt = 0, version = 0;
  for (std::uint64_t i = 0; i < p.warmup + p.requests; ++i) {
    const std::uint64_t k = chooser.next(rng);
    const std::uint64_t user = p.key_size + vsize[k];
    const bool measured = i >= p.warmup;
    const bool a = lru_arena.access(k, (user + overhead + 7) / 8 * 8);
    const bool n = lru_nominal.access(k, user);
    bool h = cache.get(keys[k], out);
    if (h && verify_value(keys[k], out) != Verdict::ok) ++corrupt, h = false;
    if (!h) {
      value.resize(vsize[k]);
      fill_value(keys[k], std::uint32_t(++version), value);
      if (cache.set(keys[k], value) != hostcache::Errc::ok)
        throw std::runtime_error("set failed during the trace");
    }
    if (measured) hits += h, hits_a += a, hits_n += n;
  }
  row.evictions = cache.stats().evictions;
  hostcache::Cache::remove(name);
  if (corrupt) throw std::runtime_error(std::to_string(corrupt) + " CORRUPT reads");
  row.hostcache = double(hits) / double(p.requests);
  row.lru_arena = double(hits_a) / double(p.requests);
  row.lru_nominal = double(hits_n) / double(p.requests);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  Params p;
  std::string value_size = "256", csv, md;
  CLI::App app{"eviction_quality: hostcache's hit ratio against an exact LRU of the same bytes"};
  app.add_option("--keys", p.keys, "distinct keys");
  app.add_option("--requests", p.requests, "measured requests per configuration");
  app.add_option("--warmup", p.warmup, "requests replayed first, not measured");
  app.add_option("--key-size", p.key_size, "key bytes")
      ->check(CLI::Range(std::size_t(kMinKeyBytes), std::size_t(1024)));
  app.add_option("--value-size", value_size,
                 "value bytes: N or MIN-MAX (per key, fixed for the run)");
  app.add_option("--zipf", p.exponents, "Zipf exponents");
  app.add_option("--fractions", p.fractions, "cache sizes as fractions of the working set");
  app.add_option("--seed", p.seed, "trace seed");
  app.add_option("--csv", csv, "write the table as CSV");
  app.add_option("--markdown", md, "write the table as Markdown");
  try {
    app.parse(argc, argv);
    p.value_size = SizeSpec::parse(value_size);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eviction_quality: %s\n", e.what());
    return 64;
  }
  try {
    const KeySet keys(p.keys, p.key_size);
    std::vector<std::uint32_t> vsize(p.keys);
    Rng sizes(p.seed ^ 0xabcdef);
    std::uint64_t working_set = 0;
    for (auto& v : vsize) {
      v = std::uint32_t(p.value_size.pick(sizes));
      working_set += p.key_size + v;
    }
    const std::uint64_t overhead = measured_overhead(p.key_size);
    std::vector<Row> rows;
    for (double s : p.exponents)
      for (double f : p.fractions) {
        rows.push_back(run_one(p, keys, vsize, working_set, overhead, s, f));
        const Row& r = rows.back();
        std::printf(
            "zipf %.2f  cache %2.0f%% of %llu B: capacity %llu B, arena %llu B (%.1f%%), "
            "%llu stripes | hostcache %.4f  LRU(arena) %.4f  LRU(nominal) %.4f  "
            "diff %+.2f pts\n",
            r.s, r.fraction * 100, (unsigned long long)r.working_set,
            (unsigned long long)r.capacity, (unsigned long long)r.arena,
            100.0 * double(r.arena) / double(r.capacity), (unsigned long long)r.stripes,
            r.hostcache, r.lru_arena, r.lru_nominal, 100 * (r.hostcache - r.lru_arena));
        std::fflush(stdout);
      }
    std::printf("per-entry overhead charged to LRU(arena): %llu B (measured)\n",
                (unsigned long long)overhead);
    if (!csv.empty()) {
      std::ofstream out(csv);
      out << "zipf_s,fraction,working_set_bytes,capacity_bytes,arena_bytes,stripes,entry_overhead,"
             "hostcache_hit,lru_arena_hit,lru_nominal_hit,diff_points,evictions\n";
      for (const Row& r : rows)
        out << r.s << ',' << r.fraction << ',' << r.working_set << ',' << r.capacity << ','
            << r.arena << ',' << r.stripes << ',' << overhead << ',' << r.hostcache << ','
            << r.lru_arena << ',' << r.lru_nominal << ',' << 100 * (r.hostcache - r.lru_arena)
            << ',' << r.evictions << '\n';
    }
    if (!md.empty()) {
      std::ofstream out(md);
      out << "| Zipf s | cache / working set | capacity_bytes | arena bytes (share) | hostcache "
             "| exact LRU, arena bytes | diff (points) | exact LRU, capacity_bytes |\n"
             "|---|---|---|---|---|---|---|---|\n";
      char line[400];
      for (const Row& r : rows) {
        std::snprintf(
            line, sizeof(line),
            "| %.1f | %.0f%% | %llu | %llu (%.1f%%) | %.2f%% | %.2f%% | %+.2f | %.2f%% |\n", r.s,
            r.fraction * 100, (unsigned long long)r.capacity, (unsigned long long)r.arena,
            100.0 * double(r.arena) / double(r.capacity), 100 * r.hostcache, 100 * r.lru_arena,
            100 * (r.hostcache - r.lru_arena), 100 * r.lru_nominal);
        out << line;
      }
      out << "\nWorking set " << working_set << " B (" << p.keys << " keys of " << p.key_size
          << " B, values " << p.value_size.str() << " B); " << p.warmup << " warmup + "
          << p.requests << " measured requests per row; per-entry overhead charged to the arena "
          << "LRU: " << overhead << " B (measured).\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "eviction_quality: %s\n", e.what());
    return 2;
  }
  return 0;
}
