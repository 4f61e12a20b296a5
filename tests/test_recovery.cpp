// A process killed while holding a stripe's lock, or halfway through writing,
// costs at most the entry it was writing: the next process to need the stripe
// learns of the death from the lock word, verifies and repairs the stripe,
// and every other entry (in that stripe and in the others) is still there.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>

#include "arena.h"
#include "cache_impl.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;

struct Fixture {
  ScopedName name{"recover"};
  Config config = testing::small_config(name.name, 4u << 20, 4);
  Cache cache = Cache::open(config);
  Segment& segment() { return detail::Access::segment(cache); }
  std::uint32_t stripe_of(std::string_view key) {
    return stripe::of(XXH3_64bits(key.data(), key.size()), segment().geometry().stripe_count);
  }
  layout::StripeHeader& header(std::uint32_t i) {
    return *reinterpret_cast<layout::StripeHeader*>(segment().stripe_base(i));
  }
  void fill(int n) {
    for (int i = 0; i < n; ++i) ASSERT_EQ(cache.set("e" + std::to_string(i), "value" + std::to_string(i)), Errc::ok);
  }
  void expect_all(int n, int except = -1) {
    for (int i = 0; i < n; ++i) {
      if (i == except) continue;
      EXPECT_EQ(cache.get("e" + std::to_string(i)).value_or("<miss>"), "value" + std::to_string(i)) << i;
    }
  }
};


TEST(Recovery, OwnerDiedHoldingTheLockWithSequenceOdd) {
  Fixture f;
  f.fill(400);
  const std::uint32_t s = f.stripe_of("e7");
  pid_t child = testing::spawn([&] {
    stripe::Locked locked(f.segment(), s);
    locked.begin();  // seq odd, as a writer mid-mutation
    ::_exit(0);      // dies holding the lock
    return 0;
  });
  ASSERT_EQ(testing::wait_for(child), 0);
  EXPECT_EQ(f.header(s).seq % 2, 1u);
  EXPECT_EQ(f.header(s).owner_pid, std::uint32_t(child));
  // A reader does not hang: it falls back to the lock, repairs, and hits.
  EXPECT_EQ(f.cache.get("e7").value_or(""), "value7");
  EXPECT_EQ(f.header(s).seq % 2, 0u);
  EXPECT_EQ(f.cache.stats().recoveries, 1u);
  EXPECT_EQ(f.cache.stats().resets, 0u);
  f.expect_all(400);
  ASSERT_EQ(f.cache.set("e7", "after"), Errc::ok);
  EXPECT_EQ(f.cache.get("e7").value_or(""), "after");
}

TEST(Recovery, HalfWrittenEntryIsDroppedOthersKept) {
  Fixture f;
  f.fill(400);
  const std::uint32_t s = f.stripe_of("e3");
  pid_t child = testing::spawn([&] {
    stripe::Locked locked(f.segment(), s);
    locked.begin();
    // Corrupt one committed entry's value the way a torn write would.
    const arena::StripeView& v = locked.view();
    arena::walk(v, v.hdr->tail, v.hdr->head,
                [&](std::uint64_t off, const layout::EntryHeader& h) {
                  if (h.key_len == 2 && std::memcmp(v.arena + arena::key_off(off), "e3", 2) == 0) {
                    v.arena[arena::value_off(off, h)] ^= 0x55;
                  }
                },
                nullptr, nullptr);
    ::kill(::getpid(), SIGKILL);
    return 0;
  });
  ASSERT_EQ(testing::wait_for(child), 128 + SIGKILL);
  EXPECT_FALSE(f.cache.get("e3").has_value());  // its checksum failed: dropped, never served
  f.expect_all(400, 3);
  EXPECT_EQ(f.cache.stats().recoveries, 1u);
  EXPECT_EQ(f.cache.stats().entries, 399u);
}

TEST(Recovery, UnverifiableStripeIsResetAndCountedOthersUntouched) {
  Fixture f;
  f.fill(400);
  const std::uint32_t s = f.stripe_of("e5");
  pid_t child = testing::spawn([&] {
    stripe::Locked locked(f.segment(), s);
    locked.begin();
    const arena::StripeView& v = locked.view();
    std::memset(v.arena + v.hdr->tail, 0xEE, 64);  // the ring's first header is garbage
    ::_exit(0);
    return 0;
  });
  ASSERT_EQ(testing::wait_for(child), 0);
  EXPECT_FALSE(f.cache.get("e5").has_value());
  EXPECT_EQ(f.cache.stats().resets, 1u);
  for (int i = 0; i < 400; ++i) {
    const std::string k = "e" + std::to_string(i);
    if (f.stripe_of(k) != s) EXPECT_EQ(f.cache.get(k).value_or(""), "value" + std::to_string(i)) << k;
  }
  ASSERT_EQ(f.cache.set("e5", "again"), Errc::ok);
  EXPECT_EQ(f.cache.get("e5").value_or(""), "again");
}

