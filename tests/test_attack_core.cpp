// Adversarial review of the core change 985a862 (the library's own stripe
// lock, eviction laps, the cuckoo step, repair of a journaled move, limits,
// pid namespaces). Real processes, killed as a crash would kill them, and a
// writer of the segment acting at the worst instant. A test here that fails
// names a broken invariant (DESIGN.md); the message says what was observed.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "arena.h"
#include "cache_impl.h"
#include "index.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "lock_probe.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::header_of;
using testing::Pipe;
using testing::ScopedName;
using testing::boot_ticks_now;
using testing::start_ticks;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;


std::uint64_t lock_word(layout::StripeHeader& h) { return std::atomic_ref<std::uint64_t>(h.lock).load(); }

void drop_to_nobody() {
  if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(11);
}

// ============================================================================
// The stripe lock: a live owner must never be taken over.
// ============================================================================

// A child made by a fork that runs no atfork handlers (POSIX 2024's _Fork(),
// or the raw fork syscall that sandboxes and language runtimes use) keeps the
// parent thread's cached identity word. It then finds "its own" word in a lock
// its live parent holds, judges it scribbled and takes it: two holders.
TEST(AttackLock, ChildOfAForkWithoutAtforkHandlersNeverEntersItsParentsLock) {
  ScopedName name("atk_fork");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);  // this thread has used the lock: its identity is cached
  for (int method = 0; method < 2; ++method) {
    SCOPED_TRACE(method == 0 ? "_Fork()" : "syscall(SYS_fork)");
    const auto mine = stripe_lock::lock(h, steady::now() + 1s);
    ASSERT_TRUE(mine.acquired);
    const pid_t pid = method == 0 ? ::_Fork() : pid_t(::syscall(SYS_fork));
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const auto a = stripe_lock::lock(h, steady::now() + 300ms);
      const bool same = stripe_lock::self_word() == (lock_word(h) & ~(std::uint64_t{1} << 31));
      ::_exit(!a.acquired ? 0 : a.owner_died ? (same ? 1 : 2) : 3);
    }
    const int status = testing::wait_for(pid);
    stripe_lock::unlock(h);
    EXPECT_EQ(status, 0) << "the child acquired the stripe lock while its live parent held it ("
                         << (status == 1 ? "as a takeover of the parent's identity, which it still wears" : "other")
                         << ")";
    std::atomic_ref<std::uint64_t>(h.lock).store(0);
  }
}

// With /proc mounted hidepid=2 (a common hardening), a process cannot see
// /proc/PID of a process it may not ptrace. Workers that dropped root (a
// prefork server's) are not dumpable, so they cannot see each other: the
// locker's /proc/TID/stat fails with ENOENT, the live holder is judged dead
// and its lock taken over while it is inside.
TEST(AttackLock, LiveOwnerInvisibleUnderHidepidIsNeverTakenOver) {
  ScopedName name("atk_hidepid");
  const int status = testing::wait_for(testing::spawn([&] {
    if (::unshare(CLONE_NEWNS) != 0) return 10;
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return 10;
    if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") != 0) return 10;
    Pipe ready, done;
    const pid_t holder = testing::spawn([&] {
      drop_to_nobody();
      ::prctl(PR_SET_DUMPABLE, 0);  // what setuid() from root already did (fs.suid_dumpable = 0)
      Cache c = Cache::open(testing::small_config(name.name, 1u << 20, 1));
      if (!stripe_lock::lock(header_of(c, 0), steady::now() + 1s).acquired) return 12;
      ready.send();
      done.recv();
      stripe_lock::unlock(header_of(c, 0));
      return 0;
    });
    ready.close_write();
    if (!ready.recv()) return 13;
    const pid_t locker = testing::spawn([&] {
      drop_to_nobody();
      ::prctl(PR_SET_DUMPABLE, 0);
      Cache c = Cache::attach(name.name);
      const auto a = stripe_lock::lock(header_of(c, 0), steady::now() + 500ms);
      return !a.acquired ? 0 : a.owner_died ? 1 : 2;
    });
    const int st = testing::wait_for(locker);
    done.send();
    testing::wait_for(holder);
    return st;
  }));
  if (status == 10) GTEST_SKIP() << "cannot mount a hidepid=2 /proc here";
  EXPECT_EQ(status, 0) << "a live holder was taken over while inside (status " << status
                       << "; 1: judged dead because /proc/TID is hidden from the locker)";
}

