// test_attack_fork5.cpp — adversarial review of a96f49a, 45e7e35, b0da772 /
// 7a4fbd3 and 25a37c5 (forks inside repairs and memoize flights), and of
// processes in another pid namespace and raw clone() children. Real
// processes only: fork, SIGKILL, forks from signal handlers landed with an
// x86-64 debug-register watchpoint (tests/fork_probe.h), unshare(CLONE_NEWPID).
//
// Each test asserts a model property: what must be present, what must never
// be served, that one computation serves a key per flight while its owner
// lives, and that nobody waits past a generous hang bound. Processes
// synchronise through flags in MAP_SHARED memory (never a sleep that orders).
#include <gtest/gtest.h>

#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <hostcache/inspect.h>
#include <hostcache/memoize.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "flight.h"
#include "fork_probe.h"
#include "memoize_fixture.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace memoize_testing;
using namespace std::chrono_literals;

// ---- shared helpers ----------------------------------------------------------------

struct Flags {
  std::atomic<int> started, finish, go, done, in_handler, timed_out, quit, skipped;
  std::atomic<int> rc_a, rc_b, pid_a, pid_b, computes, nested_computes, nested_err;
  char text[4][128];
};
Flags* make_flags() {
  auto* f = static_cast<Flags*>(shared_memory(sizeof(Flags)));
  new (f) Flags{};
  return f;
}
void put_text(Flags* f, int i, const std::string& s) { std::snprintf(f->text[i], sizeof f->text[i], "%s", s.c_str()); }

// Enters a new pid namespace (as root, or as an unprivileged user with a user
// namespace). The caller's NEXT child is pid 1 there. False if not permitted.
bool enter_new_pid_namespace() {
  if (::unshare(CLONE_NEWPID) == 0) return true;
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  if (::unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0) return false;
  auto write_file = [](const char* path, const std::string& text) {
    FILE* f = std::fopen(path, "w");
    if (f == nullptr) return false;
    const bool ok = std::fputs(text.c_str(), f) >= 0;
    return std::fclose(f) == 0 && ok;
  };
  return write_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n") &&
         write_file("/proc/self/setgroups", "deny") &&
         write_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
}

// =====================================================================================
// 1. recover()'s last stores after its last stop check (25a37c5 / a96f49a)
// =====================================================================================
//
// Locked::recover (src/stripe.cpp) asks `stop()` once more after the repair,
// then does
//     store(recoveries, load(recoveries) + 1);
//     store(seq, load(seq) + 1);            // even again
// README's known limit calls a fork there one that "repeats those stores".
// But the second is not a repeat: it is a fresh load-and-increment. A child
// forked (from a signal handler) right after the `recoveries` store, and
// scheduled late, adds 1 to whatever sequence the stripe has THEN: while
// another process is in the middle of a write (sequence odd), it makes the
// sequence even, and an optimistic reader copies the half-written value and
// validates it (the sequence does not change under it). Invariant 1: a get
// returned bytes no set wrote.
pid_t g_l = 0;  // L's pid (Late, late_forking_handler: fork_probe.h)

