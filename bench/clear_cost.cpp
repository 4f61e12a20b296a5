// clear_cost — what clear() and invalidate(tag) cost with a thousand and with
// a million entries in the cache (DESIGN.md invariant 2: both are O(1), one
// increment, no walk).
//
// Both sizes use the same segment capacity, so that only the entry count
// differs. For each size, `repeats` times: fill the cache (every entry carries
// the tag "model"), time one clear() on the full table, check that sampled
// keys now miss (a clear that returned early would be a correctness bug, not
// a fast one), refill and time it (the arena reclaims the stale entries
// lazily: that deferred cost lands on sets and is reported, not hidden), then
// the same for invalidate("model"). Then `loop` back-to-back calls of each,
// for a mean free of clock overhead. std::unordered_map's clear() under one
// mutex is timed on the same entries as the O(n) contrast.
#include <hostcache/cache.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "bench_common.h"
#include "ref_tables.h"

namespace {

using namespace hcbench;

struct Row {
  std::uint64_t entries = 0, held = 0;
  double clear_first_ns = 0, clear_loop_ns = 0, inval_first_ns = 0, inval_loop_ns = 0;
  double fill_ns = 0, refill_after_clear_ns = 0, map_clear_ns = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Params {
  std::vector<std::uint64_t> sizes{1000, 1000000};
  double capacity_mb = 512;
  std::size_t key_size = 48, value_size = 64;
  unsigned repeats = 3;
  std::uint64_t loop = 100000;
};

Row run_one(const Params& p, std::uint64_t n) {
  Row row;
  row.entries = n;
  const KeySet keys(n, p.key_size);
  std::string values(n * p.value_size, '\0');
  {
    std::string v(p.value_size, '\0');
    for (std::uint64_t i = 0; i < n; ++i) {
      fill_value(keys[i], 0, v);
      values.replace(i * p.value_size, p.value_size, v);
    }
  }
  const std::string name =
      segment_prefix() + "-clear-" + std::to_string(::getpid()) + "-" + std::to_string(n);
  hostcache::Config c;
  c.name = name;
  c.capacity_bytes = std::uint64_t(p.capacity_mb * 1048576);
  auto cache = hostcache::Cache::open(c);
  hostcache::SetOptions tagged;
  tagged.tags = {"model"};
  // Fills every key; returns ns per set.
  auto fill = [&] {
    const std::uint64_t t0 = now_ns();
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::string_view v(values.data() + i * p.value_size, p.value_size);
      if (cache.set(keys[i], v, tagged) != hostcache::Errc::ok)
        throw std::runtime_error("set failed");
    }
    return double(now_ns() - t0) / double(n);
  };
  // After a clear/invalidate, no key written before it may be served.
  auto expect_all_miss = [&](const char* what) {
    std::string out;
    for (std::uint64_t i = 0; i < n; i += std::max<std::uint64_t>(1, n / 1000)) {
      if (cache.get(keys[i], out))
        throw std::runtime_error(std::string("a key survived ") + what + ": broken run");
    }
  };
  auto timed = [](auto&& fn) {
    const std::uint64_t t0 = now_ns();
    fn();
    return double(now_ns() - t0);
  };

  std::vector<double> clear_first, inval_first, fills, refills;
  fills.push_back(fill());
  row.held = cache.stats().entries;  // entries the index holds (a stale-free fill)
  for (unsigned r = 0; r < p.repeats; ++r) {
    clear_first.push_back(timed([&] { cache.clear(); }));
    expect_all_miss("clear()");
    refills.push_back(fill());
    inval_first.push_back(timed([&] { cache.invalidate("model"); }));
    expect_all_miss("invalidate()");
    fill();
  }
  row.clear_first_ns = median(clear_first);
  row.inval_first_ns = median(inval_first);
  row.fill_ns = median(fills);
  row.refill_after_clear_ns = median(refills);
  row.clear_loop_ns = timed([&] {
                        for (std::uint64_t i = 0; i < p.loop; ++i) cache.clear();
                      }) /
                      double(p.loop);
  row.inval_loop_ns = timed([&] {
                        for (std::uint64_t i = 0; i < p.loop; ++i) cache.invalidate("model");
                      }) /
                      double(p.loop);
  hostcache::Cache::remove(name);

