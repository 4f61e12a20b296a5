// test_attack_fork4.cpp — adversarial review of commit 45e7e35 (a child
// forked from a signal handler inside a stripe's repair must stop: repair
// asks a stop predicate "before each writing step"). Real processes, forks
// landed with an x86-64 debug-register watchpoint at chosen instructions of
// arena::repair, and the child scheduled LATE: its handler waits until its
// parent has finished the repair, unlocked, and others have used the stripe.
//
// The promise (README "Reliability"): a child forked while its thread held a
// stripe lock leaves its parent's section alone: it neither repairs, unlocks
// nor ends it. What a library cannot stop is a fork in "the few
// instructions between a repair's last fork check and the store it guards".
// Each scene here lands the fork in a window that is not a few instructions:
// a loop over every bucket, a loop over every bucket plus the ring header,
// and the checksum of a whole entry.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <hostcache/inspect.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "fork_probe.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

// L's pid: who is the parent after the handler's fork (Late, late_forking_handler: fork_probe.h).
pid_t g_l = 0;

struct EntryAt {
  std::uint64_t off = ~std::uint64_t{0};
  layout::EntryHeader h{};
};

EntryAt live_entry(const Cache& cache, const std::string& key) {
  EntryAt e;
  e.off = entry_offset(cache, 0, key);
  if (e.off != ~std::uint64_t{0}) arena::read_header(view_of(cache, 0), e.off, e.h);
  return e;
}

// One scene. `dying` runs in a process that takes stripe 0 and dies holding
// it (it may scribble the stripe first); `watch` is what L's first access
// (`rw`) of lands the fork at. Then L finishes; `meanwhile` runs in the test
// (the stripe used by others); G resumes and ends; `after` judges.
struct Scene {
  std::function<void(stripe::Locked&)> dying;
  std::function<const void*()> watch;
  long rw = kWatchWrites;
  std::function<void()> meanwhile;
  std::function<void()> after;
};

void run_scene(Cache& cache, const Scene& sc) {
  Segment& seg = detail::Access::segment(cache);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  ASSERT_EQ(wait_for(spawn([&] {
              auto* held = new stripe::Locked(seg, 0);  // dies holding it
              if (sc.dying) sc.dying(*held);
              return 0;
            })),
            0);
  ASSERT_NE(lock_word(*hdr), 0u) << "bad test: the dying holder left stripe 0 free";
  const std::uint64_t takeovers0 = words::load(hdr->takeovers);
  const void* watched = sc.watch();
  auto* lt = static_cast<Late*>(shared_memory(sizeof(Late)));
  new (lt) Late{};
  const pid_t l = ::fork();
  if (l == 0) {
    g_late = lt;
    g_l = ::getpid();
    (void)stripe_lock::self_word();
    become_forking_tracee(late_forking_handler);
    int rc;
    try {
      rc = int(cache.set("victim", "parent"));
    } catch (...) {
      rc = 1000;
    }
    if (::getpid() != g_l) {  // G: its copy of L's set returned
      lt->g_rc.store(rc);
      lt->g_done.store(1);
      ::_exit(0);
    }
    lt->l_rc.store(rc);
    lt->l_done.store(1);
    await([&] { return lt->quit.load() != 0; }, 30000);  // a live parent (a prefork master)
    if (lt->g_pid.load() != 0) ::waitpid(lt->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  if (const std::string why = stop_tracee_at(l, watched, sc.rw); !why.empty()) GTEST_SKIP() << why;
  ASSERT_EQ(stripe_lock::tid_of(lock_word(*hdr)), std::uint32_t(l)) << "bad test: L does not hold stripe 0";
  ASSERT_EQ(words::load(hdr->seq) & 1, 1u) << "bad test: stopped outside recover()'s repair";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return lt->g_pid.load() != 0 && lt->g_in_handler.load() != 0; }))
      << "bad test: the handler did not fork";
  ASSERT_TRUE(await([&] { return lt->l_done.load() != 0; })) << "L never finished its set";
  EXPECT_EQ(lt->l_rc.load(), int(Errc::ok)) << "L's own set failed";
  EXPECT_EQ(lock_word(*hdr), 0u) << "L left stripe 0 held";
  EXPECT_EQ(words::load(hdr->takeovers), takeovers0 + 1);
  // The stripe as L left it is sound: whatever differs at the end, G did.
  {
    const auto v0 = inspect::check(seg.name());
    EXPECT_TRUE(v0.empty()) << "bad test: unsound before G resumed:\n" << describe(v0);
  }
  if (sc.meanwhile) sc.meanwhile();
  lt->g_go.store(1);
  EXPECT_TRUE(await([&] { return lt->g_done.load() != 0; }, 10000)) << "G's copy of L's set never returned";
  EXPECT_EQ(lt->g_timed_out.load(), 0);
  EXPECT_NE(lt->g_rc.load(), int(Errc::ok)) << "G's copy of L's set completed";
  EXPECT_EQ(lock_word(*hdr), 0u) << "stripe 0 left held after G";
  EXPECT_EQ(words::load(hdr->seq) & 1, 0u) << "stripe 0's sequence left odd after G";
  sc.after();
  lt->quit.store(1);
  EXPECT_EQ(wait_for(l), 0);
}