TEST(AttackFork5Recover, AChildForkedAfterRecoveriesStoreNeverFlipsALiveWritersSequence) {
  ScopedName name("af5-seq");
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  Segment& seg = detail::Access::segment(cache);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::string key = keys_in_stripe(cache, 0, 1, "torn")[0];
  const std::string v1 = make_value(key, 1, 4096), v2 = make_value(key, 2, 4096);
  ASSERT_EQ(cache.set(key, v1), Errc::ok);
  const auto others = keys_in_stripe(cache, 0, 10, "other");
  for (std::size_t i = 0; i < others.size(); ++i) ASSERT_EQ(cache.set(others[i], make_value(others[i], i, 200)), Errc::ok);

  // A holder dies holding stripe 0 (an honest crash).
  ASSERT_EQ(wait_for(spawn([&] {
              new stripe::Locked(seg, 0);
              return 0;
            })),
            0);
  ASSERT_NE(lock_word(*hdr), 0u);
  auto* lt = static_cast<Late*>(shared_memory(sizeof(Late)));
  new (lt) Late{};
  // L takes it over and repairs; the fork lands right after recover()'s store to `recoveries`.
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
    if (::getpid() != g_l) {
      lt->g_rc.store(rc);
      lt->g_done.store(1);
      ::_exit(0);
    }
    lt->l_rc.store(rc);
    lt->l_done.store(1);
    await([&] { return lt->quit.load() != 0; }, 30000);
    if (lt->g_pid.load() != 0) ::waitpid(lt->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  const std::uint64_t recoveries0 = words::load(hdr->recoveries);
  if (const std::string why = stop_tracee_at(l, &hdr->recoveries, kWatchWrites); !why.empty()) GTEST_SKIP() << why;
  ASSERT_EQ(words::load(hdr->recoveries), recoveries0 + 1) << "bad test: not stopped after the recoveries store";
  ASSERT_EQ(words::load(hdr->seq) & 1, 1u) << "bad test: stopped outside recover()";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return lt->g_pid.load() != 0 && lt->g_in_handler.load() != 0; }));
  ASSERT_TRUE(await([&] { return lt->l_done.load() != 0; })) << "L never finished its set";
  EXPECT_EQ(lt->l_rc.load(), int(Errc::ok));
  ASSERT_EQ(lock_word(*hdr), 0u);
  ASSERT_EQ(words::load(hdr->seq) & 1, 0u) << "bad test: L left the stripe odd";
  ASSERT_EQ(cache.get(key).value_or(""), v1);

  // W rewrites `key` in place (same size, same lengths) and is stopped right
  // after its store to the middle of the value: sequence odd, half written.
  const std::uint64_t off = entry_offset(cache, 0, key);
  ASSERT_NE(off, ~std::uint64_t{0});
  layout::EntryHeader h{};
  const arena::StripeView v = view_of(cache, 0);
  arena::read_header(v, off, h);
  const void* mid = v.arena + ((arena::value_off(off, h) + h.value_len / 2) & ~std::uint64_t{7});
  const pid_t w = ::fork();
  if (w == 0) {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(97);
    ::raise(SIGSTOP);
    ::_exit(cache.set(key, v2) == Errc::ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(w, &status, 0), w);
  ASSERT_TRUE(WIFSTOPPED(status));
  ASSERT_TRUE(run_to_access(w, mid, kWatchWrites)) << "bad test: W never wrote the value's middle";
  ASSERT_EQ(words::load(hdr->seq) & 1, 1u) << "bad test: W stopped outside its write";
  ASSERT_EQ(entry_offset(cache, 0, key), off) << "bad test: W did not rewrite in place";

  // G, scheduled late, runs the rest of its copy of L's recover().
  lt->g_go.store(1);
  EXPECT_TRUE(await([&] { return lt->g_done.load() != 0; }, 10000)) << "G's copy of L's set never returned";
  EXPECT_EQ(lt->g_timed_out.load(), 0);
  EXPECT_NE(lt->g_rc.load(), int(Errc::ok)) << "G's copy of L's set completed";
  const bool odd = (words::load(hdr->seq) & 1) == 1;
  EXPECT_TRUE(odd) << "G's copy of recover() (src/stripe.cpp, `store(seq, load(seq) + 1)` after the last stop "
                      "check) made a live writer's odd sequence even";
  EXPECT_EQ(words::load(hdr->recoveries), recoveries0 + 1) << "recoveries counted by G too";
  if (!odd) {
    // The consequence for a reader (with an odd sequence it would wait on W's lock instead).
    const auto got = cache.get(key);
    if (got) {
      EXPECT_TRUE(verify_value(key, *got)) << "invariant 1: a get returned W's half-written value ("
                                           << (*got == v1 ? "old" : *got == v2 ? "new" : "torn") << ")";
      EXPECT_TRUE(*got == v1 || *got == v2) << "invariant 1: bytes no set wrote";
    }
  }
  ASSERT_EQ(::ptrace(PTRACE_DETACH, w, nullptr, nullptr), 0);
  EXPECT_EQ(finishes_within(w, 10000), 0);
  lt->quit.store(1);
  EXPECT_EQ(finishes_within(l, 10000), 0);
  EXPECT_EQ(cache.get(key).value_or(""), v2);
  EXPECT_EQ(words::load(hdr->seq) & 1, 0u) << "stripe left odd after W's end (G's +1 flipped it)";
  const auto violations = inspect::check(name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
}

// =====================================================================================
// 2. Flights across pid namespaces (b0da772: the flight's owner_pid is getpid())
// =====================================================================================
//
// The stripe lock refuses a process that moved to another pid namespace
// (Locked's same_namespaces); the flights do not. flight.cpp's claim stores
// getpid() (a number in the claimer's namespace) and overdue() judges it
// with kill(pid, 0) in the waiter's namespace.

// 2a. A nested-namespace waiter judges a live owner of the root namespace dead
// (its pid is not visible there: ESRCH) and takes the flight over: the key
// is computed a second time while its owner computes it.
TEST_F(MemoizeTest, AttackFork5_AProcessInANestedPidNamespaceNeverTakesOverALiveOwnersFlight) {
  Flags* f = make_flags();
  ComputeOptions o;
  o.lease = 1h;  // nothing but a release or a death hands the flight over within the test
  const pid_t owner = spawn([&] {
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&] {
          f->computes.fetch_add(1);
          f->started.store(1);
          await([&] { return f->finish.load() != 0; }, 30000);
          return std::string("owner");
        },
        o);
    return r == "owner" ? 0 : 1;
  });
  ASSERT_TRUE(await([&] { return f->started.load() != 0; }, 10000));
  const pid_t outer = spawn([&] {
    if (!enter_new_pid_namespace()) {
      f->skipped.store(1);
      return 0;
    }
    const pid_t inner = spawn([&] {  // pid 1 of the nested namespace, with the mapping
      try {
        const std::string r = get_or_compute<std::string>(
            cache_, "k",
            [&] {
              f->computes.fetch_add(1);
              f->nested_computes.fetch_add(1);
              return std::string("nested");
            },
            o);
        put_text(f, 0, r);
      } catch (const Error& e) {
        f->nested_err.store(int(e.code()) + 1);
        put_text(f, 0, e.what());
      }
      f->done.store(1);
      return 0;
    });
    return wait_for(inner);
  });
  // The nested process is refused, or took the flight over; if it sleeps on
  // the flight instead (correct), this bound passes and the test goes on.
  (void)await([&] { return f->skipped.load() != 0 || f->done.load() != 0 || f->nested_computes.load() != 0; },
              2000);
  if (f->skipped.load() != 0) {
    f->finish.store(1);
    finishes_within(owner, 10000);
    finishes_within(outer, 10000);
    GTEST_SKIP() << "no pid namespaces here";
  }
  EXPECT_EQ(f->nested_computes.load(), 0)
      << "a process in a nested pid namespace judged the live owner (pid " << owner
      << ", invisible to it: kill(pid, 0) == ESRCH in flight.cpp process_gone) dead and computed the key a second "
         "time while it still computed (" << f->text[0] << ")";
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner)) << "the owner's flight was taken over";
  f->finish.store(1);
  EXPECT_EQ(finishes_within(owner, 10000), 0);
  EXPECT_EQ(finishes_within(outer, 10000), 0);
  EXPECT_EQ(f->computes.load(), 1) << "one key, one live owner, computed " << f->computes.load() << " times";
  EXPECT_TRUE(all_flights_free(cache_));
}