  MutexMap map;
  for (std::uint64_t i = 0; i < n; ++i)
    map.set(keys[i], std::string_view(values.data() + i * p.value_size, p.value_size));
  row.map_clear_ns = timed([&] { map.clear(); });
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  Params p;
  std::string csv, md;
  CLI::App app{"clear_cost: clear() and invalidate() with few and many entries"};
  app.add_option("--entries", p.sizes, "entry counts to compare");
  app.add_option("--capacity-mb", p.capacity_mb, "segment MiB, the same for every count");
  app.add_option("--value-size", p.value_size, "value bytes")
      ->check(CLI::Range(std::size_t(kMinValueBytes), std::size_t(1) << 20));
  app.add_option("--repeats", p.repeats, "fills per count (median of single calls)")
      ->check(CLI::Range(1u, 100u));
  app.add_option("--loop", p.loop, "back-to-back calls for the mean");
  app.add_option("--csv", csv, "write CSV");
  app.add_option("--markdown", md, "write a Markdown table");
  CLI11_PARSE(app, argc, argv);
  try {
    std::vector<Row> rows;
    for (std::uint64_t n : p.sizes) {
      rows.push_back(run_one(p, n));
      const Row& r = rows.back();
      std::printf(
          "%8llu entries (%llu held): clear first %.0f ns, loop %.1f ns | invalidate first "
          "%.0f ns, loop %.1f ns | set into empty %.0f ns, after clear %.0f ns | "
          "unordered_map clear %.0f ns\n",
          (unsigned long long)r.entries, (unsigned long long)r.held, r.clear_first_ns,
          r.clear_loop_ns, r.inval_first_ns, r.inval_loop_ns, r.fill_ns, r.refill_after_clear_ns,
          r.map_clear_ns);
      std::fflush(stdout);
    }
    if (!csv.empty()) {
      std::ofstream out(csv);
      out << "entries,held,clear_first_ns,clear_loop_ns,invalidate_first_ns,invalidate_loop_ns,"
             "set_into_empty_ns,set_after_clear_ns,unordered_map_clear_ns\n";
      for (const Row& r : rows)
        out << r.entries << ',' << r.held << ',' << r.clear_first_ns << ',' << r.clear_loop_ns
            << ',' << r.inval_first_ns << ',' << r.inval_loop_ns << ',' << r.fill_ns << ','
            << r.refill_after_clear_ns << ',' << r.map_clear_ns << '\n';
    }
    if (!md.empty()) {
      std::ofstream out(md);
      out << "| entries | clear(), one call | clear(), mean of " << p.loop
          << " | invalidate(tag), one call | invalidate(tag), mean | set into empty | set after "
             "clear | unordered_map::clear |\n|---|---|---|---|---|---|---|---|\n";
      char line[300];
      for (const Row& r : rows) {
        std::snprintf(line, sizeof(line),
                      "| %llu | %.0f ns | %.1f ns | %.0f ns | %.1f ns | %.0f ns | %.0f ns | %.0f "
                      "ns |\n",
                      (unsigned long long)r.entries, r.clear_first_ns, r.clear_loop_ns,
                      r.inval_first_ns, r.inval_loop_ns, r.fill_ns, r.refill_after_clear_ns,
                      r.map_clear_ns);
        out << line;
      }
      out << "\nSegment " << p.capacity_mb << " MiB for every row; " << p.key_size << " B keys, "
          << p.value_size << " B values, every entry tagged; one-call figures are medians of "
          << p.repeats << " and include one clock read (~20-40 ns).\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "clear_cost: %s\n", e.what());
    return 2;
  }
  return 0;
}