void expect_present(Cache& cache, const std::vector<std::string>& keys, const std::vector<std::string>& vals,
                    const char* who) {
  int lost = 0;
  std::string first;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto v = cache.get(keys[i]);
    if (!v || *v != vals[i]) {
      if (lost++ == 0) first = keys[i];
    }
  }
  EXPECT_EQ(lost, 0) << lost << " of " << keys.size() << " " << who << " lost or wrong (first: " << first << ")";
}

// =====================================================================================
// 1. A fork inside repair's index-clearing loop (a walkable ring)
// =====================================================================================
//
// arena::repair (arena.cpp) asks `stop` after the walk, then clears EVERY
// bucket of the stripe in one loop with no check in it, then asks again
// before the first entry. A fork landing in that loop (here: just after the
// store to bucket 0) leaves a child whose copy of the loop clears buckets
// 1..N: run late, after its parent rebuilt the index and others wrote, it
// wipes a live stripe's index under whoever holds it now. Every entry is
// then unreachable (and a later overwrite of one leaves two live copies of
// the key in the ring, which the next repair indexes both).
TEST(AttackFork4Repair, AChildForkedInRepairsBucketClearingLoopWipesNothingOnceItsParentIsDone) {
  ScopedName name("af4-clear");
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  const auto before = keys_in_stripe(cache, 0, 40, "pre");
  std::vector<std::string> before_v;
  for (std::size_t i = 0; i < before.size(); ++i) {
    before_v.push_back(make_value(before[i], i, 100 + 37 * i));
    ASSERT_EQ(cache.set(before[i], before_v.back()), Errc::ok);
  }
  const auto later = keys_in_stripe(cache, 0, 40, "later");
  std::vector<std::string> later_v;
  for (std::size_t i = 0; i < later.size(); ++i) later_v.push_back(make_value(later[i], i, 80 + 13 * i));
  const arena::StripeView v = view_of(cache, 0);
  Scene sc;
  sc.watch = [&] { return static_cast<const void*>(&v.buckets[0]); };
  sc.rw = kWatchWrites;
  sc.meanwhile = [&] {
    expect_present(cache, before, before_v, "entries after L's repair (bad test)");
    for (std::size_t i = 0; i < later.size(); ++i) ASSERT_EQ(cache.set(later[i], later_v[i]), Errc::ok);
  };
  sc.after = [&] {
    expect_present(cache, before, before_v,
                   "entries L's repair kept, after G's copy of the bucket-clearing loop ran (arena.cpp repair: no "
                   "stop check inside `for (i ...) index::store(s.buckets[i], 0)`)");
    expect_present(cache, later, later_v, "entries set after L's repair");
    EXPECT_EQ(cache.get("victim").value_or(""), "parent");
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << describe(violations);
    // The consequence for readers: overwrite every `before` key (a set that
    // misses the index appends, leaving the old copy live), then let an
    // honest crash make the stripe repair itself. Every get must return the
    // newer value: the one the last set that returned wrote.
    std::vector<std::string> newer;
    for (std::size_t i = 0; i < before.size(); ++i) {
      newer.push_back(make_value(before[i], 1000 + i, 100 + 37 * i));
      ASSERT_EQ(cache.set(before[i], newer.back()), Errc::ok);
    }
    Segment& seg = detail::Access::segment(cache);
    ASSERT_EQ(wait_for(spawn([&] {
                new stripe::Locked(seg, 0);  // an honest crash: dies holding it
                return 0;
              })),
              0);
    touch_all_stripes(cache);
    int older = 0;
    for (std::size_t i = 0; i < before.size(); ++i) {
      if (cache.get(before[i]).value_or("") == before_v[i]) ++older;
    }
    EXPECT_EQ(older, 0) << older << " of " << before.size()
                        << " keys answered with the value their later set overwrote (two live copies, both "
                           "indexed by the next repair)";
  };
  run_scene(cache, sc);
}

