// Adversarial review of 4243823 (and its mend): Locked keeps its fork epoch,
// and in a child forked while its thread was inside a critical section
// ~Locked neither ends nor unlocks, begin() and end() refuse (busy), the
// constructor's exception path does not unlock, and unlock(s, me) releases
// nothing (owner_pid included) for an identity of another epoch or a word
// not its own. Real processes only. The forks land
// deterministically inside the section: from a SIGSEGV handler (the stripe's
// arena pages are made read-only in the writer's own mapping, so the first
// store of the mutation, after begin(), faults) and from the recovery
// observer (a callback under the lock). A failing test names what broke.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include <hostcache/inspect.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;


// What the process that forks inside a section saw (shared with the test).
struct Probe {
  std::atomic<int> faults;
  std::atomic<int> forks;
  std::uint64_t seq_at_fork, seq_after_child;
  std::uint64_t word_at_fork, word_after_child;
  std::uint32_t owner_pid_at_fork, owner_pid_after_child;
  int child_status;
  int child_rc;  // what the child's operation returned (1000: it threw)
  int child_returned;
};

// The handler's view (set in the writer process before its operation).
std::uint8_t* g_lo = nullptr;
std::size_t g_len = 0;
layout::StripeHeader* g_hdr = nullptr;
Probe* g_probe = nullptr;

void snapshot_before(Probe& p) {
  p.seq_at_fork = words::load(g_hdr->seq);
  p.word_at_fork = lock_word(*g_hdr);
  p.owner_pid_at_fork = words::load(g_hdr->owner_pid);
}
void snapshot_after(Probe& p, pid_t child) {
  int st = 0;
  ::waitpid(child, &st, 0);
  p.child_status = st;
  p.seq_after_child = words::load(g_hdr->seq);
  p.word_after_child = lock_word(*g_hdr);
  p.owner_pid_after_child = words::load(g_hdr->owner_pid);
}

void on_segv(int, siginfo_t* si, void*) {
  auto* a = static_cast<std::uint8_t*>(si->si_addr);
  if (g_lo == nullptr || a < g_lo || a >= g_lo + g_len) {
    ::signal(SIGSEGV, SIG_DFL);  // a real fault: crash on the retry
    return;
  }
  if (g_probe->faults.fetch_add(1) == 0) {
    snapshot_before(*g_probe);
    const pid_t c = ::fork();  // inside the critical section, after begin()
    if (c == 0) {
      ::mprotect(g_lo, g_len, PROT_READ | PROT_WRITE);
      return;  // the child goes on with its copy of the section
    }
    if (c > 0) {
      g_probe->forks.fetch_add(1);
      snapshot_after(*g_probe, c);
    }
  }
  ::mprotect(g_lo, g_len, PROT_READ | PROT_WRITE);
}

// In a process of its own: makes stripe 0's arena pages read-only, runs `op`
// (an operation on stripe 0 that mutates its arena); its first store into
// the arena, inside the writing section, forks. The child finishes its copy
// of the operation and exits with what it returned. Returns op's rc.
int fork_at_first_arena_store(Cache& cache, Probe* probe, const std::function<int()>& op) {
  const arena::StripeView v = view_of(cache, 0);
  const std::uintptr_t page = 4096;
  const auto lo = (reinterpret_cast<std::uintptr_t>(v.arena) + page - 1) & ~(page - 1);
  const auto hi = (reinterpret_cast<std::uintptr_t>(v.arena) + v.arena_bytes) & ~(page - 1);
  g_lo = reinterpret_cast<std::uint8_t*>(lo);
  g_len = hi - lo;
  g_hdr = v.hdr;
  g_probe = probe;
  (void)stripe_lock::self_word();
  const pid_t me = ::getpid();
  struct sigaction sa{};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (::sigaction(SIGSEGV, &sa, nullptr) != 0) return 90;
  if (::mprotect(g_lo, g_len, PROT_READ) != 0) return 91;
  int rc;
  try {
    rc = op();
  } catch (...) {
    rc = 1000;
  }
  if (::getpid() != me) {  // the child, back from its copy of the operation
    probe->child_rc = rc;
    probe->child_returned = 1;
    ::_exit(0);
  }
  ::mprotect(g_lo, g_len, PROT_READ | PROT_WRITE);
  return rc;
}

struct Outcome {
  int parent_rc = -1;
  Probe p{};
};

