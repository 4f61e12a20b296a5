// Adversarial review (eighth round) of the stripe lock after 70c5d2d:
// life_by_kernel's exited_by_vm (process_vm_readv ESRCH = no mm = dead),
// still_in_namespaces (namespaces re-read only once this thread's
// CLOCK_MONOTONIC_COARSE moved >= 100 ms either way since the last check),
// and self() recomputing an identity without a birth or a pid namespace.
//
// Real processes throughout: fork, vfork, unshare/setns(CLONE_NEWTIME) with
// sub-second and negative monotonic offsets, SIGKILL (an unreaped zombie),
// a seccomp filter, a full descriptor table. Pipes order events; waits on a
// clock are bounds or the very time the invariant is about, never an
// ordering between processes.
//
// On 70c5d2d: 1 and 2 FAIL; 3 and 4 (controls of exited_by_vm) pass.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <string>

#include "cache_impl.h"
#include "fork_probe.h"
#include "lock_probe.h"
#include "pidns_probe.h"
#include "log.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::header_of;
using testing::Pipe;
using testing::ScopedName;
using namespace std::chrono_literals;

using testing::gettid_;

std::int64_t coarse_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

using testing::move_to_time_namespace_offset_ms;
using testing::Text;

// ============================================================================
// 1. (Before 2a872c3) still_in_namespaces trusted its last answer while this thread's coarse
//    monotonic clock has moved less than 100 ms (stripe_lock.cpp,
//    still_in_namespaces: `now >= last && now - last < 100`). A move into a
//    time namespace whose monotonic offset is under 100 ms (here +90 ms),
//    right after a lock that checked, shifts that clock by less than the
//    window: the next lock reads nothing, and the moved writer stamps an
//    expiry from a clock 90 ms ahead. An entry set with ttl 20 ms lives
//    ~110 ms for everyone else (5.5x its TTL). The model: either the set is
//    refused (contents intact: "v") or the entry's remaining TTL, read by
//    the segment creator right after the set returned, is at most 20 ms, and
//    it is gone once 20 ms (plus a margin) have passed.
// ============================================================================
TEST(AttackLock8, MoveIntoATimeNamespaceLessThan100msAheadNeverWritesPastTheTtl) {
  ScopedName name("atk8_ttl");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  struct Seen {
    std::atomic<int> set_result{-1}, refused{0};
    std::atomic<std::int64_t> jump_ms{0}, gap_ms{0};
    Text what;
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  Pipe done;
  const pid_t m = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    // Past the parent's last check (its thread_local came with the fork):
    // the warm-up set below then reads the namespaces, as a worker's does
    // every 100 ms. Waiting on the clock is the precondition, not an ordering.
    const std::int64_t c0 = coarse_ms();
    while (coarse_ms() < c0 + 150) {
    }
    if (cache.set("warm", "w") != Errc::ok) return 20;  // checked: unmoved
    const std::int64_t c1 = coarse_ms();
    const std::int64_t before = testing::mono_ms();
    if (!move_to_time_namespace_offset_ms(90)) return 10;
    x->jump_ms = testing::mono_ms() - before;
    x->gap_ms = coarse_ms() - c1;
    try {
      SetOptions o;
      o.ttl = 20ms;
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
  const std::int64_t t_set = testing::mono_ms();  // the set has returned by now
  const std::optional<std::chrono::milliseconds> left = cache.ttl("k");
  const std::optional<std::string> first = cache.get("k");
  const int ms = testing::finishes_within(m, 10000);
  if (ms == 10) GTEST_SKIP() << "no time namespace with a monotonic offset here";
  ASSERT_TRUE(reported) << "mover exited " << ms;
  ASSERT_EQ(ms, 0);
  ASSERT_GE(x->jump_ms.load(), 85) << "the offset did not apply";
  if (x->refused.load()) {
    EXPECT_EQ(first.value_or("<miss>"), "v") << x->what.s;
    return;
  }
  ASSERT_EQ(x->set_result.load(), int(Errc::ok));
  if (first.has_value()) {
    EXPECT_EQ(*first, "moved");
    ASSERT_TRUE(left.has_value());
    EXPECT_LE(left->count(), 20)
        << "an entry set with ttl 20 ms had " << left->count()
        << " ms left on the creator's clock right after the set returned: the setter had moved into a time "
           "namespace whose monotonic clock runs 90 ms ahead (coarse clock moved "
        << x->gap_ms.load() << " ms since its last check, under still_in_namespaces' 100 ms window), and "
           "stripe::Locked let it lock without reading its namespaces";
  }
  ASSERT_TRUE(testing::await([&] { return testing::mono_ms() > t_set + 60; }, 5000));
  const std::optional<std::string> later = cache.get("k");
  EXPECT_NE(later.value_or("<miss>"), "moved")
      << "an entry set with ttl 20 ms was still served " << (testing::mono_ms() - t_set)
      << " ms after its set returned (setter moved +90 ms within the 100 ms window)";
}

// ============================================================================
// 2. The read side. stripe::get's optimistic path (stripe.cpp, get: the
//    seq-checked copy before any stripe::Locked) takes no lock and so asks
//    neither same_namespaces nor still_in_namespaces: a worker that moved
//    into a time namespace whose monotonic clock runs 100 s behind judges
//    every entry's expiry by that clock (generations::Judge, clock::now_ms)
//    and serves entries long past their TTL, for as long as it lives there
//    (not merely within a 100 ms window). The model: an entry the creator
//    already reads as expired is a miss to every read-write worker of the
//    segment, or the worker's read is refused/answered as a miss.
// ============================================================================
TEST(AttackLock8, WorkerThatMovedToATimeNamespaceBehindNeverServesAnExpiredEntry) {
  ScopedName name("atk8_rd");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  struct Seen {
    std::atomic<int> served{-1};
    std::atomic<std::int64_t> jump_ms{0};
    Text value;
  };
  auto* x = new (testing::shared_memory(sizeof(Seen))) Seen;
  Pipe moved, go;
  SetOptions o;
  o.ttl = 200ms;
  ASSERT_EQ(cache.set("k", "v", o), Errc::ok);
  const std::int64_t t_set = testing::mono_ms();
  const pid_t r = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    go.close_write();
    if (!cache.get("k").has_value()) return 20;  // a worker that read it while fresh
    const std::int64_t before = testing::mono_ms();
    if (!move_to_time_namespace_offset_ms(-100'000)) return 10;
    x->jump_ms = testing::mono_ms() - before;
    moved.send();
    if (!go.recv()) return 30;
    try {
      const std::optional<std::string> got = cache.get("k");
      x->served = got.has_value() ? 1 : 0;
      x->value.put(got.value_or("<miss>"));
    } catch (const Error& e) {
      x->served = 0;
      x->value.put(std::string("refused: ") + e.what());
    }
    return 0;
  });
  moved.close_write();
  const bool ok_moved = moved.recv();
  if (!ok_moved) {
    const int s = testing::finishes_within(r, 10000);
    if (s == 10) GTEST_SKIP() << "no time namespace with a negative monotonic offset here";
    FAIL() << "reader exited " << s;
  }
  // Wait out the TTL five times over on the creator's clock (the time the invariant is about).
  ASSERT_TRUE(testing::await([&] { return testing::mono_ms() > t_set + 1000; }, 5000));
  ASSERT_FALSE(cache.get("k").has_value()) << "control: expired for the creator";
  go.send();
  const int s = testing::finishes_within(r, 10000);
  ASSERT_EQ(s, 0);
  ASSERT_LE(x->jump_ms.load(), -99'000) << "the offset did not apply";
  EXPECT_EQ(x->served.load(), 0)
      << "a worker of the segment served '" << x->value.s << "' " << (testing::mono_ms() - t_set)
      << " ms after it was set with ttl 200 ms (the creator reads it as expired): the worker had moved into a "
         "time namespace whose monotonic clock runs 100 s behind, and stripe::get's optimistic (lock-free) "
         "path asks no namespace";
}

// ---- exited_by_vm controls -------------------------------------------------

// move_pages answers ENOSYS (a kernel without NUMA, or this filter): the
// judgement falls through to exited_by_vm.
bool deny_move_pages() {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_move_pages, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

struct Judged {
  std::atomic<int> acquired{-1}, owner_died{-1};
  std::atomic<std::uint32_t> dead_tid{0}, holder_tid{0};
};

// A waiter that judges only by the kernel (its descriptor table is full: no
// /proc, no pidfd) and whose move_pages is ENOSYS: exited_by_vm decides.
pid_t spawn_vm_judge(Cache& cache, Judged* j, std::chrono::milliseconds timeout) {
  return testing::spawn([&cache, j, timeout] {
    log::get().set_level(spdlog::level::off);
    const stripe_lock::Identity me = stripe_lock::identity();  // birth read while descriptors remain
    if (me.word == 0) return 41;
    if (!deny_move_pages()) return 40;
    testing::fill_fd_table();
    const stripe_lock::Acquired a = stripe_lock::lock(header_of(cache, 0), me, timeout);
    j->acquired = a.acquired ? 1 : 0;
    j->owner_died = a.owner_died ? 1 : 0;
    j->dead_tid = a.dead_tid;
    j->holder_tid = a.holder_tid;
    if (a.acquired) stripe_lock::unlock(header_of(cache, 0), me);
    return 0;
  });
}

// ============================================================================
// 3. Control: a LIVE holder suspended in vfork() (its child runs on its
//    memory, blocked in read) is never judged dead by exited_by_vm: the
//    vfork'd parent keeps its mm. The waiter must time out (busy).
// ============================================================================
TEST(AttackLock8, Control_HolderSuspendedInVforkIsNeverTakenOverByAKernelOnlyJudge) {
  ScopedName name("atk8_vf");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  auto* j = new (testing::shared_memory(sizeof(Judged))) Judged;
  auto* htid = new (testing::shared_memory(sizeof(std::atomic<std::uint32_t>))) std::atomic<std::uint32_t>{0};
  Pipe release;
  Pipe held2;
  const pid_t holder = testing::spawn([&] {
    log::get().set_level(spdlog::level::off);
    const stripe_lock::Acquired a = stripe_lock::lock(header_of(cache, 0), 1000ms);
    if (!a.acquired) return 30;
    htid->store(std::uint32_t(gettid_()));
    held2.send();
    const int rfd = release.fd[0];
    const pid_t c = ::vfork();
    if (c == 0) {
      char ch;
      ::syscall(SYS_read, rfd, &ch, 1);
      ::_exit(0);
    }
    stripe_lock::unlock(header_of(cache, 0));
    return c > 0 ? 0 : 31;
  });
  held2.close_write();
  ASSERT_TRUE(held2.recv());
  const pid_t w = spawn_vm_judge(cache, j, 300ms);
  const int ws = testing::finishes_within(w, 10000);
  release.send();
  const int hs = testing::finishes_within(holder, 10000);
  if (ws == 40) GTEST_SKIP() << "no seccomp filter here";
  ASSERT_EQ(ws, 0);
  ASSERT_EQ(hs, 0);
  EXPECT_EQ(j->acquired.load(), 0) << "a live holder (tid " << htid->load()
                                   << ", suspended in vfork) was taken over by a kernel-only judge";
}

// ============================================================================
// 4. Control: a holder killed and left unreaped (a zombie: no mm) is
//    recovered by the same kernel-only judge within a bound.
// ============================================================================
TEST(AttackLock8, Control_ZombieHolderIsRecoveredByAKernelOnlyJudge) {
  ScopedName name("atk8_zb");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  auto* j = new (testing::shared_memory(sizeof(Judged))) Judged;
  Pipe held;
  const pid_t holder = testing::spawn([&] {
    const stripe_lock::Acquired a = stripe_lock::lock(header_of(cache, 0), 1000ms);
    if (!a.acquired) return 30;
    held.send();
    for (;;) ::pause();
  });
  held.close_write();
  ASSERT_TRUE(held.recv());
  ASSERT_EQ(::kill(holder, SIGKILL), 0);
  // A zombie now (not reaped until the judge has answered): wait for its state, a bound.
  ASSERT_TRUE(testing::await([&] {
    siginfo_t si{};
    return ::waitid(P_PID, id_t(holder), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == holder;
  }));
  const pid_t w = spawn_vm_judge(cache, j, 5000ms);
  const int ws = testing::finishes_within(w, 20000);
  testing::finishes_within(holder, 5000);
  if (ws == 40) GTEST_SKIP() << "no seccomp filter here";
  ASSERT_EQ(ws, 0);
  EXPECT_EQ(j->acquired.load(), 1) << "a zombie holder's lock was not recovered within 5 s (holder tid "
                                   << j->holder_tid.load() << ")";
  EXPECT_EQ(j->owner_died.load(), 1);
}

}  // namespace
}  // namespace hostcache
