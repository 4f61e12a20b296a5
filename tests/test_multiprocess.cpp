// Real processes (fork) sharing one segment: visibility, inherited handles,
// clear/invalidate seen by all at once, statistics summed over processes,
// and a hammer of random operations where every hit is verified.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <random>

#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;

TEST(MultiProcess, ValueSetInOneProcessIsReadInAnother) {
  ScopedName name("mp");
  const Config c = testing::small_config(name.name);
  EXPECT_EQ(testing::wait_for(testing::spawn([&] {
              Cache cache = Cache::open(c);
              return cache.set("from-child", "hello") == Errc::ok ? 0 : 1;
            })),
            0);
  Cache cache = Cache::open(c);
  EXPECT_EQ(cache.get("from-child").value_or(""), "hello");
  ASSERT_EQ(cache.set("from-parent", "world"), Errc::ok);
  EXPECT_EQ(testing::wait_for(testing::spawn([&] {
              Cache child = Cache::attach(c.name);
              if (child.get("from-parent").value_or("") != "world") return 1;
              if (child.set("from-parent", "overwritten") != Errc::ok) return 2;
              return child.erase("from-child") ? 0 : 3;
            })),
            0);
  EXPECT_EQ(cache.get("from-parent").value_or(""), "overwritten");
  EXPECT_FALSE(cache.get("from-child"));
}

TEST(MultiProcess, ForkedChildUsesTheInheritedHandle) {
  ScopedName name("fork");
  Cache cache = Cache::open(testing::small_config(name.name));
  ASSERT_EQ(cache.set("before-fork", "1"), Errc::ok);
  EXPECT_EQ(testing::wait_for(testing::spawn([&] {
              if (!cache.get("before-fork")) return 1;
              return cache.set("from-child", "2") == Errc::ok ? 0 : 2;
            })),
            0);
  EXPECT_EQ(cache.get("from-child").value_or(""), "2");
  // The child counted in its own slot; the totals include it.
  EXPECT_EQ(cache.stats().hits, 2u);
}

// Readers in other processes watch a key; once clear() returns in the parent,
// every get they start returns the new value or a miss, never the old one.
TEST(MultiProcess, ClearAndInvalidateAreSeenByAllAtOnce) {
  ScopedName name("clear");
  const Config c = testing::small_config(name.name);
  Cache cache = Cache::open(c);
  struct Shared {
    std::atomic<int> phase;    // 0 run, 1 cleared, 2 invalidated, 3 stop
    std::atomic<int> ready;
    std::atomic<int> violations;
  };
  auto* sh = new (testing::shared_memory(sizeof(Shared))) Shared{};
  ASSERT_EQ(cache.set("k", "old"), Errc::ok);
  SetOptions tagged;
  tagged.tags = {"app.model"};
  ASSERT_EQ(cache.set("t", "old", tagged), Errc::ok);
  ASSERT_EQ(cache.set("u", "untagged"), Errc::ok);
  std::vector<pid_t> readers;
  for (int r = 0; r < 4; ++r) {
    readers.push_back(testing::spawn([&] {
      Cache mine = Cache::attach(c.name);
      sh->ready.fetch_add(1);
      for (;;) {
        // Read the phase first: the get starts after it.
        const int phase = sh->phase.load(std::memory_order_seq_cst);
        if (phase == 3) return 0;
        auto k = mine.get("k");
        auto t = mine.get("t");
        if (phase >= 1 && k && *k == "old") sh->violations.fetch_add(1);
        if (phase >= 2 && t && *t == "old") sh->violations.fetch_add(1);
      }
    }));
  }
  while (sh->ready.load() < 4) sched_yield();
  cache.clear();
  sh->phase.store(1);
  ASSERT_EQ(cache.set("t", "old", tagged), Errc::ok);  // rewritten after the clear: visible again
  ASSERT_EQ(cache.set("u", "untagged"), Errc::ok);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(cache.set("k", "new" + std::to_string(i)), Errc::ok);
  cache.invalidate("app.model");
  sh->phase.store(2);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(cache.set("k", "newer" + std::to_string(i)), Errc::ok);
  sh->phase.store(3);
  for (pid_t p : readers) EXPECT_EQ(testing::wait_for(p), 0);
  EXPECT_EQ(sh->violations.load(), 0);
  EXPECT_FALSE(cache.get("t"));
  EXPECT_EQ(cache.get("u").value_or(""), "untagged");
}