// A process in another time namespace (same pid namespace: attach allows it)
// sees every start time shifted by its boottime offset: the birth stamp it
// records and the one another process reads for it differ, so each judges
// the other's live thread "reused", i.e. dead. (Latent today: the birth
// stamp is always 0, see IdentityWordCarriesTheThreadsStartTime, so the start
// time is never compared; this fails as soon as that is fixed.)
TEST(AttackLock, LiveOwnerInAnotherTimeNamespaceIsNeverTakenOver) {
  // Fixed by refusing: attach refuses a segment created in another time
  // namespace, and a process that moved to one after attaching cannot lock.
  ScopedName name("atk_timens");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  const pid_t world = testing::spawn([&] {
    if (::unshare(CLONE_NEWTIME) != 0) return 10;
    {
      std::ofstream off("/proc/self/timens_offsets");
      off << "boottime 1000 0\n";
      off.flush();
      if (!off) return 10;
    }
    const pid_t holder = testing::spawn([&] {  // born in the new time namespace
      int refused = 0;
      try {
        Cache c = Cache::attach(name.name);
      } catch (const Error& e) {
        refused += e.code() == Errc::incompatible;
      }
      try {
        cache.set("k", "v");  // the inherited handle: it must not lock either
      } catch (const Error& e) {
        refused += e.code() == Errc::incompatible;
      }
      return refused == 2 ? 0 : 1;
    });
    return testing::wait_for(holder);
  });
  const int st = testing::wait_for(world);
  if (st == 10) GTEST_SKIP() << "time namespaces not available";
  EXPECT_EQ(st, 0) << "a process in another time namespace was allowed to lock (its start times differ)";
  EXPECT_EQ(cache.set("k", "w"), Errc::ok);
}

// A stopped holder (SIGSTOP, a debugger) is alive: lockers wait their
// deadline and never take over.
TEST(AttackLock, StoppedOwnerIsWaitedForNotTakenOver) {
  ScopedName name("atk_stop");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  Pipe ready;
  const pid_t holder = testing::spawn([&] {
    if (!stripe_lock::lock(h, steady::now() + 1s).acquired) return 12;
    ready.send();
    for (;;) ::pause();
  });
  ready.close_write();
  ASSERT_TRUE(ready.recv());
  ::kill(holder, SIGSTOP);
  siginfo_t info{};
  ASSERT_EQ(::waitid(P_PID, id_t(holder), &info, WSTOPPED | WNOWAIT), 0);
  const auto t0 = steady::now();
  const auto a = stripe_lock::lock(h, t0 + 200ms);
  const auto waited = steady::now() - t0;
  if (a.acquired) stripe_lock::unlock(h);
  ::kill(holder, SIGKILL);
  ::kill(holder, SIGCONT);
  testing::wait_for(holder);
  EXPECT_FALSE(a.acquired) << "took over a stopped (live) holder";
  EXPECT_GE(waited, 190ms);
  EXPECT_LT(waited, 1500ms) << "the deadline did not bound the wait";
  // Dead now: taken over promptly.
  const auto t1 = steady::now();
  const auto b = stripe_lock::lock(h, t1 + 2s);
  EXPECT_TRUE(b.acquired && b.owner_died);
  EXPECT_LT(steady::now() - t1, 200ms);
  if (b.acquired) stripe_lock::unlock(h);
}

// A holder that is a non-leader thread of a process whose main thread has
// exited (the leader is a zombie; the process lives on) is alive.
TEST(AttackLock, ThreadOfAProcessWhoseLeaderExitedIsAlive) {
  ScopedName name("atk_leader");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  Pipe ready, done;
  const pid_t proc = testing::spawn([&] {
    std::thread([&] {
      if (!stripe_lock::lock(h, steady::now() + 1s).acquired) ::_exit(12);
      ready.send();
      done.recv();
      stripe_lock::unlock(h);
      ::_exit(0);
    }).detach();
    ::syscall(SYS_exit, 0);  // only the main thread exits
    return 0;
  });
  ready.close_write();
  ASSERT_TRUE(ready.recv());
  const auto a = stripe_lock::lock(h, steady::now() + 300ms);
  if (a.acquired) stripe_lock::unlock(h);
  done.send();
  EXPECT_EQ(testing::wait_for(proc), 0);
  EXPECT_FALSE(a.acquired) << "took over a live thread whose process's leader had exited";
}

