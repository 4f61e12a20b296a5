// Adversarial review (fourth round) of the stripe lock (src/stripe_lock.cpp,
// DESIGN.md "The stripe lock"), against the change that judges an owner by
// /proc only when proc_shows(me) (/proc/thread-self/stat shows this thread
// under its own id and birth) and otherwise by life_by_kernel(tid):
// kill(tid, 0) ESRCH => dead, move_pages(tid, 0 pages) EINVAL => dead.
//
// Real processes throughout: fork, clone3 with set_tid (to place a process
// at a chosen pid in each pid namespace level), pthread_exit of a thread
// group leader, full descriptor tables, prctl(PR_SET_NAME). Nothing sleeps
// to order events (pipes and waitid(WNOWAIT) do), and every wait is bounded.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
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

#include "cache_impl.h"
#include "fork_probe.h"
#include "lock_probe.h"
#include "pidns_probe.h"
#include "log.h"
#include "segment.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::header_of;
using testing::Pipe;
using testing::ScopedName;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

using testing::word_ref;

using testing::fill_fd_table;
using testing::task_state;

// fork() with no catch(...) around the child's body: pthread_exit in it
// (a forced unwind) must not be swallowed (testing::spawn catches all).
template <class F>
pid_t fork_raw(F&& f) {
  const pid_t p = ::fork();
  if (p == 0) ::_exit(f());
  return p;
}

// ============================================================================
// 1. A pid namespace whose processes see their parent namespace's /proc (the
//    commonest sandbox mistake: `unshare --pid --fork` without
//    --mount-proc; any container whose /proc was not remounted). Every
//    process there locks the segment it created there (one pid namespace:
//    nothing is refused). proc_shows() accepts that /proc for a worker whose
//    number in the parent namespace happens to equal its own (the "residue"
//    the comment above proc_shows names): /proc/thread-self shows it under
//    its id, with its start time. It then reads /proc/TID/stat of the
//    *parent* namespace for a holder whose TID there names another process:
//    here a zombie (a child of the test, not reaped), so "dead", and it
//    takes the stripe over from a live holder. clone3's set_tid places the
//    worker at the same number at both levels (as chance does, given enough
//    forks: the parent namespace's low numbers are kernel threads and
//    daemons, the container's grow from 2), and the holder at the
//    zombie's number in the inner namespace.
// ============================================================================
void ancestor_proc_scene(bool coincide) {
  ScopedName name("atk4_anc");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = 300ms;
  auto* x = new (testing::shared_memory(sizeof(testing::AncestorScene))) testing::AncestorScene;
  testing::run_ancestor_scene(config, coincide, x, [] {});
  if (x->zombie > 0) testing::wait_for(x->zombie);
  if (::testing::Test::HasFatalFailure()) return;
  if (testing::scene_unsupported(*x)) {
    GTEST_SKIP() << "no pid namespace / clone3 set_tid here (status " << x->status << ", errno " << x->err << ")";
  }
  ASSERT_EQ(x->status, 0) << "scene failed";
  if (coincide) {
    ASSERT_EQ(x->w_pid.load(), x->w_outer.load()) << "W's numbers do not coincide";
  } else {
    ASSERT_NE(x->w_pid.load(), x->w_outer.load());
  }
  EXPECT_FALSE(x->w_acquired.load() && x->w_saw_inside.load())
      << "two holders: W (pid " << x->w_pid.load() << " in the inner namespace, " << x->w_outer.load()
      << " in the outer one, whose /proc it sees) took the stripe over (takeovers +" << x->w_takeovers.load()
      << ") from holder H, alive and inside, whose inner pid " << x->zombie
      << " names a zombie in the outer /proc: proc_shows() accepted the outer /proc because "
         "/proc/thread-self showed W under its own number and start time";
  EXPECT_TRUE(x->w_busy.load()) << "W should have been answered busy (acquired=" << x->w_acquired.load() << ")";
}

