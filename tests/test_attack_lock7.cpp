// Adversarial review (seventh round) of the stripe lock after 3bfbc8d:
// "a pid namespace that cannot be read is never the creator's", namespaces
// read through /proc/thread-self, same_namespaces strict, and lock_slow's
// judgement at the deadline.
//
// Real processes and threads throughout: fork, clone3 set_tid,
// unshare(CLONE_NEWNS / CLONE_NEWTIME / CLONE_FS), setns(CLONE_NEWTIME /
// CLONE_NEWNS), a tmpfs over /proc (a sandbox without /proc) and its
// removal, a file bound over a task's /proc stat, SIGSTOP, SIGKILL. Pipes
// order events; every wait is bounded (a hang is reported, not waited out).
//
// On 3bfbc8d: 1, 2, 3 and 4 (its error message only) FAIL; 2's control,
// 5a, 5b, 6, 7 and 8 pass.
//
// The model every lock scene checks: a holder keeps its `inside` flag set
// until the waiter has answered, so an acquisition that sees it set is two
// holders; a dead holder's stripe must become lockable again within a
// generous bound; values read are exactly what was written, within TTL.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <hostcache/memoize.h>

#include "cache_impl.h"
#include "fork_probe.h"
#include "lock_probe.h"
#include "log.h"
#include "pidns_probe.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::header_of;
using testing::Pipe;
using testing::ScopedName;
using testing::word_ref;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

using testing::gettid_;
using testing::no_proc;

// undo_no_proc() removes no_proc()'s tmpfs again: /proc is back (a sandbox
// that mounts it after the worker started).
bool undo_no_proc() { return ::umount2("/proc", 0) == 0; }

using testing::move_to_time_namespace_offset_ms;
using testing::Text;

// ============================================================================
// 1. A process that moves itself into another time namespace after its
//    first lock (setns(CLONE_NEWTIME) moves the caller at once). Its thread's
//    Identity is cached per fork epoch, and stripe::Locked's guard compares
//    the CACHED namespaces (stripe.cpp, Locked::Locked: same_namespaces(me_,
//    ...)); only lock_slow's judgement reads them afresh (moved_since). On a
//    free stripe the uncontended path (try_free) asks nothing: the moved
//    process locks and writes. Its CLOCK_MONOTONIC (clock::now_ms, the TTL
//    clock) is shifted by the namespace's offset, so an entry it sets with a
//    TTL of 200 ms expires 1000 s later for everyone else: invariant 4
//    (TTL is never exceeded), and the guard's own promise ("a process that
//    moved to another pid or time namespace after attaching must not lock").
// ============================================================================
TEST(AttackLock7, ProcessThatMovedToAnotherTimeNamespaceAfterItsFirstLockNeverWritesPastTheTtl) {
  ScopedName name("atk7_ttl");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> set_result{-1}, refused{0};
    std::atomic<std::int64_t> jump_ms{0};
    Text what;
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  Pipe done;
  const pid_t m = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    if (cache.set("warm", "w") != Errc::ok) return 20;  // its identity is cached, as any worker's
    const std::int64_t before = testing::mono_ms();
    if (!move_to_time_namespace_offset_ms(1000 * 1000)) return 10;
    x->jump_ms = testing::mono_ms() - before;
    try {
      SetOptions o;
      o.ttl = 200ms;
      x->set_result = int(cache.set("k", "moved", o));
    } catch (const Error& e) {
      x->refused = 1;
      x->what.put(std::string(to_string(e.code())) + ": " + e.what());
    }
    done.send();
    return 0;
  });
  done.close_write();
  const bool reported = done.recv();
  const std::int64_t t_set = testing::mono_ms();  // the set is done by now (test's clock)
  const int ms = testing::finishes_within(m, 10000);
  if (ms == 10) GTEST_SKIP() << "no time namespace with a monotonic offset here";
  ASSERT_TRUE(reported) << "mover exited " << ms;
  ASSERT_EQ(ms, 0);
  ASSERT_GT(x->jump_ms.load(), 900'000) << "the offset did not apply";
  // Wait out the TTL (5 times over) on the test's own clock: a bound, not an ordering.
  ASSERT_TRUE(testing::await([&] { return testing::mono_ms() > t_set + 1000; }, 5000));
  const std::optional<std::string> got = cache.get("k");
  EXPECT_NE(got.value_or("<miss>"), "moved")
      << "an entry set with ttl 200 ms was still served " << (testing::mono_ms() - t_set)
      << " ms later: the setter had moved to a time namespace whose monotonic clock runs 1000 s ahead, "
         "and stripe::Locked let it lock (set returned "
      << x->set_result.load() << ", refused " << x->refused.load() << " " << x->what.s << ")";
  // The model: either it was refused (contents intact, "v"), or what it wrote obeys its TTL (a miss).
  if (x->refused.load()) EXPECT_EQ(got.value_or("<miss>"), "v");
}