// A thread holding a stripe lock dies because another thread of its process
// calls execve (the kernel kills every other thread; the exec'ing thread takes
// the leader's pid AND its start time). The lock word names the leader: it
// now looks alive for as long as the new program runs, and the stripe is
// unusable for everyone (invariant 6: a dead holder never blocks the others).
TEST(AttackLock, HolderKilledByAnotherThreadsExecIsDetectedAsDead) {
  ScopedName name("atk_exec");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = 300ms;
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  int execd[2];
  ASSERT_EQ(::pipe2(execd, O_CLOEXEC), 0);  // EOF once the child has exec'd
  const pid_t proc = testing::spawn([&] {
    ::close(execd[0]);
    if (!stripe_lock::lock(h, steady::now() + 1s).acquired) return 12;  // the main thread holds it
    std::thread([] {
      ::execl("/bin/sleep", "sleep", "30", static_cast<char*>(nullptr));
      ::_exit(13);
    }).detach();
    for (;;) ::pause();
  });
  ::close(execd[1]);
  char c;
  ASSERT_EQ(::read(execd[0], &c, 1), 0);
  ::close(execd[0]);
  // The thread that took the lock is gone; its process runs another program.
  const auto t0 = steady::now();
  const Errc e = cache.set("k", "w");
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
  ::kill(proc, SIGKILL);
  testing::wait_for(proc);
  // A documented limit (stripe_lock.h, README): the exec'd program inherits
  // the dead holder's thread id and start time, so the lock looks held by a
  // live owner until that program exits. What must hold is the bound: busy
  // after lock_timeout, never a hang, never two holders.
  EXPECT_TRUE(e == Errc::ok || e == Errc::busy) << to_string(e);
  EXPECT_LT(waited.count(), 5000) << "the wait was not bounded by lock_timeout";
}

// The birth stamp is what tells a dead owner from a process that reused its
// pid. It must be the thread's start time (field 22 of /proc/TID/stat).
TEST(AttackLock, IdentityWordCarriesTheThreadsStartTime) {
  const std::uint64_t word = stripe_lock::self_word();
  const auto tid = pid_t(::syscall(SYS_gettid));
  ASSERT_EQ(stripe_lock::tid_of(word), std::uint32_t(tid));
  EXPECT_EQ(std::uint32_t(word >> 32), std::uint32_t(start_ticks(tid)))
      << "the birth stamp is not the thread's start time (read_task_stat stops one field short, at "
         "field 21, itrealvalue, always 0): every birth stamp is 0 and a reused pid is never told apart";
}

// A holder killed with SIGKILL, its pid then reused by an unrelated process
// (pids wrap: pid_max is 32768 here, and a prefork master respawns workers):
// the stripe must still be taken over, not wait on the stranger. Variant 0
// reuses the pid in a later clock tick than the holder's birth (what the
// birth stamp exists for); variant 1 within the same 10 ms tick (the stamp's
// resolution: a limit of the design even once the stamp is read right).
TEST(AttackLock, DeadOwnerWhosePidWasReusedIsDetectedAsDead) {
  if (::access("/proc/sys/kernel/ns_last_pid", W_OK) != 0) GTEST_SKIP() << "ns_last_pid not writable";
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "reused in a later tick" : "reused within the tick");
    ScopedName name("atk_reuse");
    Config config = testing::small_config(name.name, 1u << 20, 1);
    config.lock_timeout = 300ms;
    Cache cache = Cache::open(config);
    layout::StripeHeader& h = header_of(cache, 0);
    ASSERT_EQ(cache.set("k", "v"), Errc::ok);
    bool done_variant = false;
    for (int attempt = 0; attempt < 20 && !done_variant; ++attempt) {
      Pipe holding;
      const pid_t a = testing::spawn([&] {
        if (!stripe_lock::lock(h, steady::now() + 1s).acquired) return 12;
        holding.send();
        for (;;) ::pause();
      });
      holding.close_write();
      ASSERT_TRUE(holding.recv());
      const std::uint64_t born = start_ticks(a);
      ::kill(a, SIGKILL);
      ASSERT_EQ(testing::wait_for(a), 128 + SIGKILL);  // died holding the lock, reaped
      if (variant == 0) {
        while (boot_ticks_now() <= std::int64_t(born) + 1) sched_yield();  // the clock has ticked on
      }
      {
        std::ofstream last("/proc/sys/kernel/ns_last_pid");
        last << (a - 1);
      }
      Pipe done;
      const pid_t b = testing::spawn([&] { return done.recv() ? 0 : 0; });  // a stranger: never touches the cache
      const bool same_tick = start_ticks(b) == born;
      if (b != a || same_tick != (variant == 1)) {  // not the reuse this variant wants: again
        done.send();
        testing::wait_for(b);
        std::atomic_ref<std::uint64_t>(h.lock).store(0);
        continue;
      }
      const auto t0 = steady::now();
      const Errc e = cache.set("k", "w");
      const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
      done.send();
      testing::wait_for(b);
      if (variant == 0) {
        EXPECT_EQ(e, Errc::ok) << "set answered " << to_string(e) << " after " << waited.count() << " ms: holder "
                               << a << " died, and the unrelated process that reused its pid was taken for it";
      } else {
        // Within one clock tick (10 ms) the start times are equal: the
        // stamp's resolution, a documented limit. Bounded: busy, not a hang.
        EXPECT_TRUE(e == Errc::ok || e == Errc::busy) << to_string(e);
      }
      done_variant = true;
    }
    if (!done_variant) ADD_FAILURE() << "setup: could not get the dead holder's pid reused (not a finding)";
  }
}