// =====================================================================================
// 2. A fork inside repair's reset of an unwalkable ring
// =====================================================================================
//
// The dying holder moves head into the middle of the first entry (sane
// bounds, but the ring no longer walks): L's repair asks `stop` once after
// the walk and then calls arena::reset, which clears every bucket and then
// head, tail, used, dead_bytes, entries, the move journal and the lap state,
// and counts a reset: no check in between. A child forked in that loop and
// run late resets the stripe again, under whoever uses it then: every entry
// set since is lost, and `resets` counts two.
TEST(AttackFork4Repair, AChildForkedInsideAResetDoesNotResetTheStripeAgainLater) {
  ScopedName name("af4-reset");
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  const auto before = keys_in_stripe(cache, 0, 20, "pre");
  for (std::size_t i = 0; i < before.size(); ++i) {
    ASSERT_EQ(cache.set(before[i], make_value(before[i], i, 300 + 37 * i)), Errc::ok);
  }
  const auto later = keys_in_stripe(cache, 0, 40, "later");
  std::vector<std::string> later_v;
  for (std::size_t i = 0; i < later.size(); ++i) later_v.push_back(make_value(later[i], i, 80 + 13 * i));
  const arena::StripeView v = view_of(cache, 0);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::uint64_t resets0 = words::load(hdr->resets);
  Scene sc;
  sc.dying = [&](stripe::Locked&) {
    // Inside the first entry: "entry at offset 0 crosses head".
    words::store(hdr->head, words::load(hdr->tail) + 8);
  };
  sc.watch = [&] { return static_cast<const void*>(&v.buckets[0]); };
  sc.rw = kWatchWrites;
  sc.meanwhile = [&] {
    EXPECT_EQ(words::load(hdr->resets), resets0 + 1) << "bad test: L did not reset the unwalkable ring";
    for (std::size_t i = 0; i < later.size(); ++i) ASSERT_EQ(cache.set(later[i], later_v[i]), Errc::ok);
    expect_present(cache, later, later_v, "entries set after L's reset (bad test)");
  };
  sc.after = [&] {
    expect_present(cache, later, later_v,
                   "entries set after L's reset, once G's copy of arena::reset ran on (arena.cpp repair: "
                   "`check(); if (!walked) { reset(s); ...}` has no stop check inside reset's loop and stores)");
    EXPECT_EQ(cache.get("victim").value_or(""), "parent");
    EXPECT_EQ(words::load(hdr->resets), resets0 + 1) << "the reset was counted by G too";
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << describe(violations);
  };
  run_scene(cache, sc);
}

