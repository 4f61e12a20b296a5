// The core audit (issue 10) and the lock half of the security issue (11):
// one regression test per finding, each with real processes. Each failed on
// the tree the audit was made against (c78fa4c); the comments say how.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "arena.h"
#include "cache_impl.h"
#include "reliability_support.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;
using steady = std::chrono::steady_clock;

layout::StripeHeader& header_of(Cache& cache, std::uint32_t i) {
  return *reinterpret_cast<layout::StripeHeader*>(detail::Access::segment(cache).stripe_base(i));
}

// The identity word of a thread that existed and is gone.
std::uint64_t dead_identity() {
  auto* word = static_cast<std::uint64_t*>(testing::shared_memory(8));
  const pid_t child = testing::spawn([&] {
    *word = stripe_lock::self_word();
    return 0;
  });
  EXPECT_EQ(testing::wait_for(child), 0);
  EXPECT_EQ(stripe_lock::owner_life(*word), stripe_lock::Life::dead);
  return *word;
}

// ---- finding 1: two holders of one stripe lock -----------------------------------

// Shared between the contenders: how many are inside the critical section now,
// and whether two ever were.
struct Exclusion {
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> entered{0};
  std::atomic<int> takeovers{0};
};

inline void cpu_relax_for_test() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

// Holds the lock for a while, checking that nobody else is inside.
void critical_section(Exclusion& x) {
  if (x.inside.fetch_add(1) != 0) x.overlaps.fetch_add(1);
  for (int i = 0; i < 2000; ++i) {
    if (x.inside.load() != 1) x.overlaps.fetch_add(1);
    cpu_relax_for_test();
  }
  x.inside.fetch_sub(1);
  x.entered.fetch_add(1);
}

TEST(Audit1, SixLockersOfADeadOwnersStripeNeverOverlap) {
  ScopedName name("audit1");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  auto* x = new (testing::shared_memory(sizeof(Exclusion))) Exclusion;
  const std::uint64_t dead = dead_identity();
  constexpr int kRounds = 40, kLockers = 6;
  for (int round = 0; round < kRounds; ++round) {
    std::atomic_ref<std::uint64_t>(h.lock).store(dead);  // stuck: its owner is gone
    testing::Gate gate;
    std::vector<pid_t> kids;
    for (int k = 0; k < kLockers; ++k) {
      kids.push_back(testing::spawn([&] {
        gate.wait();
        const auto a = stripe_lock::lock(h, steady::now() + std::chrono::seconds(20));
        if (!a.acquired) return 2;
        if (a.owner_died) x->takeovers.fetch_add(1);
        critical_section(*x);
        stripe_lock::unlock(h);
        return 0;
      }));
    }
    gate.open();
    for (pid_t p : kids) ASSERT_EQ(testing::wait_for(p), 0);
  }
  EXPECT_EQ(x->overlaps.load(), 0) << "two processes held one stripe lock";
  EXPECT_EQ(x->entered.load(), kRounds * kLockers);
  EXPECT_EQ(x->takeovers.load(), kRounds) << "exactly one takeover per dead owner";
}