// "A process may fork after opening: the child keeps using the mapping." A
// child forked into a new pid namespace (a sandboxed worker) never attaches,
// so attach's pid-namespace refusal never sees it; it locks with its
// namespace-local thread id, which in the creator's namespace names nobody:
// a locker there judges the live holder dead and takes the lock over.
TEST(AttackLock, ProcessForkedIntoANewPidNamespaceIsNeverTakenOverAlive) {
  // Fixed by refusing: a child forked into a new pid namespace keeps the
  // mapping, but its thread ids mean nothing to the others, so it cannot lock.
  ScopedName name("atk_pidns");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  const pid_t world = testing::spawn([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 10;
    const pid_t init = testing::spawn([&] {  // pid 1 of the new namespace
      try {
        cache.set("k", "from another namespace");
      } catch (const Error& e) {
        return e.code() == Errc::incompatible ? 0 : 2;
      }
      return 1;
    });
    return testing::wait_for(init);
  });
  const int st = testing::wait_for(world);
  if (st == 10) GTEST_SKIP() << "unshare(CLONE_NEWPID) not permitted here";
  EXPECT_EQ(st, 0) << "a process in another pid namespace took a stripe lock";
  EXPECT_EQ(cache.get("k").value_or(""), "v");
}

// Randomized: processes of two threads each lock and unlock one stripe while
// the parent SIGKILLs them at random instants (inside, waiting, between). A
// clean acquire must find nobody inside; a takeover must find nobody ALIVE
// inside; nobody waits past its deadline.
bool process_alive(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto p = s.rfind(')');
  return p != std::string::npos && p + 2 < s.size() && s[p + 2] != 'Z' && s[p + 2] != 'X';
}

TEST(AttackLock, RandomKillsNeverLetTwoHoldersInAndNeverHang) {
  ScopedName name("atk_stress");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  layout::StripeHeader& h = header_of(cache, 0);
  struct Shared {
    std::atomic<std::uint64_t> holder{0};
    std::atomic<long> overlaps{0}, false_takeovers{0}, timeouts{0}, sections{0}, takeovers{0};
    std::atomic<int> stop{0};
    // Pids this test has sent SIGKILL (before sending it): such a process
    // never runs its section again, though /proc may still show it running
    // while its other thread exits; a takeover from it is no false one.
    std::atomic<std::uint32_t> nkilled{0};
    std::atomic<std::int32_t> killed[1 << 16];
    bool was_killed(pid_t pid) const {
      const std::uint32_t n = std::min<std::uint32_t>(nkilled.load(), 1u << 16);
      for (std::uint32_t i = 0; i < n; ++i) {
        if (killed[i].load() == pid) return true;
      }
      return false;
    }
  };
  auto* x = new (testing::shared_memory(sizeof(Shared))) Shared;
  auto worker = [&] {
    auto body = [&](unsigned seed) {
      std::minstd_rand rng(seed);
      while (x->stop.load() == 0) {
        const auto a = stripe_lock::lock(h, steady::now() + 3s);
        if (!a.acquired) {
          x->timeouts.fetch_add(1);
          continue;
        }
        const std::uint64_t me = (std::uint64_t(::getpid()) << 32) | std::uint64_t(::syscall(SYS_gettid));
        const std::uint64_t prev = x->holder.exchange(me);
        if (a.owner_died) x->takeovers.fetch_add(1);
        if (prev != 0) {
          if (!a.owner_died) {
            x->overlaps.fetch_add(1);
          } else if (process_alive(pid_t(prev >> 32)) && !x->was_killed(pid_t(prev >> 32))) {
            x->false_takeovers.fetch_add(1);
          }
        }
        const unsigned spins = rng() % 400;
        for (unsigned i = 0; i < spins; ++i) {
          if (x->holder.load(std::memory_order_relaxed) != me) {
            x->overlaps.fetch_add(1);
            break;
          }
        }
        std::uint64_t e = me;
        if (!x->holder.compare_exchange_strong(e, 0)) x->overlaps.fetch_add(1);
        stripe_lock::unlock(h);
        x->sections.fetch_add(1);
        if (rng() % 4 == 0) sched_yield();
      }
    };
    std::thread t(body, unsigned(::getpid()) * 7 + 1);
    body(unsigned(::getpid()));
    t.join();
    return 0;
  };
  constexpr int kProcs = 5;
  std::vector<pid_t> procs;
  for (int i = 0; i < kProcs; ++i) procs.push_back(testing::spawn(worker));
  std::mt19937 rng(12345);
  int kills = 0;
  // 3 s of random kills, then more (up to 30 s in all) until one has landed
  // inside a section: on a slow build (ASan) 3 s can be as few as 30 kills.
  const auto end = steady::now() + 3s, hard_end = steady::now() + 30s;
  while (steady::now() < end || (x->takeovers.load() == 0 && steady::now() < hard_end)) {
    const auto until = steady::now() + std::chrono::microseconds(rng() % 3000);
    while (steady::now() < until) sched_yield();  // a random instant (pacing, not synchronisation)
    const int i = int(rng() % kProcs);
    const std::uint32_t slot = x->nkilled.load();
    if (slot < (1u << 16)) x->killed[slot].store(procs[i]);
    x->nkilled.store(slot + 1);
    ::kill(procs[i], SIGKILL);
    testing::wait_for(procs[i]);
    ++kills;
    procs[i] = testing::spawn(worker);
  }
  x->stop.store(1);
  for (pid_t p : procs) EXPECT_EQ(testing::wait_for(p), 0);
  std::printf("kills %d, sections %ld, takeovers %ld\n", kills, x->sections.load(), x->takeovers.load());
  EXPECT_EQ(x->overlaps.load(), 0) << "two holders at once";
  EXPECT_EQ(x->false_takeovers.load(), 0) << "a live holder was taken over";
  EXPECT_EQ(x->timeouts.load(), 0) << "a locker waited 3 s on dead owners";
  EXPECT_GT(x->takeovers.load(), 0) << "the kills never landed inside (the test tested nothing)";
}