TEST(AttackLock4, WorkerWhoseNumberCoincidesInAnAncestorProcNeverTakesOverALiveHolder) {
  ancestor_proc_scene(true);
}
TEST(AttackLock4, WorkerSeeingAnAncestorProcWithoutCoincidenceIsBusyOnALiveHolder) {
  ancestor_proc_scene(false);
}

// ============================================================================
// 2. A thread group leader that took a lock and called pthread_exit while
//    another thread keeps its process alive: the holder's thread is gone
//    (/proc shows its leader as Z; kill(tid, 0) still succeeds, since the
//    group lives; move_pages answers EINVAL, no mm). A dead holder: every
//    waiter, with /proc or with a full descriptor table, takes it over
//    within its timeout.
// 3. The converse: a live non-leader thread holds, its leader has exited
//    (pthread_exit): never taken over, by either kind of waiter.
// ============================================================================
struct LeaderScene {
  std::atomic<int> holder_tid{0};
  std::atomic<int> inside{0};
  std::atomic<int> acquired[2], owner_died[2], saw_inside[2];
};

// Waiters: 0 reads /proc, 1 has a full descriptor table (identity first).
void run_waiters(layout::StripeHeader& h, LeaderScene* x) {
  const std::uint64_t held = word_ref(h).load();
  for (int kind = 0; kind < 2; ++kind) {
    word_ref(h).store(held);  // as the holder left it, whatever the last waiter did
    const pid_t w = testing::spawn([&, kind] {
      (void)stripe_lock::self_word();
      if (kind == 1) fill_fd_table();
      const auto a = stripe_lock::lock(h, steady::now() + 400ms);
      x->acquired[kind] = a.acquired;
      x->owner_died[kind] = a.owner_died;
      x->saw_inside[kind] = x->inside.load();
      if (a.acquired) stripe_lock::unlock(h);
      return 0;
    });
    EXPECT_EQ(testing::finishes_within(w, 10000), 0);
  }
}

TEST(AttackLock4, LeaderThatExitedHoldingWhileItsProcessLivesIsTakenOver) {
  ScopedName name("atk4_ldr");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  auto* x = new (testing::shared_memory(sizeof(LeaderScene))) LeaderScene;
  Pipe done;
  const pid_t hp = fork_raw([&]() -> int {
    if (!stripe_lock::lock(h, steady::now() + 2s).acquired) return 12;
    x->holder_tid = int(::syscall(SYS_gettid));
    done.close_write();
    std::thread([&] {
      done.recv();
      ::_exit(0);
    }).detach();
    ::syscall(SYS_exit, 0);  // the leader thread alone exits (pthread_exit, without its unwind)
    return 0;
  });
  // The leader is a zombie thread of a live process.
  ASSERT_TRUE(testing::await([&] { return task_state(hp) == 'Z'; }, 5000));
  ASSERT_EQ(::kill(hp, 0), 0);
  run_waiters(h, x);
  done.close_write();
  EXPECT_EQ(testing::finishes_within(hp, 10000), 0);
  EXPECT_TRUE(x->acquired[0].load() && x->owner_died[0].load()) << "waiter reading /proc: acquired=" << x->acquired[0].load();
  EXPECT_TRUE(x->acquired[1].load() && x->owner_died[1].load())
      << "waiter with a full descriptor table waited its timeout on leader " << hp
      << " that exited holding (pthread_exit) while its process lives: acquired=" << x->acquired[1].load();
}

