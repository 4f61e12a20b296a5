// reliability_support.h — what the crash-point test and the SIGKILL storm
// share: keys aimed at one stripe, a workload that reaches every write path
// (overwrites, erases, eviction, compaction moves, wraps, index overflow,
// generations), and a pass that makes every stripe repair itself.
#pragma once

#include <hostcache/cache.h>
#include <hostcache/inspect.h>

#include <xxhash.h>

#include <random>
#include <string>
#include <vector>

#include "cache_impl.h"
#include "index.h"
#include "stripe.h"
#include "test_support.h"

namespace hostcache::testing {

inline std::uint32_t stripe_of_key(const Cache& cache, std::string_view key) {
  return stripe::of(XXH3_64bits(key.data(), key.size()), detail::Access::segment(cache).geometry().stripe_count);
}

// `n` keys "prefix<i>" that all land in stripe `s` (or, with exclude, in any other).
inline std::vector<std::string> keys_in_stripe(const Cache& cache, std::uint32_t s, std::size_t n,
                                               const std::string& prefix, bool exclude = false) {
  std::vector<std::string> keys;
  for (std::uint64_t i = 0; keys.size() < n; ++i) {
    std::string k = prefix + std::to_string(i);
    if ((stripe_of_key(cache, k) == s) != exclude) keys.push_back(std::move(k));
  }
  return keys;
}

// `n` keys of stripe `s` whose two bucket groups are both among the same two:
// more than 16 of them overflow the index however it balances, so a set must
// evict from it (reaches index.before_evict).
inline std::vector<std::string> keys_in_two_groups(const Cache& cache, std::uint32_t s, std::size_t n,
                                                   const std::string& prefix) {
  const Geometry& g = detail::Access::segment(cache).geometry();
  std::vector<std::string> keys;
  std::uint32_t a = 0, b = 0;
  for (std::uint64_t i = 0; keys.size() < n; ++i) {
    std::string k = prefix + std::to_string(i);
    const std::uint64_t h = XXH3_64bits(k.data(), k.size());
    if (stripe::of(h, g.stripe_count) != s) continue;
    const index::Probe p = index::probe(h, g.groups_per_stripe);
    if (keys.empty()) {
      a = p.g1;
      b = p.g2;
    } else if (!((p.g1 == a && p.g2 == b) || (p.g1 == b && p.g2 == a))) {
      continue;
    }
    keys.push_back(std::move(k));
  }
  return keys;
}

// Locks every stripe once: a stripe whose owner died is repaired now.
inline void touch_all_stripes(Cache& cache) {
  Segment& seg = detail::Access::segment(cache);
  for (std::uint32_t i = 0; i < seg.geometry().stripe_count; ++i) stripe::Locked locked(seg, i);
}

inline std::string describe(const std::vector<inspect::Violation>& v) {
  std::string out;
  for (const auto& x : v) out += x.where + ": " + x.what + "\n";
  return out;
}

// Sets, overwrites, reads, erases, tiny and large values, a tag, in `keys`
// (one stripe): enough churn to wrap the arena, move and evict entries and
// overflow bucket groups. Values verify (make_value).
inline void churn(Cache& cache, const std::vector<std::string>& keys, int rounds, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string v;
  for (int r = 0; r < rounds; ++r) {
    const std::string& k = keys[rng() % keys.size()];
    const unsigned op = rng() % 100;
    if (op < 45) {
      SetOptions o;
      if (op % 5 == 0) o.tags = {"model.a"};
      cache.set(k, make_value(k, rng(), op % 3 == 0 ? 40 : 60 + rng() % 900), o);
    } else if (op < 85) {
      if (cache.get(k, v) && !verify_value(k, v)) throw std::runtime_error("corrupt read of " + k);
    } else if (op < 95) {
      cache.erase(k);
    } else if (op < 98) {
      cache.invalidate("model.a");  // never clear(): callers keep sentinels elsewhere
    } else {
      cache.stats();
    }
  }
}

}  // namespace hostcache::testing