// ============================================================================
// A writer of the segment acting at the worst instant.
// ============================================================================

layout::StripeHeader* g_scribble_target = nullptr;
std::uint64_t g_scribble_head = 0;
// Runs inside Locked's constructor, after the repair, with the lock held:
// exactly when another process that can write the segment could store to it.
void scribble_head(std::uint64_t, bool) {
  if (g_scribble_target != nullptr) {
    std::atomic_ref<std::uint64_t>(g_scribble_target->head).store(g_scribble_head);
    g_scribble_target = nullptr;
  }
}

// header_sane() is checked once, when the lock is taken; a head stored after
// that (by any process that can write the segment, racing the writer) is
// followed unchecked by make_room/append: the entry is written past the
// stripe's arena, into the next stripe or past the mapping (invariant 8:
// every offset read from the segment is bounds-checked before it is followed;
// invariant 6: every other stripe is untouched).
TEST(AttackArena, HeadStoredAfterTheLockIsTakenNeverSendsAWritePastTheArena) {
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "into the next stripe" : "past the mapping");
    ScopedName name("atk_head");
    Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 2));
    Segment& seg = detail::Access::segment(cache);
    const Geometry& g = seg.geometry();
    const std::uint32_t victim = variant == 0 ? 0 : 1;
    const auto keys0 = testing::keys_in_stripe(cache, victim, 21, "v");
    const auto keys1 = testing::keys_in_stripe(cache, 1 - victim, 20, "n");
    for (int i = 0; i < 20; ++i) {
      ASSERT_EQ(cache.set(keys0[i], "x" + std::to_string(i)), Errc::ok);
      ASSERT_EQ(cache.set(keys1[i], "y" + std::to_string(i)), Errc::ok);
    }
    const auto* other = reinterpret_cast<const std::uint8_t*>(seg.stripe_base(1 - victim));
    const std::vector<std::uint8_t> before(other, other + g.stripe_bytes);
    layout::StripeHeader& vh = header_of(cache, victim);
    const int status = testing::wait_for(testing::spawn([&] {
      g_scribble_target = &vh;
      // variant 0: just past the arena (the next stripe's header); 1: far past the segment.
      g_scribble_head = variant == 0 ? g.arena_bytes + 64 : (std::uint64_t{1} << 40);
      stripe::set_recovery_observer(&scribble_head);
      vh.seq |= 1;  // a writer stopped mid-mutation: the next locker repairs (and the observer runs)
      const Errc e = cache.set(keys0[20], std::string(200, 'z'));
      return e == Errc::ok || e == Errc::corrupt ? 0 : 5;
    }));
    const bool untouched = std::memcmp(before.data(), other, g.stripe_bytes) == 0;
    EXPECT_EQ(status, 0) << "the writer crashed (status " << status << ", 139 = SIGSEGV)";
    if (variant == 0) EXPECT_TRUE(untouched) << "a write to stripe " << victim << " changed stripe " << 1 - victim;
    int found = 0;
    for (int i = 0; i < 20; ++i) found += cache.get(keys1[i]).value_or("") == "y" + std::to_string(i);
    EXPECT_EQ(found, 20) << "the neighbouring stripe lost entries";
  }
}

// ============================================================================
// Eviction: stale entries go before live ones; live data that fits is kept.
// ============================================================================