// 2b. The reverse: a nested process (pid 1 there) claims a flight and is
// killed. Its owner_pid is 1, which in the root namespace is the root init:
// alive forever. A root-namespace waiter waits for a dead process until the
// lease ends (invariant 6: a dead process never blocks the others; flight.h:
// "nobody waits on a dead process").
TEST_F(MemoizeTest, AttackFork5_AWaiterNoticesTheDeathOfAFlightOwnerFromANestedPidNamespace) {
  Flags* f = make_flags();
  ComputeOptions o;
  o.lease = 1h;
  const pid_t outer = spawn([&] {
    if (!enter_new_pid_namespace()) {
      f->skipped.store(1);
      return 0;
    }
    const pid_t inner = spawn([&] {  // pid 1 of the nested namespace
      try {
        (void)get_or_compute<std::string>(
            cache_, "k",
            [&] {
              f->pid_b.store(int(::getpid()));
              f->started.store(1);
              await([&] { return false; }, 60000);  // computes until killed
              return std::string("nested");
            },
            o);
      } catch (const Error& e) {
        f->nested_err.store(int(e.code()) + 1);
        put_text(f, 0, e.what());
        f->done.store(1);
      }
      return 0;
    });
    f->pid_a.store(int(inner));  // its pid in the root namespace
    return wait_for(inner);
  });
  ASSERT_TRUE(await([&] { return f->skipped.load() != 0 || f->started.load() != 0 || f->done.load() != 0; },
                    10000));
  if (f->skipped.load() != 0) {
    finishes_within(outer, 10000);
    GTEST_SKIP() << "no pid namespaces here";
  }
  if (f->done.load() != 0) {
    // Refused: the flights, like the stripe lock, refuse another namespace. That is the fix.
    EXPECT_EQ(finishes_within(outer, 10000), 0);
    SUCCEED() << f->text[0];
    return;
  }
  ASSERT_TRUE(await([&] { return f->pid_a.load() != 0; }));
  const std::uint32_t recorded = flight_owner(cache_, "k");
  const pid_t waiter = spawn([&] {
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&] {
          f->computes.fetch_add(1);
          return std::string("waiter");
        },
        o);
    return r == "waiter" ? 0 : 1;
  });
  ASSERT_TRUE(await([&] { return sleeping_waiters(cache_) == 1 || f->computes.load() != 0; }, 10000));
  EXPECT_EQ(f->computes.load(), 0) << "bad test: the waiter computed while the nested owner lived";
  ::kill(pid_t(f->pid_a.load()), SIGKILL);  // the nested owner dies (and its namespace with it)
  EXPECT_EQ(finishes_within(outer, 10000), 128 + SIGKILL);
  // Hang bound: a dead owner is noticed within kPollMs (50 ms); 10 s is generous. The lease is 1 h.
  EXPECT_EQ(finishes_within(waiter, 10000), 0)
      << "the waiter still waited 10 s after the flight's owner died: the slot names pid " << recorded
      << " (the owner's pid in its own namespace; it was pid " << f->pid_a.load()
      << " here), which kill(pid, 0) finds alive in the root namespace (flight.cpp process_gone)";
  EXPECT_EQ(f->computes.load(), 1);
}