TEST(Audit1, LockersOfAnOwnerKilledInsideNeverOverlap) {
  ScopedName name("audit1k");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  auto* x = new (testing::shared_memory(sizeof(Exclusion))) Exclusion;
  constexpr int kRounds = 20, kLockers = 5;
  for (int round = 0; round < kRounds; ++round) {
    testing::Gate holding;
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t victim = testing::spawn([&] {
      stripe_lock::lock(h, steady::now() + std::chrono::seconds(5));
      char c = 1;
      if (::write(fds[1], &c, 1) != 1) return 3;
      for (;;) ::pause();  // killed inside
    });
    char c;
    ASSERT_EQ(::read(fds[0], &c, 1), 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<pid_t> kids;
    for (int k = 0; k < kLockers; ++k) {
      kids.push_back(testing::spawn([&] {
        const auto a = stripe_lock::lock(h, steady::now() + std::chrono::seconds(20));
        if (!a.acquired) return 2;
        if (a.owner_died) x->takeovers.fetch_add(1);
        critical_section(*x);
        stripe_lock::unlock(h);
        return 0;
      }));
    }
    ::kill(victim, SIGKILL);
    EXPECT_EQ(testing::wait_for(victim), 128 + SIGKILL);
    for (pid_t p : kids) ASSERT_EQ(testing::wait_for(p), 0);
  }
  EXPECT_EQ(x->overlaps.load(), 0);
  EXPECT_EQ(x->entered.load(), kRounds * kLockers);
  EXPECT_EQ(x->takeovers.load(), kRounds);
}

// Many processes hammer one stripe through the cache while a helper keeps
// planting dead owners' words: every read still verifies.
TEST(Audit1, CacheStaysExactWhileDeadOwnersArePlanted) {
  ScopedName name("audit1c");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  const std::uint64_t dead = dead_identity();
  auto* stop = static_cast<std::atomic<int>*>(testing::shared_memory(64));
  auto* bad = stop + 1;
  const pid_t planter = testing::spawn([&] {
    for (int i = 0; i < 200 && stop->load() == 0; ++i) {
      std::uint64_t expected = 0;
      std::atomic_ref<std::uint64_t>(h.lock).compare_exchange_strong(expected, dead);
      std::this_thread::sleep_for(std::chrono::milliseconds(3));  // pacing the attack, not synchronising
    }
    return 0;
  });
  const auto statuses = testing::run_children(4, [&](int w) {
    Cache c = Cache::attach(name.name);
    std::string v;
    for (int i = 0; i < 3000; ++i) {
      const std::string k = "k" + std::to_string((i * 7 + w) % 64);
      if (i % 3 == 0) {
        c.set(k, testing::make_value(k, std::uint64_t(i), 100));
      } else if (c.get(k, v) && !testing::verify_value(k, v)) {
        bad->fetch_add(1);
      }
    }
    return 0;
  });
  stop->store(1);
  EXPECT_EQ(testing::wait_for(planter), 0);
  for (int s : statuses) EXPECT_EQ(s, 0);
  EXPECT_EQ(bad->load(), 0);
}

// ---- finding 2: an attacher with a larger key limit -------------------------------

TEST(Audit2, AttacherWithAHugeKeyLimitCannotWritePastTheArena) {
  for (unsigned stripes : {1u, 2u}) {
    SCOPED_TRACE(stripes);
    ScopedName name("audit2");
    Config small = testing::small_config(name.name, 256u << 10, stripes);
    small.max_value_bytes = 1024;
    Cache owner = Cache::open(small);
    for (int i = 0; i < 50; ++i) ASSERT_EQ(owner.set("n" + std::to_string(i), "v" + std::to_string(i)), Errc::ok);
    const int status = testing::wait_for(testing::spawn([&] {
      // Planned for a big segment, it attaches to the small one that exists.
      Config big = small;
      big.capacity_bytes = 16u << 20;
      big.max_key_bytes = 1u << 20;
      Cache c = Cache::open(big);
      const std::string key(300000, 'k');
      const Errc e = c.set(key, "v");
      if (e == Errc::ok) return 4;
      if (e != Errc::key_too_large) return 5;
      if (c.max_key_bytes() > detail::Access::segment(c).geometry().arena_bytes) return 6;
      if (c.set("small", "v") != Errc::ok) return 7;
      return 0;
    }));
    EXPECT_EQ(status, 0) << "the attacher crashed or stored an entry larger than its arena";
    // Its neighbours are intact and usable.
    int found = 0;
    for (int i = 0; i < 50; ++i) found += owner.get("n" + std::to_string(i)).value_or("") == "v" + std::to_string(i);
    EXPECT_EQ(found, 50);
    for (std::uint32_t s = 0; s < stripes; ++s) EXPECT_TRUE(arena::header_sane(arena::StripeView::over(
        detail::Access::segment(owner).stripe_base(s), detail::Access::segment(owner).geometry())));
    EXPECT_EQ(owner.stats().resets, 0u);
    EXPECT_EQ(owner.set("after", "ok"), Errc::ok);
  }
}

// ---- finding 4: stale and expired entries go before live ones ---------------------

TEST(Audit4, StaleAndExpiredEntriesAreReclaimedBeforeAnyLiveOne) {
  for (bool by_ttl : {false, true}) {
    SCOPED_TRACE(by_ttl ? "expired" : "stale");
    ScopedName name("audit4");
    testing::FakeClock clock;
    Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 1));
    const std::string value(480, 'v');
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(cache.set("live" + std::to_string(i), value), Errc::ok);
    SetOptions doomed;
    if (by_ttl) {
      doomed.ttl = std::chrono::seconds(1);
    } else {
      doomed.tags = {"t"};
    }
    for (int i = 0; i < 1500; ++i) ASSERT_EQ(cache.set("doomed" + std::to_string(i), value, doomed), Errc::ok);
    if (by_ttl) {
      clock.advance(2000);
    } else {
      cache.invalidate("t");
    }
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(cache.set("later" + std::to_string(i), value), Errc::ok);
    int missing = 0;
    for (int i = 0; i < 1000; ++i) {
      missing += !cache.get("live" + std::to_string(i)).has_value();
      missing += !cache.get("later" + std::to_string(i)).has_value();
    }
    EXPECT_EQ(missing, 0) << "live entries were evicted while stale or expired ones held space";
    EXPECT_EQ(cache.stats().evictions, 0u);
  }
}