// ============================================================================
// 2. A holder whose own /proc stat cannot be read (an empty file bound over
//    /proc/PID/task/TID/stat in its mount namespace), while its pid
//    namespace can (/proc/thread-self/ns/pid stats fine). self() keeps such
//    a thread's word with birth 0 ("judged by the id alone": any errno but
//    EMFILE/ENFILE/ENOMEM, stripe_lock.cpp self()), pidns is known, and the
//    guard (pidns == 0 only) lets it lock. It dies holding; its pid is given
//    to another, live process (clone3 set_tid; pid reuse is what a busy
//    host does on its own). Every waiter reads /proc/PID/stat of the
//    stranger, a live task, with no birth to compare: "alive". The dead
//    holder's stripe stays busy for as long as the stranger lives.
// ============================================================================
// The control (hide_birth false: no bind, the same scene otherwise) recovers:
// the stranger's start time differs from the dead holder's birth stamp.
void dead_holder_whose_pid_is_reused(bool hide_birth) {
  ScopedName name(hide_birth ? "atk7_birth0" : "atk7_birthc");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = 50ms;
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> held{0}, birth0{0}, pidns0{0};
    std::atomic<std::uint64_t> word{0};
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  char empty[] = "/tmp/atk7_emptyXXXXXX";
  const int efd = ::mkstemp(empty);
  ASSERT_GE(efd, 0);
  ::close(efd);
  const pid_t hp = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    if (::unshare(CLONE_NEWNS) != 0) return 50;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 50;
    const std::string st = "/proc/" + std::to_string(::getpid()) + "/task/" + std::to_string(gettid_()) + "/stat";
    if (hide_birth && ::mount(empty, st.c_str(), nullptr, MS_BIND, nullptr) != 0) return 51;
    try {
      stripe::Locked locked(detail::Access::segment(cache), 0);
      const stripe_lock::Identity& me = stripe_lock::identity();
      x->birth0 = (me.word >> 32) == 0;
      x->pidns0 = me.pidns == 0;
      x->word = word_ref(header_of(cache, 0)).load();
      x->held = 1;
      ::_exit(0);  // dies holding it (a crash: no destructor runs)
    } catch (const Error&) {
      return 0;  // refused: the lock is free, nothing to recover
    }
  });
  const int hs = testing::finishes_within(hp, 10000);
  ::unlink(empty);
  if (hs == 50 || hs == 51) GTEST_SKIP() << "cannot bind over /proc here (" << hs << ")";
  ASSERT_EQ(hs, 0);
  if (!x->held.load()) {
    EXPECT_EQ(cache.set("k", "after"), Errc::ok);  // refused: nothing held, nothing lost
    return;
  }
  ASSERT_EQ(bool(x->birth0.load()), hide_birth) << "the bind did not hide the holder's start time";
  // The dead holder's pid, now a live stranger's (blocked on a pipe: not inside, not a locker).
  // Past the holder's start-time tick (a stranger born within it would wear
  // its very word: a documented limit, not this attack).
  const auto tick0 = testing::boot_ticks_now();
  ASSERT_TRUE(testing::await([&] { return testing::boot_ticks_now() > tick0 + 2; }, 5000));
  Pipe started, stop;
  const pid_t tids[1] = {hp};
  const pid_t r = testing::fork_at(tids, 1);
  if (r == 0) {
    stop.close_write();
    started.send();
    stop.recv();
    ::_exit(0);
  }
  if (r < 0) GTEST_SKIP() << "clone3 set_tid refused here (errno " << errno << ")";
  started.close_write();
  ASSERT_TRUE(started.recv());
  Errc e = Errc::busy;
  const bool recovered = testing::await(
      [&] {
        try {
          e = cache.set("k", "after");
        } catch (const Error& err) {
          e = err.code();
        }
        return e == Errc::ok;
      },
      5000);
  stop.send();
  testing::finishes_within(r, 10000);
  EXPECT_TRUE(recovered) << "holder pid " << hp << " died holding stripe 0 (word " << std::hex << x->word.load()
                         << std::dec << ", birth stamp 0 although its pid namespace was readable: pidns0 "
                         << x->pidns0.load() << "); its pid now names a live stranger that is not inside, and "
                         << "after 5 s of sets the stripe is still busy (last " << int(e) << ")";
  EXPECT_EQ(cache.get("k").value_or("<miss>"), recovered ? "after" : "v");
}
TEST(AttackLock7, HolderWithoutABirthStampIsRecoveredAfterItDiesEvenIfItsPidIsReused) {
  dead_holder_whose_pid_is_reused(true);
}
TEST(AttackLock7, Control_HolderWithABirthStampIsRecoveredAfterItDiesAndItsPidIsReused) {
  dead_holder_whose_pid_is_reused(false);
}