// An entry stale on arrival (a memoized result stamped before an
// invalidation) appended while an eviction lap is in progress lies beyond the
// lap's end; when the lap ends the stripe declares itself clean and evicts
// live entries while the stale one still holds its space.
TEST(AttackArena, StaleOnArrivalEntryDuringALapIsReclaimedBeforeLiveOnes) {
  ScopedName name("atk_lap");
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 1));
  Segment& seg = detail::Access::segment(cache);
  const std::uint64_t a = seg.geometry().arena_bytes;
  // Entries of just under a/40: the ring holds 40.
  const std::size_t value_len = std::size_t(a / 40) - layout::kHeaderBytes - 16;
  auto val = [&](const std::string& k, int v) { return testing::make_value(k, std::uint64_t(v), value_len); };
  SetOptions tagged;
  tagged.tags = {"t"};
  std::vector<std::string> live;
  auto put_live = [&](const std::string& k) {
    ASSERT_EQ(cache.set(k, val(k, 0)), Errc::ok);
    live.push_back(k);
  };
  auto stale_bytes_in_ring = [&] {
    const arena::StripeView v = arena::StripeView::over(seg.stripe_base(0), seg.geometry());
    const generations::Judge judge(seg);
    std::uint64_t bytes = 0;
    arena::walk(
        v, v.hdr->tail, v.hdr->head,
        [&](std::uint64_t, const layout::EntryHeader& eh) {
          if (eh.live == 1 && judge.of(eh) != generations::State::valid) bytes += eh.size;
        },
        nullptr, nullptr);
    return bytes;
  };
  for (int i = 0; i < 2; ++i) put_live("L1-" + std::to_string(i));
  for (int i = 0; i < 20; ++i) ASSERT_EQ(cache.set("D-" + std::to_string(i), val("D", i), tagged), Errc::ok);
  for (int i = 0; i < 8; ++i) put_live("L2-" + std::to_string(i));
  const GenerationStamp before = cache.generations({"t"});
  cache.invalidate("t");  // D is stale; the stripe no longer knows itself clean
  for (int i = 1; i <= 10; ++i) put_live("N" + std::to_string(i));  // the ring is full
  put_live("N11");  // a lap starts at the tail (L1 moved), D-0 is freed
  const std::uint64_t lap_left = header_of(cache, 0).lap_left;
  for (int i = 12; i <= 15; ++i) put_live("N" + std::to_string(i));
  // Memoized results computed across the invalidation: stale on arrival,
  // appended while the lap is in progress.
  for (int i = 0; i < 16; ++i) ASSERT_EQ(cache.set("X-" + std::to_string(i), val("X", i), tagged, before), Errc::ok);
  const std::uint64_t stale = stale_bytes_in_ring();
  put_live("N16");  // the lap ends at N10; then the tail is at the moved L1
  int missing = 0;
  for (const auto& k : live) missing += !cache.get(k).has_value();
  EXPECT_NE(lap_left, 0u) << "setup: no lap was in progress";
  EXPECT_EQ(missing, 0) << "live entries evicted: " << live.size() << " live entries of a/40 ("
                        << 100 * live.size() / 40 << "% of the arena) while " << stale
                        << " bytes of stale entries (" << 100 * stale / a << "%) were in the ring";
  EXPECT_EQ(cache.stats().evictions, 0u);
}

// The smallest entries (a key of 1-8 bytes, no value: 112 bytes in the
// arena at 985a862) filling the arena: the index (a bucket per 80 bytes) must hold them.
TEST(AttackArena, ArenaFullOfTheSmallestEntriesKeepsThemAll) {
  for (const std::size_t capacity : {std::size_t(2u << 20), std::size_t(16u << 20)}) {
    SCOPED_TRACE(capacity);
    ScopedName name("atk_small");
    Cache cache = Cache::open(testing::small_config(name.name, capacity, 1));
    const Geometry& g = detail::Access::segment(cache).geometry();
    const std::uint64_t smallest = arena::entry_size(8, 0, 0);  // == entry_size(1, 0, 0)
    ASSERT_EQ(smallest, arena::entry_size(1, 0, 0));
    const std::uint64_t n = g.arena_bytes / smallest - 2;  // all but two entries' worth
    for (std::uint64_t i = 0; i < n; ++i) {
      char key[9];
      std::snprintf(key, sizeof key, "%08llx", static_cast<unsigned long long>(i));
      ASSERT_EQ(cache.set(std::string_view(key, 8), ""), Errc::ok);
    }
    std::uint64_t missing = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      char key[9];
      std::snprintf(key, sizeof key, "%08llx", static_cast<unsigned long long>(i));
      missing += !cache.get(std::string_view(key, 8)).has_value();
    }
    EXPECT_EQ(missing, 0u) << "of " << n << " entries (index load " << double(n) / (g.groups_per_stripe * 8.0)
                           << ")";
    EXPECT_EQ(cache.stats().evictions, 0u);
  }
}