// ---- finding 8: limits come from the geometry verified at attach -----------------

TEST(Audit8, LimitsRewrittenInTheLiveHeaderChangeNothing) {
  ScopedName name("audit8");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 2));
  Cache attached = Cache::attach(name.name);
  const std::size_t key_limit = attached.max_key_bytes();
  auto* h = detail::Access::segment(cache).header();
  h->max_key_bytes = 1u << 20;
  h->max_value_bytes = 1u << 30;
  h->default_ttl_ms = 1;
  h->stripe_count = 1024;
  h->groups_per_stripe = 0x7fffffff;
  EXPECT_EQ(attached.set(std::string(300000, 'k'), "v"), Errc::key_too_large);
  EXPECT_EQ(attached.max_key_bytes(), key_limit);
  ASSERT_EQ(attached.set("k", "v"), Errc::ok);
  EXPECT_EQ(cache.get("k").value_or(""), "v");
  // A new attacher verifies the header and refuses it.
  try {
    Cache::attach(name.name);
    ADD_FAILURE() << "attached to a header with impossible limits";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::corrupt) << e.what();
  }
}

// ---- findings 5 and 6: the index must hold what the arena holds -------------------

TEST(Audit6, LiveDataThatFitsIsKeptWhole) {
  struct Case {
    std::size_t capacity;
    unsigned stripes;
    int entries;
  };
  // The audit's two cases: 2 MiB, 1 stripe, 10,000 x 128 B (lost 1,838), and
  // the default 64 MiB with 300,000 x 128 B (lost 39,835).
  for (const Case c : {Case{2u << 20, 1, 10000}, Case{64u << 20, 0, 300000}}) {
    SCOPED_TRACE(c.entries);
    ScopedName name("audit6");
    Config config = testing::small_config(name.name, c.capacity, c.stripes);
    Cache cache = Cache::open(config);
    // Entries of 128 bytes in the arena: 104 of header, key and value.
    auto value_for = [](const std::string& k) { return std::string(128 - layout::kHeaderBytes - k.size(), 'v'); };
    for (int i = 0; i < c.entries; ++i) {
      const std::string k = "k" + std::to_string(i);
      ASSERT_EQ(cache.set(k, value_for(k)), Errc::ok);
    }
    int missing = 0;
    for (int i = 0; i < c.entries; ++i) missing += !cache.get("k" + std::to_string(i)).has_value();
    EXPECT_EQ(missing, 0);
    EXPECT_EQ(cache.stats().evictions, 0u);
  }
}