// ============================================================================
// 3. A worker whose first lock came while it had no /proc (a sandbox that
//    mounts /proc later, a worker started before its container's /proc): the
//    thread's Identity caches pidns 0 (and a word without birth) for its fork
//    epoch. Locked refuses, telling it to "mount its pid namespace's
//    /proc". Once /proc is there the same thread is still refused, for good
//    (self() recomputes only on a new fork epoch or a word of 0), while a
//    new thread of the same process locks fine. The error names a remedy
//    that does not remedy anything.
// ============================================================================
TEST(AttackLock7, ThreadRefusedForWantOfProcLocksOnceProcIsMounted) {
  ScopedName name("atk7_back");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> first{-1}, after{-1}, new_thread{-1}, ns_after{0};
    Text first_what, after_what;
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  const auto try_set = [&](const char* v, Text* what) {
    try {
      return int(cache.set("k", v));
    } catch (const Error& e) {
      if (what) what->put(std::string(to_string(e.code())) + ": " + e.what());
      return 1000 + int(e.code());
    }
  };
  const pid_t c = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    if (!no_proc()) return 21;
    x->first = try_set("without proc", &x->first_what);
    if (!undo_no_proc()) return 22;
    x->ns_after = stripe_lock::own_ns_inode("pid") != 0;
    x->after = try_set("proc is back", &x->after_what);
    std::thread t([&] { x->new_thread = try_set("new thread", nullptr); });
    t.join();
    return 0;
  });
  const int cs = testing::finishes_within(c, 10000);
  if (cs == 21 || cs == 22) GTEST_SKIP() << "no mount namespace here (" << cs << ")";
  ASSERT_EQ(cs, 0);
  ASSERT_TRUE(x->ns_after.load()) << "/proc did not come back";
  EXPECT_EQ(x->first.load(), 1000 + int(Errc::incompatible)) << x->first_what.s;
  EXPECT_EQ(x->new_thread.load(), int(Errc::ok)) << "a new thread, with /proc back, could not set";
  EXPECT_EQ(x->after.load(), int(Errc::ok))
      << "with its pid namespace's /proc mounted again, as the first error asked (\"" << x->first_what.s
      << "\"), the same thread is still refused: " << x->after_what.s;
  EXPECT_TRUE(cache.get("k").has_value());
}

