// 16 threads sharing one mapping, the same workload as the process hammer:
// ThreadSanitizer (which cannot see across processes) checks the seqlock
// protocol here. Zero corrupt reads; zero TSan reports.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "test_support.h"

namespace hostcache {
namespace {

TEST(Threads, SixteenThreadsOneMappingZeroCorruptReads) {
  testing::ScopedName name("threads");
  Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 4));
  std::atomic<long> hits{0}, corrupt{0}, ops{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int id = 0; id < 16; ++id) {
    threads.emplace_back([&, id] {
      std::mt19937_64 rng(id + 1);
      std::string v;
      long n = 0;
      while (!stop.load(std::memory_order_relaxed) || n < 2000) {
        const std::string key = "key" + std::to_string(rng() % 300);
        const unsigned op = rng() % 1000;
        if (op < 600) {
          if (cache.get(key, v)) {
            hits.fetch_add(1);
            if (!testing::verify_value(key, v)) corrupt.fetch_add(1);
          }
        } else if (op < 950) {
          SetOptions o;
          if (op % 3 == 0) o.tags = {"tag" + std::to_string(op % 7) == "tag1" ? "a" : "b"};
          EXPECT_EQ(cache.set(key, testing::make_value(key, rng(), 20 + rng() % 2000), o), Errc::ok);
        } else if (op < 990) {
          cache.erase(key);
        } else if (op < 995) {
          cache.invalidate("a");
        } else if (op < 996) {
          cache.clear();
        } else {
          cache.stats();
        }
        if (++n >= 20000) break;
      }
      ops.fetch_add(n);
    });
  }
  for (auto& t : threads) t.join();
  stop = true;
  EXPECT_EQ(corrupt.load(), 0);
  EXPECT_GT(hits.load(), 0);
  const Stats s = cache.stats();
  EXPECT_EQ(s.gets, s.hits + s.misses);
  EXPECT_LE(s.bytes_used, s.capacity_bytes);
}

}  // namespace
}  // namespace hostcache