// One-stripe cache, `prep` run first (setup), then `op` forked inside.
//
// What a library cannot stop: the child returns from the handler into its
// copy of the parent's write and runs it on, store by store, until it
// reaches a check (end(): busy). Its stores repeat the parent's own (the
// same operation on the same bytes), but a counter it updated by adding is
// then added to twice (used, dead_bytes, entries), and an appended entry
// gets a second bucket (`counts_may_drift`). That skews the stripe's
// bookkeeping, never a byte served (a bucket leads only to a live entry of
// its key, checksummed): the checker's only complaints allowed are those,
// and every entry reads exact.
void attack_mid_write(const char* what, const std::function<void(Cache&)>& prep,
                      const std::function<int(Cache&)>& op, const std::function<void(Cache&)>& after,
                      bool counts_may_drift = false) {
  ScopedName name("af2-mid");
  Config c = small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(c);
  // A filler first: the keys under attack lie past the arena's first page
  // (which shares a page with the index and is not made read-only).
  ASSERT_EQ(cache.set("filler", std::string(9000, 'f')), Errc::ok);
  prep(cache);
  auto* probe = static_cast<Probe*>(shared_memory(sizeof(Probe)));
  new (probe) Probe{};
  const int rc = wait_for(spawn([&] { return fork_at_first_arena_store(cache, probe, [&] { return op(cache); }); }));
  ASSERT_EQ(probe->faults.load() >= 1 && probe->forks.load() == 1, true) << what << ": bad test: no fork landed";
  ASSERT_EQ(probe->seq_at_fork & 1, 1u) << what << ": bad test: the fork was not inside a writing section";
  ASSERT_TRUE(WIFEXITED(probe->child_status) && WEXITSTATUS(probe->child_status) == 0)
      << what << ": the child crashed (status " << probe->child_status << ")";
  EXPECT_EQ(rc, 0) << what << ": the parent's own operation failed";
  // The child neither ends the parent's write nor unlocks it. It resumes
  // inside the parent's section after begin() and reaches the operation's
  // own locked.end(), which must refuse: were the sequence made even while
  // the parent is still mid-mutation, readers would accept what it writes
  // (4243823 did not check in end()).
  EXPECT_EQ(probe->seq_after_child, probe->seq_at_fork)
      << what << ": the child forked inside the parent's writing section ended it (sequence " << probe->seq_at_fork
      << " -> " << probe->seq_after_child << ") while the parent was still writing";
  EXPECT_EQ(probe->word_after_child, probe->word_at_fork) << what << ": the child released the parent's lock";
  // Mutual exclusion: the child never held the lock, so it must not report
  // a completed mutation of the stripe.
  EXPECT_NE(probe->child_rc, 0) << what << ": the child's copy of the operation completed (rc 0) in a stripe whose "
                                           "lock only its parent held: two processes mutated one stripe";
  // Afterwards: no stripe left odd (the parent's end() after the child's
  // makes it odd again), no spurious repair, a clean segment.
  EXPECT_EQ(words::load(header_of(cache, 0).seq) & 1, 0u)
      << what << ": the stripe's sequence was left odd after both ends (begin once, end twice)";
  EXPECT_EQ(lock_word(header_of(cache, 0)), 0u);
  auto violations = inspect::check(name.name);
  if (counts_may_drift) {
    std::erase_if(violations, [](const inspect::Violation& v) {
      return v.what.rfind("used is ", 0) == 0 || v.what.rfind("dead_bytes is ", 0) == 0 ||
             v.what.rfind("entries is ", 0) == 0 || v.what == "live entry referenced by 2 buckets";
    });
  }
  EXPECT_TRUE(violations.empty()) << what << ": check(): " << describe(violations);
  EXPECT_EQ(cache.get("filler").value_or(""), std::string(9000, 'f'));
  after(cache);  // the operation's own outcome, done once
  const Stats s = cache.stats();
  EXPECT_EQ(s.recoveries, 0u) << what << ": a stripe nobody died in was repaired";
  EXPECT_EQ(s.resets, 0u);
}

const std::string kOld(3000, 'o');
const std::string kNew(3000, 'n');

TEST(AttackFork2MidWrite, AChildForkedMidSetOfANewKeyNeitherEndsNorCompletesIt) {
  attack_mid_write(
      "set (append)", [](Cache&) {},
      [](Cache& c) { return c.set("victim", kNew) == Errc::ok ? 0 : 1; },
      [](Cache& c) { EXPECT_EQ(c.get("victim").value_or(""), kNew); }, true);
}

TEST(AttackFork2MidWrite, AChildForkedMidInPlaceRewriteNeitherEndsNorCompletesIt) {
  attack_mid_write(
      "set (in place)", [](Cache& c) { ASSERT_EQ(c.set("victim", kOld), Errc::ok); },
      [](Cache& c) { return c.set("victim", kNew) == Errc::ok ? 0 : 1; },
      [](Cache& c) { EXPECT_EQ(c.get("victim").value_or(""), kNew); });
}