// ============================================================================
// 4. get / get_or_compute (single flight) in a worker without /proc, forked
//    from one that opened the cache: reads work (optimistic, no lock), a
//    memoized call is refused or computed, never hangs, never stores under
//    an unjudgeable identity, and the contents stay intact.
// ============================================================================
TEST(AttackLock7, GetAndGetOrComputeWithoutProcNeverHangAndLeaveContentsIntact) {
  ScopedName name("atk7_memo");
  Config config = testing::small_config(name.name, 1u << 20, 2);
  config.lock_timeout = 200ms;
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> get_ok{0}, memo{-1}, memo_code{-1}, set_code{-1};
    Text what;
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  const pid_t c = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    if (!no_proc()) return 21;
    // A get may miss here rather than judge expiry blind: one that sees the
    // monotonic-less-wall gap move (likely a tick between its two clock
    // reads) reads its namespaces again, which fails without /proc. So a
    // miss is allowed, but not in all of 20 tries (its only try missed once
    // in the ASan suite under ctest -j2, not in 6 reruns alone).
    for (int i = 0; i < 20 && !x->get_ok; ++i) x->get_ok = cache.get("k").value_or("<miss>") == "v";
    try {
      const std::string v = get_or_compute<std::string>(cache, "memo", [] { return std::string("computed"); });
      x->memo = v == "computed" ? 1 : 2;
    } catch (const Error& e) {
      x->memo = 3;
      x->memo_code = int(e.code());
      x->what.put(e.what());
    }
    try {
      x->set_code = int(cache.set("k", "no proc"));
    } catch (const Error& e) {
      x->set_code = 1000 + int(e.code());
    }
    return 0;
  });
  const int cs = testing::finishes_within(c, 10000);
  if (cs == 21) GTEST_SKIP() << "no mount namespace here";
  ASSERT_EQ(cs, 0) << "the worker without /proc hung or crashed";
  EXPECT_TRUE(x->get_ok.load()) << "a get without /proc did not return the value";
  std::printf("  [no /proc] get ok %d, get_or_compute %d (code %d: %s), set %d\n", x->get_ok.load(),
              x->memo.load(), x->memo_code.load(), x->what.s, x->set_code.load());
  EXPECT_NE(x->memo.load(), 2) << "get_or_compute returned a wrong value";
  if (x->memo.load() == 3) {
    EXPECT_EQ(x->memo_code.load(), int(Errc::incompatible)) << x->what.s;
    // Clear: it says /proc cannot be read, not a namespace mismatch there is none of.
    EXPECT_NE(std::string(x->what.s).find("/proc"), std::string::npos) << "unclear: " << x->what.s;
  }
  EXPECT_NE(x->set_code.load(), int(Errc::ok)) << "a set without /proc was let in";
  EXPECT_EQ(cache.get("k").value_or("<miss>"), "v");
  EXPECT_FALSE(cache.get("memo").has_value() && x->memo.load() != 1) << "a refused memoized call stored something";
  // Nothing is left locked: both stripes take a set at once.
  for (int i = 0; i < 16; ++i) EXPECT_EQ(cache.set("p" + std::to_string(i), "x"), Errc::ok);
}