TEST(Audit5, RepairKeepsEveryIntactEntryOfANearlyFullIndex) {
  for (int n : {7000, 9000}) {
    SCOPED_TRACE(n);
    ScopedName name("audit5");
    Cache cache = Cache::open(testing::small_config(name.name, 2u << 20, 1));
    for (int i = 0; i < n; ++i) ASSERT_EQ(cache.set("k" + std::to_string(i), "v" + std::to_string(i)), Errc::ok);
    // Dies holding the lock with the sequence odd, having written nothing.
    const pid_t child = testing::spawn([&] {
      stripe::Locked locked(detail::Access::segment(cache), 0);
      locked.begin();
      ::_exit(0);
      return 0;
    });
    ASSERT_EQ(testing::wait_for(child), 0);
    int missing = 0;
    for (int i = 0; i < n; ++i) {
      missing += cache.get("k" + std::to_string(i)).value_or("") != "v" + std::to_string(i);
    }
    EXPECT_EQ(missing, 0) << "repair dropped intact entries";
    EXPECT_EQ(cache.stats().recoveries, 1u);
  }
}

// ---- finding 9: repair under readers, pid namespaces -------------------------------

TEST(Audit9, RepairAfterADeadOwnerThatLeftTheSequenceEvenMakesItOddMeanwhile) {
  ScopedName name("audit9");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  for (int i = 0; i < 200; ++i) ASSERT_EQ(cache.set("k" + std::to_string(i), "v"), Errc::ok);
  layout::StripeHeader& h = header_of(cache, 0);
  const std::uint64_t seq_before = h.seq;
  std::atomic_ref<std::uint64_t>(h.lock).store(dead_identity());  // died between two mutations: seq even
  // The repair advances the sequence by two: odd while it works, even after.
  // (It used to leave an even sequence even, so optimistic readers could see
  // the index half rebuilt.)
  ASSERT_EQ(cache.set("k1", "w"), Errc::ok);  // + 2 for the repair, + 2 for the set
  EXPECT_EQ(h.seq, seq_before + 4);
  EXPECT_EQ(cache.stats().recoveries, 1u);
}