// =====================================================================================
// 3. memoize and fork: per-method statistics, raw clone() children
// =====================================================================================

// 3a. A child forked inside compute() that returns normally goes on through
// its copy of compute_and_store: record(false, ...) counts a request and a
// miss there too. One compute() ran (MethodStats::misses: "ran compute()"),
// method_stats reports two.
TEST_F(MemoizeTest, AttackFork5_AChildReturningFromTheComputeDoesNotCountASecondMiss) {
  Flags* f = make_flags();
  ComputeOptions o = options("fork5_method");
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    bool in_child = false;
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&]() -> std::string {
          f->computes.fetch_add(1);
          const pid_t c = ::fork();
          if (c == 0) {
            in_child = true;
            return "child";
          }
          if (wait_for(c) != 0) return "child failed";
          return "owner";
        },
        o);
    if (in_child) ::_exit(0);
    return r == "owner" ? 0 : 1;
  });
  EXPECT_EQ(finishes_within(owner, 10000), 0);
  ASSERT_EQ(f->computes.load(), 1);
  const auto m = stats_of(cache_, "fork5_method");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->misses, 1u) << "one compute() counted as " << m->misses
                           << " misses: the child's copy of compute_and_store ran record() too (src/memoize.cpp)";
  EXPECT_EQ(m->requests, 1u) << "one call counted as " << m->requests << " requests";
}