TEST(MultiProcess, StatsAreSummedAndSurviveTheProcessesThatCounted) {
  ScopedName name("stats");
  const Config c = testing::small_config(name.name);
  Cache cache = Cache::open(c);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  auto statuses = testing::run_children(6, [&](int) {
    Cache mine = Cache::attach(c.name);
    for (int i = 0; i < 100; ++i) mine.get("k");
    for (int i = 0; i < 50; ++i) mine.get("absent");
    return 0;
  });
  for (int s : statuses) EXPECT_EQ(s, 0);
  // One child killed with SIGKILL: its counts stay.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t victim = testing::spawn([&] {
    Cache mine = Cache::attach(c.name);
    for (int i = 0; i < 10; ++i) mine.get("k");
    char x = 1;
    (void)!::write(fds[1], &x, 1);
    for (;;) pause();
    return 0;
  });
  char x;
  ASSERT_EQ(::read(fds[0], &x, 1), 1);
  ::kill(victim, SIGKILL);
  EXPECT_EQ(testing::wait_for(victim), 128 + SIGKILL);
  const Stats s = cache.stats();
  EXPECT_EQ(s.hits, 610u);
  EXPECT_EQ(s.misses, 300u);
  // A new process reuses dead slots without losing their counts.
  for (int round = 0; round < 3; ++round) {
    testing::run_children(4, [&](int) {
      Cache mine = Cache::attach(c.name);
      mine.get("k");
      return 0;
    });
  }
  EXPECT_EQ(cache.stats().hits, 622u);
  ::close(fds[0]);
  ::close(fds[1]);
}

// 8 processes hammer a small keyspace with random get/set/erase/clear; every
// value embeds its key and a checksum, and every hit is verified.
TEST(MultiProcess, HammerEightProcessesZeroCorruptReads) {
  ScopedName name("hammer");
  const Config c = testing::small_config(name.name, 2u << 20, 4);
  Cache cache = Cache::open(c);
  struct Shared {
    std::atomic<long> hits, corrupt, ops;
  };
  auto* sh = new (testing::shared_memory(sizeof(Shared))) Shared{};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  auto statuses = testing::run_children(8, [&](int id) {
    std::mt19937_64 rng(id * 7919 + 1);
    std::string v;
    long ops = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      for (int n = 0; n < 256; ++n, ++ops) {
        const std::string key = "key" + std::to_string(rng() % 500);
        const unsigned op = rng() % 1000;
        if (op < 600) {
          if (cache.get(key, v)) {
            sh->hits.fetch_add(1);
            if (!testing::verify_value(key, v)) sh->corrupt.fetch_add(1);
          }
        } else if (op < 950) {
          if (cache.set(key, testing::make_value(key, rng(), 20 + rng() % 3000)) != Errc::ok) return 2;
        } else if (op < 999) {
          cache.erase(key);
        } else {
          cache.clear();
        }
      }
    }
    sh->ops.fetch_add(ops);
    return 0;
  });
  for (int s : statuses) EXPECT_EQ(s, 0);
  EXPECT_EQ(sh->corrupt.load(), 0);
  EXPECT_GT(sh->hits.load(), 1000);
  std::printf("hammer: %ld ops, %ld verified hits, %ld corrupt\n", sh->ops.load(), sh->hits.load(),
              sh->corrupt.load());
  const Stats s = cache.stats();
  EXPECT_LE(s.bytes_used, s.capacity_bytes);
}

}  // namespace
}  // namespace hostcache
