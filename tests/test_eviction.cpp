// Bounded memory and eviction quality: the segment never grows, every set
// succeeds, dead space goes before live data, and hot keys survive churn.
#include <gtest/gtest.h>

#include <random>

#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;

TEST(Eviction, ChurnOfTwentyTimesTheCapacityStaysBounded) {
  ScopedName name("churn");
  const std::size_t capacity = 2u << 20;
  Cache cache = Cache::open(testing::small_config(name.name, capacity, 4));
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::size_t> size(1, 8000);
  std::string value;
  std::size_t written = 0;
  std::uint64_t i = 0;
  ASSERT_EQ(cache.set("hot", "hot value"), Errc::ok);
  while (written < 20 * capacity) {
    const std::string key = "churn-" + std::to_string(i++);
    value.assign(size(rng), char('a' + i % 26));
    ASSERT_EQ(cache.set(key, value), Errc::ok) << key;
    written += value.size() + key.size();
    if (i % 16 == 0) ASSERT_TRUE(cache.get("hot")) << "hot key evicted after " << i << " sets";
    const Stats s = cache.stats();
    ASSERT_LE(s.bytes_used, s.capacity_bytes);
  }
  const Stats s = cache.stats();
  EXPECT_GT(s.evictions, 0u);
  EXPECT_EQ(s.sets, i + 1);
  EXPECT_TRUE(cache.get("hot"));
  // Whatever is still indexed reads back intact.
  std::size_t present = 0;
  for (std::uint64_t k = 0; k < i; ++k) {
    std::string v;
    if (cache.get("churn-" + std::to_string(k), v)) {
      ++present;
      ASSERT_EQ(v, std::string(v.size(), char('a' + (k + 1) % 26)));
    }
  }
  EXPECT_EQ(present + 1, s.entries);
}

TEST(Eviction, LiveDataThatFitsIsNeverDroppedHoweverMuchIsOverwritten) {
  ScopedName name("fits");
  Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 2));
  // ~20% of the arena live, overwritten 50 times over: only garbage goes.
  const int keys = 800;
  for (int round = 0; round < 50; ++round) {
    for (int k = 0; k < keys; ++k) {
      ASSERT_EQ(cache.set("k" + std::to_string(k), testing::make_value("k" + std::to_string(k), round, 400)),
                Errc::ok);
    }
  }
  for (int k = 0; k < keys; ++k) {
    std::string v;
    ASSERT_TRUE(cache.get("k" + std::to_string(k), v)) << k;
    ASSERT_EQ(v, testing::make_value("k" + std::to_string(k), 49, 400));
  }
  EXPECT_EQ(cache.stats().evictions, 0u);
  EXPECT_EQ(cache.stats().entries, std::uint64_t(keys));
}

TEST(Eviction, StaleAndExpiredEntriesGoBeforeLiveOnes) {
  ScopedName name("stale");
  testing::FakeClock clock;
  Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 1));
  // Fill with entries, then make them all stale.
  int n = 0;
  while (cache.stats().evictions == 0 && n < 100000) {
    ASSERT_EQ(cache.set("old" + std::to_string(n++), std::string(500, 'o')), Errc::ok);
  }
  const std::uint64_t evicted_while_filling = cache.stats().evictions;
  cache.clear();
  // New live data (less than the arena) must not evict each other.
  for (int k = 0; k < n / 2; ++k) ASSERT_EQ(cache.set("new" + std::to_string(k), std::string(500, 'n')), Errc::ok);
  const Stats s = cache.stats();
  for (int k = 0; k < n / 2; ++k) ASSERT_TRUE(cache.get("new" + std::to_string(k))) << k;
  EXPECT_GT(s.stale, 0u);
  EXPECT_EQ(s.evictions, evicted_while_filling);  // none since the clear
}

TEST(Eviction, ReadKeysOutliveUnreadOnesUnderPressure) {
  ScopedName name("clock");
  Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 1));
  std::vector<std::string> hot;
  for (int k = 0; k < 200; ++k) {
    hot.push_back("hot" + std::to_string(k));
    ASSERT_EQ(cache.set(hot.back(), std::string(300, 'h')), Errc::ok);
  }
  for (int i = 0; i < 40000; ++i) {
    ASSERT_EQ(cache.set("cold" + std::to_string(i), std::string(300, 'c')), Errc::ok);
    if (i % 50 == 0) {
      for (const auto& k : hot) cache.get(k);
    }
  }
  int survived = 0;
  for (const auto& k : hot) survived += cache.get(k).has_value();
  int cold_survived = 0;
  for (int i = 0; i < 40000; ++i) cold_survived += cache.get("cold" + std::to_string(i)).has_value();
  // The arena holds ~4,500 entries: about 11% of the cold keys can be there,
  // and every hot key, read between passes of the arena, must be.
  EXPECT_EQ(survived, 200);
  EXPECT_LT(cold_survived, 40000 * 15 / 100);
  EXPECT_FALSE(cache.get("cold0").has_value());
}

}  // namespace
}  // namespace hostcache