// Randomized: entries of very different sizes (pads at the wrap), overwrites
// and erases, live data never above 60% of the arena: nothing live is evicted.
TEST(AttackArena, MixedSizesWithLiveDataBelowSixtyPercentEvictNothing) {
  for (unsigned seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    ScopedName name("atk_mixed");
    Config config = testing::small_config(name.name, 1u << 20, 1);
    config.max_value_bytes = 256u << 10;
    Cache cache = Cache::open(config);
    const std::uint64_t a = detail::Access::segment(cache).geometry().arena_bytes;
    std::mt19937_64 rng(seed);
    std::map<std::string, std::string> model;
    std::uint64_t live = 0;
    auto cost = [](const std::string& k, const std::string& v) { return arena::entry_size(k.size(), v.size(), 0); };
    int lost = 0, wrong = 0;
    for (int op = 0; op < 4000; ++op) {
      const std::string k = "k" + std::to_string(rng() % 200);
      const bool big = rng() % 10 == 0;
      const std::size_t len = big ? std::size_t(a / 8 + rng() % (a / 8)) : std::size_t(50 + rng() % 2000);
      const std::string v = testing::make_value(k, std::uint64_t(op), len);
      auto it = model.find(k);
      const std::uint64_t old = it == model.end() ? 0 : cost(k, it->second);
      if (rng() % 5 == 0 || live - old + cost(k, v) > a * 6 / 10) {
        if (it != model.end()) {
          cache.erase(k);
          live -= old;
          model.erase(it);
        }
        continue;
      }
      ASSERT_EQ(cache.set(k, v), Errc::ok);
      live = live - old + cost(k, v);
      model[k] = v;
      if (op % 50 == 0) {
        for (const auto& [mk, mv] : model) {
          auto got = cache.get(mk);
          lost += !got.has_value();
          wrong += got.has_value() && *got != mv;
        }
      }
    }
    EXPECT_EQ(lost, 0) << "live entries lost with live data <= 60% of the arena";
    EXPECT_EQ(wrong, 0);
    EXPECT_EQ(cache.stats().evictions, 0u);
  }
}

// ============================================================================
// The whole cache under SIGKILL: a model of what must be present and what
// must never be served.
// ============================================================================