TEST(Recovery, LockWordNamingOurOwnThreadCostsATimeoutNotATakeover) {
  Fixture f;
  f.fill(100);
  const std::uint32_t s = f.stripe_of("e1");
  // A writer of the segment copied our identity into the word. Our own word
  // is judged like any live thread's: it may be worn by someone inside (a
  // clone(CLONE_VM) child, or a thread that reused a dead holder's id within
  // its tick: test_attack_lock2), so it is never taken over. It costs this
  // thread, like every other, a lock_timeout: busy, nothing changed.
  std::atomic_ref<std::uint64_t>(f.header(s).lock).store(stripe_lock::self_word());
  EXPECT_EQ(f.cache.set("e1", "not taken over"), Errc::busy);
  EXPECT_EQ(f.cache.get("e1").value_or(""), "value1");  // readers never needed the lock
  EXPECT_EQ(f.cache.stats().recoveries, 0u);
  // Once the word is free again, writes go on, and nothing was lost.
  std::atomic_ref<std::uint64_t>(f.header(s).lock).store(0);
  ASSERT_EQ(f.cache.set("e1", "after"), Errc::ok);
  EXPECT_EQ(f.cache.get("e1").value_or(""), "after");
}

TEST(Recovery, LockWordNamingNoLivingThreadIsTakenOver) {
  Fixture f;
  f.fill(100);
  const std::uint32_t s = f.stripe_of("e2");
  // The identity of a thread that existed and is gone, as if it had died
  // holding the lock.
  auto* word = static_cast<std::uint64_t*>(testing::shared_memory(8));
  const pid_t gone = testing::spawn([&] {
    *word = stripe_lock::self_word();
    return 0;
  });
  ASSERT_EQ(testing::wait_for(gone), 0);
  ASSERT_EQ(stripe_lock::owner_life(*word), stripe_lock::Life::dead);
  std::atomic_ref<std::uint64_t>(f.header(s).lock).store(*word);
  ASSERT_EQ(f.cache.set("e2", "after a stuck lock"), Errc::ok);  // one poll (ms), then a takeover
  EXPECT_EQ(f.cache.get("e2").value_or(""), "after a stuck lock");
  f.expect_all(100, 2);
  EXPECT_EQ(f.cache.stats().recoveries, 1u);
  EXPECT_EQ(f.header(s).takeovers, 1u);
}

TEST(Recovery, ScribbledRingHeaderIsRepairedNotFollowed) {
  Fixture f;
  f.fill(200);
  const std::uint32_t s = f.stripe_of("e4");
  f.header(s).head = ~std::uint64_t{0} - 7;  // far outside the arena
  ASSERT_EQ(f.cache.set("e4", "x"), Errc::ok);
  EXPECT_EQ(f.cache.get("e4").value_or(""), "x");
  EXPECT_EQ(f.cache.stats().resets, 1u);
}

TEST(Recovery, BucketPointingOutsideTheArenaIsAMiss) {
  Fixture f;
  f.fill(50);
  const std::uint32_t s = f.stripe_of("e6");
  auto v = arena::StripeView::over(f.segment().stripe_base(s), f.segment().geometry());
  for (std::uint64_t i = 0; i < std::uint64_t(v.groups) * layout::kGroupSlots; ++i) {
    if (v.buckets[i] != 0) v.buckets[i] |= layout::kOffsetMask;  // offsets past the end
  }
  for (int i = 0; i < 50; ++i) {
    const std::string k = "e" + std::to_string(i);
    if (f.stripe_of(k) == s) EXPECT_FALSE(f.cache.get(k).has_value()) << k;
  }
  ASSERT_EQ(f.cache.set("e6", "again"), Errc::ok);
  EXPECT_EQ(f.cache.get("e6").value_or(""), "again");
}

// The source of a move is intact until a copy overlapping it starts: repair
// keeps it (the audit's finding 9: the journal's rollback used to drop it).
TEST(Recovery, KilledWhileMovingAnEntryKeepsIt) {
  Fixture f;
  f.fill(50);
  const std::uint32_t s = f.stripe_of("e9");
  pid_t child = testing::spawn([&] {
    stripe::Locked locked(f.segment(), s);
    locked.begin();
    const arena::StripeView& v = locked.view();
    // Journal a move of the tail entry and die before the copy completes.
    layout::EntryHeader h;
    if (!arena::read_header(v, v.hdr->tail, h)) return 3;
    v.hdr->move_src = v.hdr->tail;
    v.hdr->move_dst = v.hdr->head;
    v.hdr->move_size = h.size;
    std::memset(v.arena + v.hdr->head, 0xAB, 8);
    ::_exit(0);
    return 0;
  });
  ASSERT_EQ(testing::wait_for(child), 0);
  int missing = 0;
  for (int i = 0; i < 50; ++i) {
    const std::string k = "e" + std::to_string(i);
    auto got = f.cache.get(k);
    if (!got) {
      ++missing;
    } else {
      EXPECT_EQ(*got, "value" + std::to_string(i));
    }
  }
  EXPECT_EQ(missing, 0);
  EXPECT_EQ(f.cache.stats().resets, 0u);
}

}  // namespace
}  // namespace hostcache