// ============================================================================
// 5. Deadline judgements on a live holder: 4 processes x 4 threads lock the
//    holder's stripe with timeouts of 0 and 1 ms (each call now judges the
//    owner at its deadline), thousands of times, while the holder is inside
//    (running, blocked in read(); then SIGSTOPped). None may get the lock.
// ============================================================================
void tiny_timeouts_on_a_live_holder(bool stopped) {
  ScopedName name(stopped ? "atk7_tinys" : "atk7_tiny");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> inside{0};
    std::atomic<int> acquired{0}, acquired_inside{0}, owner_died{0}, calls{0}, moved{0};
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  Pipe holding, release;
  const pid_t hp = testing::fork_holder(h, x->inside, holding, release);
  ASSERT_TRUE(holding.recv());
  if (stopped) {
    ASSERT_EQ(::kill(hp, SIGSTOP), 0);
    siginfo_t si{};
    ASSERT_EQ(::waitid(P_PID, id_t(hp), &si, WSTOPPED | WNOWAIT), 0);
  }
  const std::uint64_t t0 = h.takeovers;
  const std::vector<int> rs = testing::run_children(4, [&](int) {
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < 1500; ++i) {
          const auto a = stripe_lock::lock(h, std::chrono::milliseconds((i + t) & 1));
          x->calls.fetch_add(1);
          if (a.moved) x->moved.fetch_add(1);
          if (a.acquired) {
            x->acquired.fetch_add(1);
            if (x->inside.load()) x->acquired_inside.fetch_add(1);
            if (a.owner_died) x->owner_died.fetch_add(1);
            stripe_lock::unlock(h);
          }
        }
      });
    }
    for (auto& t : ts) t.join();
    return 0;
  });
  if (stopped) ::kill(hp, SIGCONT);
  release.send();
  EXPECT_EQ(testing::finishes_within(hp, 10000), 0) << "the holder was not left its lock";
  for (int r : rs) EXPECT_EQ(r, 0);
  EXPECT_EQ(x->acquired_inside.load(), 0) << "two holders: " << x->acquired_inside.load() << " of "
                                          << x->calls.load() << " tiny-timeout calls got the lock of a live "
                                          << (stopped ? "stopped " : "") << "holder";
  EXPECT_EQ(x->acquired.load(), 0);
  EXPECT_EQ(x->owner_died.load(), 0);
  EXPECT_EQ(h.takeovers - t0, 0u);
  EXPECT_EQ(x->moved.load(), 0);
  EXPECT_EQ(cache.get("k").value_or("<miss>"), "v");
}
TEST(AttackLock7, TinyTimeoutWaitersNeverTakeOverALiveHolder) { tiny_timeouts_on_a_live_holder(false); }
TEST(AttackLock7, TinyTimeoutWaitersNeverTakeOverAStoppedHolder) { tiny_timeouts_on_a_live_holder(true); }

// ============================================================================
// 6. Holders SIGKILLed while waiters with 1 ms timeouts keep trying (a death
//    lands anywhere in their calls, at their deadlines too): in every round
//    the stripe is recovered, by exactly one takeover, within a bound, and
//    no two threads are ever inside together.
// ============================================================================
TEST(AttackLock7, HolderKilledAmongTinyTimeoutWaitersIsRecoveredOnceAndNeverDoubleHeld) {
  ScopedName name("atk7_kill");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> inside{0}, overlap{0}, stuck{0}, got{0}, died{0}, started{0};
    std::atomic<int> no_pidfd{0};
  };
  constexpr int kRounds = 25;
  for (int round = 0; round < kRounds; ++round) {
    auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
    const std::uint64_t t0 = h.takeovers;
    Pipe holding, go;
    const pid_t hp = ::fork();
    if (hp == 0) {
      if (!stripe_lock::lock(h, steady::now() + 2s).acquired) ::_exit(12);
      holding.send();
      for (;;) ::pause();
    }
    holding.close_write();
    ASSERT_TRUE(holding.recv());
    const pid_t wp = testing::spawn([&] {
      // The holder's exit, as the kernel tells it (independent of the lock's
      // own /proc judgement): readable once it has exited.
      const int hfd = int(::syscall(SYS_pidfd_open, hp, 0u));
      if (hfd < 0) {
        x->no_pidfd = 1;
        return 60;
      }
      const auto holder_exited = [hfd] {
        pollfd p{hfd, POLLIN, 0};
        return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
      };
      std::vector<std::thread> ts;
      for (int t = 0; t < 6; ++t) {
        ts.emplace_back([&] {
          x->started.fetch_add(1);
          const std::int64_t until = testing::mono_ms() + 8000;
          for (;;) {
            const auto a = stripe_lock::lock(h, 1ms);
            if (a.acquired) {
              // Two holders: another waiter inside, or the holder not yet exited.
              if (x->inside.fetch_add(1) != 0 || !holder_exited()) x->overlap.fetch_add(1);
              if (a.owner_died) x->died.fetch_add(1);
              x->got.fetch_add(1);
              x->inside.fetch_sub(1);
              stripe_lock::unlock(h);
              return;
            }
            if (testing::mono_ms() > until) {
              x->stuck.fetch_add(1);
              return;
            }
          }
        });
      }
      for (auto& t : ts) t.join();
      return 0;
    });
    // Kill once the waiters are running (their calls are under way).
    ASSERT_TRUE(testing::await([&] { return x->started.load() == 6; }, 5000));
    ::kill(hp, SIGKILL);
    const int ws = testing::finishes_within(wp, 20000);
    testing::wait_for(hp);
    if (ws == 60) GTEST_SKIP() << "no pidfd_open here";
    ASSERT_EQ(ws, 0);
    ASSERT_EQ(x->stuck.load(), 0) << "round " << round << ": a killed holder's stripe was not recovered in 8 s";
    ASSERT_EQ(x->got.load(), 6);
    ASSERT_EQ(x->overlap.load(), 0) << "round " << round << ": two holders";
    ASSERT_EQ(x->died.load(), 1) << "round " << round << ": " << x->died.load() << " takeovers of one dead holder";
    ASSERT_EQ(h.takeovers - t0, 1u);
  }
}