// 3b. (passing probe) A raw SYS_fork child inside compute() (no atfork
// handlers) that returns normally leaves the flight to its parent: the
// Flight's epoch is the MADV_WIPEONFORK page's, which a raw fork wipes too.
TEST_F(MemoizeTest, AttackFork5_ARawForkChildOfTheComputeLeavesTheFlightToItsParent) {
  Flags* f = make_flags();
  ComputeOptions o;
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    bool in_child = false;
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&]() -> std::string {
          f->computes.fetch_add(1);
          const long c = ::syscall(SYS_fork);
          if (c == 0) {
            in_child = true;
            return "child";
          }
          if (c < 0 || wait_for(pid_t(c)) != 0) return "child failed";
          f->started.store(1);
          await([&] { return f->finish.load() != 0; }, 30000);
          return "owner";
        },
        o);
    if (in_child) ::syscall(SYS_exit_group, 0);
    return r == "owner" ? 0 : 1;
  });
  ASSERT_TRUE(await([&] { return f->started.load() != 0; }, 10000));
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner)) << "a raw fork child released its parent's flight";
  f->finish.store(1);
  EXPECT_EQ(finishes_within(owner, 10000), 0);
  EXPECT_EQ(f->computes.load(), 1);
  EXPECT_TRUE(all_flights_free(cache_));
}

// 3c. A raw SYS_fork child (no atfork handlers: StatsRecorder::fork_epoch_
// stays its parent's) counts in its parent's StatsSlot and, when its copy of
// the Cache is destroyed, ~StatsRecorder frees the parent's slot (epoch
// equal, pid_ the parent's) while the parent lives and counts there. stats.h:
// "Each process claims one StatsSlot ... and writes only there". Totals stay
// exact (every count is an atomic add and slots are never zeroed): probed too.
TEST(AttackFork5Stats, ARawForkChildNeverFreesItsLiveParentsStatsSlot) {
  ScopedName name("af5-stats");
  Cache root = Cache::open(small_config(name.name, 1u << 20, 2));
  Flags* f = make_flags();
  const std::uint64_t misses0 = root.stats().misses;
  const pid_t parent = spawn([&] {
    std::optional<Cache> c;
    c.emplace(Cache::open(small_config(name.name, 1u << 20, 2)));
    (void)c->get("nothing-0");  // claims this process's slot
    const long child = ::syscall(SYS_fork);
    if (child == 0) {
      for (int i = 0; i < 100; ++i) (void)c->get("nothing-c");
      c.reset();  // the child's copy of the handle goes away (a worker closing it)
      ::syscall(SYS_exit_group, 0);
    }
    if (child < 0 || wait_for(pid_t(child)) != 0) return 2;
    for (int i = 0; i < 10; ++i) (void)c->get("nothing-p");
    f->started.store(1);
    await([&] { return f->finish.load() != 0; }, 30000);
    return 0;
  });
  ASSERT_TRUE(await([&] { return f->started.load() != 0; }, 10000));
  Segment& seg = detail::Access::segment(root);
  bool owned = false;
  for (std::uint32_t i = 0; i < seg.geometry().stats_slots; ++i) {
    if (words::load(seg.stats_slots()[i].pid) == std::uint32_t(parent)) owned = true;
  }
  EXPECT_TRUE(owned) << "the live parent's stats slot was freed by its raw-fork child's ~StatsRecorder "
                        "(src/stats.cpp: the epoch is pthread_atfork's, which SYS_fork skips)";
  EXPECT_EQ(root.stats().misses, misses0 + 111) << "a count was lost or doubled";
  f->finish.store(1);
  EXPECT_EQ(finishes_within(parent, 10000), 0);
  EXPECT_EQ(root.stats().misses, misses0 + 111);
}

// =====================================================================================
// 4. A fork inside a flight's claim (b0da772: the epoch is read before the CAS)
// =====================================================================================
//
// Flights::claim (src/flight.cpp) reads `epoch = identity().generation`
// first, then CASes the slot to claiming, stores the fields (owner_pid =
// getpid()), CASes to tentative, runs another_owner (which may wait up to
// kTransientGraceMs on another claimer), and confirms. A child forked (from
// a signal handler) anywhere in there runs the rest of the claim as itself:
// if it wins the confirming CAS it owns the flight under its own pid but with
// its PARENT's epoch, so release() (identity().generation != f.epoch) is a
// no-op in the very process that owns it. The flight stays busy, owned by a
// live process that has long returned, and every caller of the key waits its
// whole lease. Here the fork lands right after the claiming CAS and the
// parent's handler lets the child finish its claim first.
Flags* g_claim = nullptr;
const std::uint32_t* g_claim_word = nullptr;