// =====================================================================================
// 3. A fork inside the move journal's checksum, before its head/tail stores
// =====================================================================================
//
// The dying holder journaled a move of the tail entry E (60 KB) to head and
// died before copying it (the state after crash point move.journaled). L's
// repair asks `stop` at its start, then verifies E's checksum (tens of
// thousands of instructions over 60 KB) and only then stores head = dst,
// tail = src and clears the journal. A child forked inside that checksum
// and run late stores the head L saw at the start of its repair into a ring
// that has grown since: head rewound behind live entries, `used` unchanged.
// The next append then writes over entries that are indexed and live.
TEST(AttackFork4Repair, AChildForkedInsideTheMoveJournalsChecksumDoesNotRewindTheRingLater) {
  ScopedName name("af4-move");
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  const std::string big = keys_in_stripe(cache, 0, 1, "big")[0];
  const std::string big_v = make_value(big, 7, 60000);
  ASSERT_EQ(cache.set(big, big_v), Errc::ok);
  const auto before = keys_in_stripe(cache, 0, 20, "pre");
  std::vector<std::string> before_v;
  for (std::size_t i = 0; i < before.size(); ++i) {
    before_v.push_back(make_value(before[i], i, 100 + 37 * i));
    ASSERT_EQ(cache.set(before[i], before_v.back()), Errc::ok);
  }
  const auto later = keys_in_stripe(cache, 0, 40, "later");
  std::vector<std::string> later_v;
  for (std::size_t i = 0; i < later.size(); ++i) later_v.push_back(make_value(later[i], i, 200 + 13 * i));
  const EntryAt e = live_entry(cache, big);
  ASSERT_NE(e.off, ~std::uint64_t{0});
  layout::StripeHeader* hdr = &header_of(cache, 0);
  ASSERT_EQ(e.off, words::load(hdr->tail)) << "bad test: the big entry is not at the tail";
  const arena::StripeView v = view_of(cache, 0);
  ASSERT_LE(e.h.size, v.arena_bytes - words::load(hdr->head));
  Scene sc;
  sc.dying = [&](stripe::Locked&) {
    words::store(hdr->move_src, e.off);
    words::store(hdr->move_dst, words::load(hdr->head));
    words::store(hdr->move_size, std::uint64_t(e.h.size));
  };
  sc.watch = [&] { return static_cast<const void*>(v.arena + e.off + ((e.h.size / 2) & ~std::uint64_t{7})); };
  sc.rw = kWatchAccesses;
  sc.meanwhile = [&] {
    EXPECT_EQ(words::load(hdr->move_size), 0u) << "bad test: L's repair left the journal";
    for (std::size_t i = 0; i < later.size(); ++i) ASSERT_EQ(cache.set(later[i], later_v[i]), Errc::ok);
  };
  sc.after = [&] {
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << "after G's copy of the journal's stores (arena.cpp repair: the stop check "
                                       "precedes intact(src)'s whole-entry checksum, not the head/tail stores):\n"
                                    << describe(violations);
    // More writers append at whatever head says.
    const auto more = keys_in_stripe(cache, 0, 20, "more");
    for (std::size_t i = 0; i < more.size(); ++i) (void)cache.set(more[i], make_value(more[i], i, 500));
    expect_present(cache, later, later_v, "entries set after L's repair, once others appended at G's head");
    expect_present(cache, before, before_v, "entries L's repair kept");
    EXPECT_EQ(cache.get(big).value_or(""), big_v);
    EXPECT_EQ(cache.get("victim").value_or(""), "parent");
  };
  run_scene(cache, sc);
}

// =====================================================================================
// 4. A fork inside the rebuild loop's checksum, before the entry's bucket store
// =====================================================================================
//
// The rebuild loop asks `stop` before each entry, then verifies the entry's
// checksum (the whole 60 KB) and then places it in the index. A child
// forked inside that checksum and run late places a bucket for an entry
// that its parent has long indexed: the entry is referenced twice, and once
// it is erased a bucket points at a dead entry.
TEST(AttackFork4Repair, AChildForkedInsideTheRebuildLoopsChecksumIndexesNothingLater) {
  ScopedName name("af4-rebuild");
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  const auto before = keys_in_stripe(cache, 0, 10, "pre");
  std::vector<std::string> before_v;
  for (std::size_t i = 0; i < before.size(); ++i) {
    before_v.push_back(make_value(before[i], i, 100 + 37 * i));
    ASSERT_EQ(cache.set(before[i], before_v.back()), Errc::ok);
  }
  const std::string big = keys_in_stripe(cache, 0, 1, "big")[0];
  const std::string big_v = make_value(big, 7, 60000);
  ASSERT_EQ(cache.set(big, big_v), Errc::ok);
  const EntryAt e = live_entry(cache, big);
  ASSERT_NE(e.off, ~std::uint64_t{0});
  const arena::StripeView v = view_of(cache, 0);
  Scene sc;
  sc.watch = [&] { return static_cast<const void*>(v.arena + e.off + ((e.h.size / 2) & ~std::uint64_t{7})); };
  sc.rw = kWatchAccesses;
  sc.meanwhile = [&] { EXPECT_EQ(cache.get(big).value_or(""), big_v) << "bad test"; };
  sc.after = [&] {
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << "after G's copy of one rebuild step (arena.cpp repair: the stop check "
                                       "precedes checksum_ok of the whole entry, not place() and its store):\n"
                                    << describe(violations);
    EXPECT_TRUE(cache.erase(big));
    EXPECT_FALSE(cache.get(big).has_value());
    const auto violations2 = inspect::check(name.name);
    EXPECT_TRUE(violations2.empty()) << "after the erase:\n" << describe(violations2);
    expect_present(cache, before, before_v, "entries L's repair kept");
  };
  run_scene(cache, sc);
}

}  // namespace
}  // namespace hostcache