TEST(AttackLock4, LiveThreadOfAProcessWhoseLeaderExitedIsNeverTakenOver) {
  ScopedName name("atk4_nl");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  auto* x = new (testing::shared_memory(sizeof(LeaderScene))) LeaderScene;
  Pipe holding, release;
  const pid_t hp = fork_raw([&]() -> int {
    release.close_write();
    std::thread([&] {
      if (!stripe_lock::lock(h, steady::now() + 2s).acquired) ::_exit(12);
      x->holder_tid = int(::syscall(SYS_gettid));
      x->inside = 1;
      holding.send();
      release.recv();
      x->inside = 0;
      stripe_lock::unlock(h);
      ::_exit(0);
    }).detach();
    ::syscall(SYS_exit, 0);  // the leader thread alone exits (pthread_exit, without its unwind)
    return 0;
  });
  holding.close_write();
  ASSERT_TRUE(holding.recv());
  ASSERT_TRUE(testing::await([&] { return task_state(hp) == 'Z'; }, 5000));
  run_waiters(h, x);
  release.send();
  EXPECT_EQ(testing::finishes_within(hp, 10000), 0);
  for (int k = 0; k < 2; ++k) {
    EXPECT_FALSE(x->acquired[k].load() && x->saw_inside[k].load())
        << "two holders: waiter " << (k ? "with a full descriptor table" : "reading /proc")
        << " took the stripe from live thread " << x->holder_tid.load() << " (its leader " << hp << " exited)";
    EXPECT_FALSE(x->acquired[k].load()) << "waiter " << k;
  }
}

// ============================================================================
// 4. Thread names that look like stat fields: the waiter's own comm (read by
//    proc_shows) and the holder's (read by owner_life) contain ')', ' (',
//    and a fake state. A live holder so named is never taken over; a
//    zombie holder so named is, by a waiter so named, within its timeout.
// ============================================================================
TEST(AttackLock4, CommsThatLookLikeStatFieldsNeitherHideNorForgeALife) {
  ScopedName name("atk4_comm");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  const char* names[] = {"a) b (c", ") Z 1 2 3 4 5 6", "x) X", "))))))))))))))"};
  for (const char* holder_name : names) {
    SCOPED_TRACE(holder_name);
    auto* x = new (testing::shared_memory(sizeof(LeaderScene))) LeaderScene;
    Pipe holding, release;
    const pid_t hp = testing::spawn([&] {
      ::prctl(PR_SET_NAME, holder_name);
      if (!stripe_lock::lock(h, steady::now() + 2s).acquired) return 12;
      x->inside = 1;
      holding.send();
      release.close_write();
      release.recv();
      x->inside = 0;
      stripe_lock::unlock(h);
      return 0;
    });
    holding.close_write();
    ASSERT_TRUE(holding.recv());
    // Live: a waiter with a strange name of its own must be busy.
    const pid_t w = testing::spawn([&] {
      ::prctl(PR_SET_NAME, "w) Z 0 (q");
      const auto a = stripe_lock::lock(h, steady::now() + 200ms);
      x->acquired[0] = a.acquired;
      x->saw_inside[0] = x->inside.load();
      if (a.acquired) stripe_lock::unlock(h);
      return 0;
    });
    EXPECT_EQ(testing::finishes_within(w, 10000), 0);
    EXPECT_FALSE(x->acquired[0].load()) << "live holder named '" << holder_name << "' taken over (inside=" << x->saw_inside[0].load() << ")";
    // Dead (SIGKILLed, left a zombie): taken over.
    ::kill(hp, SIGKILL);
    siginfo_t info{};
    ASSERT_EQ(::waitid(P_PID, id_t(hp), &info, WEXITED | WNOWAIT), 0);
    const pid_t w2 = testing::spawn([&] {
      ::prctl(PR_SET_NAME, "w) Z 0 (q");
      const auto a = stripe_lock::lock(h, steady::now() + 400ms);
      x->acquired[1] = a.acquired;
      x->owner_died[1] = a.owner_died;
      if (a.acquired) stripe_lock::unlock(h);
      return 0;
    });
    EXPECT_EQ(testing::finishes_within(w2, 10000), 0);
    EXPECT_TRUE(x->acquired[1].load() && x->owner_died[1].load()) << "zombie holder named '" << holder_name << "' not taken over";
    testing::wait_for(hp);
    word_ref(h).store(0);
  }
}

}  // namespace
}  // namespace hostcache