// Writers own disjoint keys; for each key they publish `pending` (the
// version of the operation they are about to do) and `completed` (the last
// one that returned). A read that starts after completed = C and ends before
// pending = P may return only a version in [C, P]: never an older value (an
// overwritten or erased one brought back by a repair) and never garbage. With
// live data well inside the arena nothing stable may go missing either.
TEST(AttackCache, SigkillStormNeverServesAnOverwrittenValueAndLosesOnlyTheEntryInFlight) {
  ScopedName name("atk_model");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  constexpr int kWriters = 3, kReaders = 2, kPer = 60, kKeys = kWriters * kPer;
  struct Key {
    std::atomic<std::uint64_t> pending{0}, completed{0}, last_set{0};  // last_set: 0 if erased / never set
  };
  struct Shared {
    Key keys[kKeys];
    std::atomic<long> reads{0}, old_served{0}, garbage{0}, lost_reads{0}, busy{0}, ops{0};
    std::atomic<std::uint64_t> first_bad{0};
    std::atomic<int> stop{0};
    // Pids this test has sent SIGKILL (before sending it): such a process
    // never runs its section again, though /proc may still show it running
    // while its other thread exits; a takeover from it is no false one.
    std::atomic<std::uint32_t> nkilled{0};
    std::atomic<std::int32_t> killed[1 << 16];
    bool was_killed(pid_t pid) const {
      const std::uint32_t n = std::min<std::uint32_t>(nkilled.load(), 1u << 16);
      for (std::uint32_t i = 0; i < n; ++i) {
        if (killed[i].load() == pid) return true;
      }
      return false;
    }
  };
  auto* x = new (testing::shared_memory(sizeof(Shared))) Shared;
  auto key_of = [](int i) { return "key" + std::to_string(i); };
  auto version_of = [](const std::string& k, const std::string& v) -> std::uint64_t {
    if (!testing::verify_value(k, v)) return 0;
    return std::stoull(v.substr(k.size() + 1, v.find('|', k.size() + 1) - k.size() - 1));
  };
  auto writer = [&](int w) {
    return [&, w] {
      Cache c = Cache::attach(name.name);
      std::minstd_rand rng(unsigned(::getpid()));
      while (x->stop.load() == 0) {
        const int i = w * kPer + int(rng() % kPer);
        Key& k = x->keys[i];
        const std::string key = key_of(i);
        const std::uint64_t v = k.pending.load() + 1;
        k.pending.store(v);
        const bool erase = rng() % 5 == 0;
        if (erase) {
          c.erase(key);
          k.last_set.store(0);
        } else {
          const Errc e = c.set(key, testing::make_value(key, v, 100 + rng() % 3000));
          if (e != Errc::ok) {
            x->busy.fetch_add(1);
            k.last_set.store(0);  // unknown: allow a miss
          } else {
            k.last_set.store(v);
          }
        }
        k.completed.store(v);
        x->ops.fetch_add(1);
      }
      return 0;
    };
  };
  auto reader = [&] {
    Cache c = Cache::attach(name.name);
    std::minstd_rand rng(unsigned(::getpid()));
    std::string v;
    while (x->stop.load() == 0) {
      const int i = int(rng() % kKeys);
      Key& k = x->keys[i];
      const std::string key = key_of(i);
      const std::uint64_t C = k.completed.load(), S = k.last_set.load();
      const bool hit = c.get(key, v);
      const std::uint64_t P = k.pending.load();
      x->reads.fetch_add(1);
      if (hit) {
        const std::uint64_t got = version_of(key, v);
        if (got == 0) {
          x->garbage.fetch_add(1);
        } else if (got < C || got > P) {
          if (x->old_served.fetch_add(1) == 0) x->first_bad.store((got << 32) | C);
        }
      } else if (C == P && S == C && C != 0) {
        x->lost_reads.fetch_add(1);  // a completed set, nothing in flight, data fits: must be there
      }
    }
    return 0;
  };
  std::vector<pid_t> procs;
  std::vector<std::function<int()>> roles;
  for (int w = 0; w < kWriters; ++w) roles.push_back(writer(w));
  for (int r = 0; r < kReaders; ++r) roles.push_back(reader);
  for (auto& role : roles) procs.push_back(testing::spawn(role));
  std::mt19937 rng(777);
  int kills = 0;
  // At least 4 s, and until a kill has landed inside a lock (a recovery), so
  // that the repair path is always exercised (a slow build, ASan, may need
  // more kills): at most 40 s.
  const auto end = steady::now() + 4s, hard_end = steady::now() + 40s;
  while (steady::now() < end || (cache.stats().recoveries == 0 && steady::now() < hard_end)) {
    const auto until = steady::now() + std::chrono::microseconds(200 + rng() % 2000);
    while (steady::now() < until) sched_yield();  // a random instant
    const int i = rng() % 4 == 0 ? int(rng() % procs.size()) : int(rng() % kWriters);
    ::kill(procs[i], SIGKILL);
    testing::wait_for(procs[i]);
    ++kills;
    procs[i] = testing::spawn(roles[i]);
  }
  x->stop.store(1);
  for (pid_t p : procs) EXPECT_EQ(testing::wait_for(p), 0);
  // Final state: every key whose last operation returned is exactly that.
  int lost = 0, resurrected = 0, wrong = 0;
  for (int i = 0; i < kKeys; ++i) {
    Key& k = x->keys[i];
    const auto got = cache.get(key_of(i));
    const std::uint64_t version = got ? version_of(key_of(i), *got) : 0;
    if (got && version == 0) ++wrong;
    if (k.pending.load() == k.completed.load()) {
      if (k.last_set.load() != 0 && !got) ++lost;
      if (got && version != k.last_set.load()) ++resurrected;
    } else if (got && version != k.pending.load() && version != k.last_set.load()) {
      ++resurrected;
    }
  }
  const Stats st = cache.stats();
  std::printf("kills %d, ops %ld, reads %ld, recoveries %llu, resets %llu, evictions %llu\n", kills, x->ops.load(),
              x->reads.load(), (unsigned long long)st.recoveries, (unsigned long long)st.resets,
              (unsigned long long)st.evictions);
  EXPECT_EQ(x->garbage.load(), 0) << "corrupt values served";
  EXPECT_EQ(x->old_served.load(), 0) << "an overwritten or erased version was served (first: got "
                                     << (x->first_bad.load() >> 32) << ", completed "
                                     << (x->first_bad.load() & 0xffffffff) << ")";
  EXPECT_EQ(resurrected, 0) << "keys that ended on an older version than their last completed operation";
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(x->lost_reads.load(), 0) << "reads that missed a stable key";
  EXPECT_EQ(lost, 0) << "stable keys missing at the end";
  EXPECT_EQ(x->busy.load(), 0) << "sets that timed out on dead holders";
  EXPECT_EQ(st.resets, 0u) << "a repair had to reset the stripe";
  EXPECT_GT(st.recoveries, 0u);
}

}  // namespace
}  // namespace hostcache