TEST(AttackFork2MidWrite, AChildForkedMidEraseNeitherEndsNorCompletesIt) {
  attack_mid_write(
      "erase", [](Cache& c) { ASSERT_EQ(c.set("victim", kOld), Errc::ok); },
      [](Cache& c) { return c.erase("victim") ? 0 : 1; },
      [](Cache& c) { EXPECT_FALSE(c.get("victim").has_value()); }, true);
}

TEST(AttackFork2MidWrite, AChildForkedMidIncrNeitherEndsNorCompletesIt) {
  attack_mid_write(
      "incr", [](Cache& c) { ASSERT_EQ(c.set("victim", "41"), Errc::ok); },
      [](Cache& c) {
        std::int64_t r = 0;
        return c.incr("victim", 1, r) == Errc::ok && r == 42 ? 0 : 1;
      },
      [](Cache& c) { EXPECT_EQ(c.get("victim").value_or(""), "42"); });
}

// =====================================================================================
// The recovery observer: a callback under the lock, in the constructor
// =====================================================================================

Probe* g_obs_probe = nullptr;
Cache* g_obs_cache = nullptr;
std::string g_obs_other;  // a key of another stripe
bool g_obs_throw = false;
pid_t g_obs_parent = 0;

void fork_observer(std::uint64_t, bool) {
  Probe& p = *g_obs_probe;
  if (::getpid() != g_obs_parent || p.forks.load() != 0) return;
  snapshot_before(p);
  const pid_t c = ::fork();
  if (c == 0) {
    if (g_obs_throw) {
      // The child locks another stripe first (its identity is refreshed in
      // place: the Locked's me_ now holds the child's word and epoch), then
      // the callback fails: the constructor's catch unlocks with me_.
      (void)g_obs_cache->set(g_obs_other, "child");
      throw std::runtime_error("observer");
    }
    return;
  }
  p.forks.fetch_add(1);
  snapshot_after(p, c);
}