// ============================================================================
// 7. One thread of a worker leaves its process's mount namespace
//    (unshare(CLONE_FS) + setns(CLONE_NEWNS)) for a sandbox's, whose /proc
//    is a child pid namespace's (it does not show the worker). Its Identity
//    was cached before. Facing a live holder it must not judge (its /proc
//    names others), and it must never get the lock; a sibling thread that
//    stayed, and one first computing its identity in the sandbox, the same.
// ============================================================================
TEST(AttackLock7, ThreadThatEnteredASandboxMountNamespaceNeverTakesOverALiveHolder) {
  ScopedName name("atk7_thrns");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = 100ms;
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> inside{0};
    std::atomic<int> sandbox_ready{0}, sandbox_pid{0};
    std::atomic<int> cached_rc{-1}, cached_inside{0}, fresh_rc{-1}, fresh_inside{0}, sib_rc{-1}, sib_inside{0};
    std::atomic<int> takeovers{0};
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  // The sandbox: a new pid namespace whose init mounts its own /proc.
  Pipe sb_ready, sb_stop;
  const pid_t sb = testing::spawn([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 20;
    const pid_t i = ::fork();
    if (i == 0) {
      if (::unshare(CLONE_NEWNS) != 0) ::_exit(21);
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(21);
      if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) ::_exit(21);
      sb_stop.close_write();
      sb_ready.send();
      sb_stop.recv();
      ::_exit(0);
    }
    x->sandbox_pid = i;
    int st = 0;
    ::waitpid(i, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 30;
  });
  sb_ready.close_write();
  if (!sb_ready.recv()) {
    const int s = testing::finishes_within(sb, 5000);
    GTEST_SKIP() << "no sandbox (pid + mount namespace) here (" << s << ")";
  }
  Pipe holding, release;
  const pid_t hp = testing::fork_holder(h, x->inside, holding, release);
  ASSERT_TRUE(holding.recv());
  const auto try_set = [&](const char* v) {
    try {
      return int(cache.set("k", v));
    } catch (const Error& e) {
      return 1000 + int(e.code());
    }
  };
  const pid_t wp = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    const std::string mnt = "/proc/" + std::to_string(x->sandbox_pid.load()) + "/ns/mnt";
    const int fd = ::open(mnt.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 40;
    int rc = 0;
    std::thread cached([&] {
      (void)stripe_lock::identity();  // cached in the worker's own mount namespace
      if (::unshare(CLONE_FS) != 0 || ::setns(fd, CLONE_NEWNS) != 0) {
        rc = 41;
        return;
      }
      const std::uint64_t t0 = h.takeovers;
      x->cached_rc = try_set("from the sandboxed thread");
      x->cached_inside = x->inside.load();
      x->takeovers += int(h.takeovers - t0);
    });
    cached.join();
    std::thread fresh([&] {
      if (::unshare(CLONE_FS) != 0 || ::setns(fd, CLONE_NEWNS) != 0) {
        rc = 42;
        return;
      }
      const std::uint64_t t0 = h.takeovers;
      x->fresh_rc = try_set("from a thread first seen in the sandbox");
      x->fresh_inside = x->inside.load();
      x->takeovers += int(h.takeovers - t0);
    });
    fresh.join();
    const std::uint64_t t0 = h.takeovers;
    x->sib_rc = try_set("from the worker's main thread");
    x->sib_inside = x->inside.load();
    x->takeovers += int(h.takeovers - t0);
    return rc;
  });
  const int ws = testing::finishes_within(wp, 15000);
  release.send();
  EXPECT_EQ(testing::finishes_within(hp, 10000), 0);
  sb_stop.send();
  testing::finishes_within(sb, 10000);
  if (ws == 41 || ws == 42 || ws == 40) GTEST_SKIP() << "cannot enter the sandbox's mount namespace (" << ws << ")";
  ASSERT_EQ(ws, 0);
  EXPECT_FALSE(x->cached_rc.load() == int(Errc::ok) && x->cached_inside.load())
      << "two holders: a thread whose identity was cached before it entered a sandbox's mount namespace";
  EXPECT_FALSE(x->fresh_rc.load() == int(Errc::ok) && x->fresh_inside.load())
      << "two holders: a thread first seen in a sandbox's mount namespace";
  EXPECT_FALSE(x->sib_rc.load() == int(Errc::ok) && x->sib_inside.load()) << "two holders: the sibling";
  std::printf("  [sandboxed threads] cached %d, fresh %d, sibling %d (1000+errc: thrown)\n", x->cached_rc.load(),
              x->fresh_rc.load(), x->sib_rc.load());
  EXPECT_EQ(x->takeovers.load(), 0);
  EXPECT_NE(x->cached_rc.load(), int(Errc::ok));
  EXPECT_NE(x->fresh_rc.load(), int(Errc::ok));
  EXPECT_NE(x->sib_rc.load(), int(Errc::ok));
  EXPECT_EQ(cache.get("k").value_or("<miss>"), "v");
}