void claim_forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    errno = saved;
    return;  // the child runs on through the claim at once
  }
  g_claim->pid_b.store(int(c));
  // The parent resumes once the child confirmed, or once its call returned
  // (a child that leaves the claim to its parent claims afresh as itself,
  // once the parent's stalled claim is freed), or a bound passed.
  await([] { return (words::load(*g_claim_word) & 7u) == 6u || g_claim->done.load() != 0; }, 5000);
  errno = saved;
}

TEST_F(MemoizeTest, AttackFork5_AChildForkedInsideAClaimThatWinsItReleasesItsFlight) {
  Flags* f = make_flags();
  g_claim = f;
  ComputeOptions o;
  o.lease = 1h;
  const std::uint64_t kh = XXH3_64bits("k", 1);
  const layout::FlightSlot* slot = &flight_slots(cache_)[kh & (flight_count(cache_) - 1)];
  g_claim_word = &slot->word;
  ASSERT_TRUE(flight::is_free(*slot));
  const pid_t p = ::fork();
  if (p == 0) {
    (void)stripe_lock::self_word();
    f->pid_a.store(int(::getpid()));
    become_forking_tracee(claim_forking_handler);
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&] {
          f->computes.fetch_add(1);
          return std::string(::getpid() == f->pid_a.load() ? "parent" : "child");
        },
        o);
    if (::getpid() != f->pid_a.load()) {
      put_text(f, 1, r);
      f->done.store(1);  // the child returned from get_or_compute: a live worker goes on
      await([&] { return f->quit.load() != 0; }, 30000);
      ::_exit(0);
    }
    put_text(f, 0, r);
    f->rc_a.store(1);
    await([&] { return f->quit.load() != 0; }, 30000);
    if (f->pid_b.load() != 0) ::waitpid(f->pid_b.load(), nullptr, 0);
    ::_exit(0);
  }
  if (const std::string why = stop_tracee_at(p, &slot->word, kWatchWrites); !why.empty()) GTEST_SKIP() << why;
  ASSERT_EQ(words::load(slot->word) & 3u, 1u) << "bad test: not stopped right after the claiming CAS";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, p, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return f->done.load() != 0 || f->rc_a.load() != 0; }, 10000));
  // The child's call returned (it computed: it owned the flight). Now the flight must be free
  // (or held by the parent, computing): the parent's own call returns, and a caller that
  // misses the key (erased: as after an invalidation) gets a value, within a bound.
  const bool child_owned = f->done.load() != 0;
  EXPECT_TRUE(await([&] { return f->rc_a.load() != 0; }, 4000))
      << "the parent's own get_or_compute still waits (lease 1 h) on the flight its child (pid " << f->pid_b.load()
      << ", alive, its call returned: " << child_owned << ") claimed for it with the parent's epoch "
      << "(flight.cpp claim reads the epoch before the CAS), whose release() was a no-op";
  cache_.erase("k");
  const pid_t asker = spawn([&] {
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&] {
          f->computes.fetch_add(1);
          return std::string("asker");
        },
        o);
    put_text(f, 2, r);
    return 0;
  });
  EXPECT_EQ(finishes_within(asker, 4000), 0)
      << "a caller of the key still waited 4 s (lease 1 h) on a flight owned by the live child pid "
      << f->pid_b.load() << " (owner now " << flight_owner(cache_, "k") << "), whose get_or_compute returned long "
      << "ago (child owned: " << child_owned
      << "): it claimed with its parent's epoch (flight.cpp claim reads the epoch before the CAS), so its "
         "release() was a no-op";
  f->quit.store(1);
  EXPECT_EQ(finishes_within(p, 4000), 0);
  EXPECT_LE(f->computes.load(), 2);
  EXPECT_TRUE(all_flights_free(cache_)) << "a flight left held after every call returned";
}

}  // namespace
}  // namespace hostcache