TEST(Audit9, AttachFromAnotherPidNamespaceIsRefused) {
  ScopedName name("audit9ns");
  Cache cache = Cache::open(testing::small_config(name.name));
  const int status = testing::wait_for(testing::spawn([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 10;  // needs root; CI is root
    const pid_t inner = ::fork();
    if (inner == 0) {
      try {
        Cache::attach(name.name);
      } catch (const Error& e) {
        ::_exit(e.code() == Errc::incompatible ? 0 : 2);
      }
      ::_exit(1);
    }
    int st = 0;
    ::waitpid(inner, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 3;
  }));
  if (status == 10) GTEST_SKIP() << "unshare(CLONE_NEWPID) not permitted here";
  EXPECT_EQ(status, 0) << "a process in another pid namespace attached read-write";
}

// ---- the lock's bound: a live holder costs at most lock_timeout --------------------

TEST(Lock, LiveHolderPastTheTimeoutIsAMissABusySetAndABusyErase) {
  ScopedName name("busy");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = std::chrono::milliseconds(100);
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  layout::StripeHeader& h = header_of(cache, 0);
  int go[2], done[2];
  ASSERT_EQ(::pipe(go), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t holder = testing::spawn([&] {
    stripe::Locked locked(detail::Access::segment(cache), 0);
    locked.begin();  // a writer stopped mid-mutation: readers cannot read optimistically
    char c = 1;
    if (::write(go[1], &c, 1) != 1) return 3;
    if (::read(done[0], &c, 1) != 1) return 4;  // held until the parent is done
    return 0;
  });
  char c;
  ASSERT_EQ(::read(go[0], &c, 1), 1);
  EXPECT_FALSE(cache.get("k").has_value());
  EXPECT_EQ(cache.set("k", "w"), Errc::busy);
  try {
    cache.erase("k");
    ADD_FAILURE() << "erase returned while a live process held the lock";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::busy);
    EXPECT_NE(std::string(e.what()).find("lock_timeout"), std::string::npos) << e.what();
  }
  ASSERT_EQ(::write(done[1], &c, 1), 1);
  EXPECT_EQ(testing::wait_for(holder), 0);
  EXPECT_EQ(h.seq % 2, 0u);  // the holder's scope ended its mutation
  EXPECT_EQ(cache.get("k").value_or(""), "v");
}

TEST(Lock, ForgedWordNamingALiveThreadCostsATimeoutNotAHang) {
  ScopedName name("forged");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = std::chrono::milliseconds(50);
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  layout::StripeHeader& h = header_of(cache, 0);
  // The identity of a live thread of another process.
  auto* word = static_cast<std::uint64_t*>(testing::shared_memory(8));
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t other = testing::spawn([&] {
    *word = stripe_lock::self_word();
    char c = 1;
    if (::write(ready[1], &c, 1) != 1) return 3;
    return ::read(done[0], &c, 1) == 1 ? 0 : 4;
  });
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  std::atomic_ref<std::uint64_t>(h.lock).store(*word);
  h.seq |= 1;
  EXPECT_FALSE(cache.get("k").has_value());
  EXPECT_EQ(cache.set("k", "w"), Errc::busy);
  ASSERT_EQ(::write(done[1], &c, 1), 1);
  EXPECT_EQ(testing::wait_for(other), 0);
  // Its owner is gone now: the next locker takes over and repairs.
  EXPECT_EQ(cache.set("k", "w"), Errc::ok);
  EXPECT_EQ(cache.get("k").value_or(""), "w");
  EXPECT_GE(cache.stats().recoveries, 1u);
}

TEST(Lock, IdentityOfAThreadIsNotThatOfItsProcessOrOfAReusedId) {
  // Two threads of one process have distinct words; each word is alive while
  // its thread runs and dead once it has exited.
  std::uint64_t a = stripe_lock::self_word(), b = 0;
  std::thread t([&] { b = stripe_lock::self_word(); });
  t.join();
  EXPECT_NE(a, b);
  EXPECT_EQ(stripe_lock::owner_life(a), stripe_lock::Life::alive);
  EXPECT_EQ(stripe_lock::owner_life(b), stripe_lock::Life::dead);
  // Same thread id, another birth: the id was reused.
  EXPECT_EQ(stripe_lock::owner_life(a ^ (std::uint64_t{1} << 40)), stripe_lock::Life::dead);
}

// A zombie (exited, not yet reaped) holds nothing: its lock is taken over.
TEST(Lock, ZombieOwnerIsDead) {
  ScopedName name("zombie");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  layout::StripeHeader& h = header_of(cache, 0);
  const pid_t child = testing::spawn([&] {
    stripe_lock::lock(h, steady::now() + std::chrono::seconds(5));
    ::_exit(0);  // exits holding it; not reaped until the end of the test
    return 0;
  });
  siginfo_t info{};
  ASSERT_EQ(::waitid(P_PID, id_t(child), &info, WEXITED | WNOWAIT), 0);  // a zombie now
  EXPECT_EQ(cache.set("k", "w"), Errc::ok);
  EXPECT_EQ(cache.get("k").value_or(""), "w");
  EXPECT_EQ(testing::wait_for(child), 0);
}

}  // namespace
}  // namespace hostcache