// Stripe 0's lock is left by a dead owner; a process with the fork observer
// sets a key of stripe 0: it takes over, repairs, and the observer forks.
void attack_in_recovery(bool child_throws) {
  ScopedName name("af2-rec");
  Config c = small_config(name.name, 1u << 20, 2);
  Cache cache = Cache::open(c);
  const auto in0 = keys_in_stripe(cache, 0, 2, "r0-");
  const auto in1 = keys_in_stripe(cache, 1, 1, "r1-");
  ASSERT_EQ(cache.set(in0[0], "kept"), Errc::ok);
  Segment& seg = detail::Access::segment(cache);
  ASSERT_EQ(wait_for(spawn([&] {
              new stripe::Locked(seg, 0);  // dies holding it
              return 0;
            })),
            0);
  ASSERT_NE(lock_word(header_of(cache, 0)), 0u);
  auto* probe = static_cast<Probe*>(shared_memory(sizeof(Probe)));
  new (probe) Probe{};
  const int rc = wait_for(spawn([&]() -> int {
    g_obs_probe = probe;
    g_obs_cache = &cache;
    g_obs_other = in1[0];
    g_obs_throw = child_throws;
    g_obs_parent = ::getpid();
    g_hdr = &header_of(cache, 0);
    stripe::set_recovery_observer(fork_observer);
    int r;
    try {
      r = int(cache.set(in0[1], "parent"));  // Errc::ok is 0
    } catch (const std::exception&) {
      r = 1000;
    }
    if (::getpid() != g_obs_parent) {
      probe->child_rc = r;
      probe->child_returned = 1;
      ::_exit(0);
    }
    return r;
  }));
  ASSERT_EQ(probe->forks.load(), 1) << "bad test: the observer did not fork (rc " << rc << ", recoveries "
                                     << cache.stats().recoveries << ")";
  ASSERT_TRUE(WIFEXITED(probe->child_status) && WEXITSTATUS(probe->child_status) == 0)
      << "the child crashed (status " << probe->child_status << ")";
  EXPECT_EQ(rc, 0) << "the parent's set failed";
  EXPECT_EQ(probe->child_returned, 1);
  if (child_throws) {
    EXPECT_EQ(probe->child_rc, 1000) << "the observer's exception did not reach the child's caller";
  } else {
    EXPECT_EQ(probe->child_rc, int(Errc::busy)) << "the child's copy of the set did not refuse (busy)";
  }
  EXPECT_EQ(probe->word_after_child, probe->word_at_fork) << "the child released its parent's lock";
  EXPECT_EQ(probe->seq_after_child, probe->seq_at_fork) << "the child changed the parent's sequence";
  EXPECT_EQ(probe->owner_pid_after_child, probe->owner_pid_at_fork)
      << "the child cleared its parent's owner_pid (stripe_lock::unlock, reached from Locked::Locked's catch with "
         "me_ refreshed in place to the child's epoch, stores owner_pid = 0 before comparing words)";
  EXPECT_EQ(cache.get(in0[0]).value_or(""), "kept");
  EXPECT_EQ(cache.get(in0[1]).value_or(""), "parent");
  EXPECT_EQ(lock_word(header_of(cache, 0)), 0u);
  EXPECT_EQ(cache.stats().recoveries, 1u);
  const auto violations = inspect::check(name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
}

TEST(AttackFork2Recovery, AChildForkedFromTheRecoveryObserverRefusesAndLeavesTheLock) { attack_in_recovery(false); }

TEST(AttackFork2Recovery, AChildWhoseCallbackThrowsAfterLockingElsewhereLeavesTheParentsOwner) {
  attack_in_recovery(true);
}

// =====================================================================================
// Guards: nothing that is not a child inside a section is judged forked
// =====================================================================================

// A process's very first lock (a fresh process: its fork page reads 0 until
// self() runs), a thread made after a fork, and the parent after a fork: each
// releases its lock (a leak would be a hang, or busy for the next locker).
TEST(AttackFork2Guard, FirstLocksInFreshProcessesThreadsAndParentsAfterAForkAreReleased) {
  ScopedName name("af2-guard");
  Config c = small_config(name.name, 1u << 20, 2);
  c.lock_timeout = 200ms;
  Cache cache = Cache::open(c);
  Segment& seg = detail::Access::segment(cache);
  const auto in0 = keys_in_stripe(cache, 0, 1, "g0-");
  const int rc = wait_for(spawn([&]() -> int {
    // The child of the test: its first ever lock.
    { stripe::Locked l(seg, 0); }
    if (lock_word(header_of(cache, 0)) != 0) return 1;
    // A grandchild forked outside any section: its first lock, then a thread of its own.
    const int g = wait_for(spawn([&]() -> int {
      if (cache.set(in0[0], "grand") != Errc::ok) return 2;
      if (lock_word(header_of(cache, 0)) != 0) return 3;
      int t = 0;
      std::thread th([&] {
        t = cache.set(in0[0], "thread") == Errc::ok && lock_word(header_of(cache, 0)) == 0 ? 0 : 4;
      });
      th.join();
      return t;
    }));
    if (g != 0) return 10 + g;
    // The parent after the fork, and a thread it makes now.
    { stripe::Locked l(seg, 0); }
    if (lock_word(header_of(cache, 0)) != 0) return 20;
    int t = 0;
    std::thread th([&] {
      stripe::Locked l(seg, 1);
      l.begin();
      l.end();
    });
    th.join();
    if (lock_word(header_of(cache, 1)) != 0) return 21;
    return t;
  }));
  EXPECT_EQ(rc, 0) << "a lock of a process or thread that is not a child inside a section was left held "
                      "(1: first lock of a process; 12/13/14: a grandchild and its thread; 20/21: the parent)";
  EXPECT_EQ(cache.set(in0[0], "after"), Errc::ok);
  EXPECT_EQ(cache.stats().recoveries, 0u) << "a live owner's lock was taken over";
}

// A section a thread began and a fork by ANOTHER thread: the parent's own
// ~Locked after the fork still ends and unlocks (the epoch is the parent's).
TEST(AttackFork2Guard, AParentsSectionThatOutlivesAForkStillEndsAndUnlocks) {
  ScopedName name("af2-outlive");
  Config c = small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(c);
  Segment& seg = detail::Access::segment(cache);
  const int rc = wait_for(spawn([&]() -> int {
    std::uint64_t seq0 = 0;
    {
      stripe::Locked l(seg, 0);
      l.begin();
      seq0 = words::load(header_of(cache, 0).seq);
      int child_rc = -1;
      std::thread forker([&] { child_rc = wait_for(spawn([] { return 0; })); });
      forker.join();
      if (child_rc != 0) return 1;
    }
    if (words::load(header_of(cache, 0).seq) != seq0 + 1) return 2;
    if (lock_word(header_of(cache, 0)) != 0) return 3;
    return 0;
  }));
  EXPECT_EQ(rc, 0) << "2: the parent's section did not end after a fork; 3: its lock leaked";
}

}  // namespace
}  // namespace hostcache