// ============================================================================
// 8. Cache::open (create) without /proc: a clear error, and nothing left in
//    /dev/shm under the name (no segment, no temporary).
// ============================================================================
TEST(AttackLock7, OpenWithoutProcLeavesNothingInDevShm) {
  ScopedName name("atk7_open");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  auto* x = new (testing::shared_memory(sizeof(Text))) Text;
  const pid_t c = testing::spawn([&] {
    if (!no_proc()) return 21;
    try {
      Cache made = Cache::open(config);
      return 30;
    } catch (const Error& e) {
      x->put(std::string(to_string(e.code())) + ": " + e.what());
    }
    return 0;
  });
  const int cs = testing::finishes_within(c, 10000);
  if (cs == 21) GTEST_SKIP() << "no mount namespace here";
  ASSERT_EQ(cs, 0) << "a process without /proc created a segment";
  std::vector<std::string> left;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d)) {
      if (std::strstr(e->d_name, name.name.c_str()) != nullptr) left.push_back(e->d_name);
    }
    ::closedir(d);
  }
  EXPECT_TRUE(left.empty()) << "left in /dev/shm: " << (left.empty() ? "" : left[0]) << " (" << x->s << ")";
  EXPECT_NE(std::string(x->s).find("/proc"), std::string::npos) << "unclear: " << x->s;
}

}  // namespace
}  // namespace hostcache
