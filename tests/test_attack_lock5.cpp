// Adversarial review (fifth round) of the stripe lock's judgement of an
// owner's life (src/stripe_lock.cpp: proc_shows, nspid_levels,
// read_proc_file, life_by_kernel, and the birth stamp self() records).
//
// Real processes throughout: unshare(CLONE_NEWPID / CLONE_NEWNS), a fresh
// /proc (with and without hidepid=2), ns_last_pid and clone3 set_tid to
// place threads at chosen numbers, setgroups, setresuid, SIGKILL. Pipes
// order events; every wait is bounded.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
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
using testing::word_ref;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

using testing::fork_holder;
using testing::slurp;

using testing::gettid_;
using testing::own_proc;


// ============================================================================
// 1. The holder's birth stamp read through an ancestor's /proc. self() reads
//    /proc/self/task/TID/stat with TID its own id, without asking (as
//    proc_shows asks for a waiter) whether that /proc is its namespace's.
//    In a worker that sees its parent namespace's /proc (unshare --pid
//    --fork without --mount-proc), /proc/self is its process under the
//    outer number, and task/TID there is whichever of its threads has TID
//    as its *outer* number: another thread. Its birth is that thread's start
//    time. A waiter with a /proc of its own (the same pid namespace: nothing
//    is refused) reads /proc/TID/stat, the holder's true start time, unlike
//    the word: "the id was reused", dead, and it takes the stripe over from
//    a live holder. ns_last_pid places thread A (the holder) at the number
//    that sibling thread B has outside, as pid allocation does by chance.
// ============================================================================
TEST(AttackLock5, HolderWhoseBirthWasReadThroughAnAncestorProcIsNeverTakenOverWhileAlive) {
  ScopedName name("atk5_birth");
  Config config = testing::small_config(name.name, 1u << 20, 1);

  struct Shared {
    std::atomic<int> b_outer{0}, a_tid{0}, a_true_start{0}, w_step{0};
    std::atomic<std::uint64_t> a_word{0};
    std::atomic<int> inside{0}, w_acquired{0}, w_owner_died{0}, w_saw_inside{0};
    int err = 0;
  };
  auto* x = new (testing::shared_memory(sizeof(Shared))) Shared;

  const pid_t pp = testing::spawn([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 20;
    const pid_t c = ::fork();
    if (c < 0) return 21;
    if (c == 0) {
      log::get().set_level(spdlog::level::off);
      Cache cache = Cache::open(config);
      layout::StripeHeader& h = header_of(cache, 0);
      if (cache.set("k", "v") != Errc::ok) ::_exit(30);
      Pipe holding, release;
      const pid_t hp = ::fork();
      if (hp == 0) {
        // H: thread B first, its outer number read from the (outer) /proc.
        release.close_write();
        Pipe b_ready;
        std::thread b([&] {
          x->b_outer = std::atoi(slurp("/proc/thread-self/stat").c_str());
          b_ready.send();
          release.recv();
        });
        if (!b_ready.recv()) ::_exit(40);
        const int bo = x->b_outer.load();
        // A tick later (B's start time and A's differ), A at inner number bo.
        const auto b_start = std::int64_t(testing::start_ticks(bo));
        if (!testing::await([&] { return testing::boot_ticks_now() > b_start + 2; }, 5000)) ::_exit(41);
        {
          std::ofstream f("/proc/sys/kernel/ns_last_pid");
          f << (bo - 1);
          if (!f.flush()) ::_exit(42);
        }
        std::thread a([&] {
          x->a_tid = gettid_();
          if (x->a_tid.load() != bo) ::_exit(43);  // the placement failed: not this test's subject
          if (!stripe_lock::lock(h, steady::now() + 2s).acquired) ::_exit(44);
          x->a_word = word_ref(h).load() & ~stripe_lock::kWaiters;
          x->inside = 1;
          holding.send();
          release.recv();
          x->inside = 0;
          stripe_lock::unlock(h);
        });
        a.join();
        b.join();
        ::_exit(0);
      }
      holding.close_write();
      if (!holding.recv()) {
        int hs = 0;
        ::waitpid(hp, &hs, 0);
        ::_exit(WIFEXITED(hs) ? WEXITSTATUS(hs) : 39);
      }
      // W: same pid namespace, its own /proc.
      const pid_t wp = ::fork();
      if (wp == 0) {
        if (!own_proc(nullptr)) ::_exit(50);
        x->w_step = 1;
        x->a_true_start = int(testing::start_ticks(x->a_tid.load()));
        const auto a = stripe_lock::lock(h, steady::now() + 1s);
        x->w_acquired = a.acquired;
        x->w_owner_died = a.owner_died;
        x->w_saw_inside = x->inside.load();
        if (a.acquired) stripe_lock::unlock(h);
        ::_exit(0);
      }
      const int ws = testing::finishes_within(wp, 10000);
      release.send();
      release.close_write();
      const int hs = testing::finishes_within(hp, 10000);
      ::_exit(ws != 0 ? 60 + ws : hs != 0 ? hs : 0);
    }
    int st = 0;
    ::waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 35;
  });
  const int st = testing::finishes_within(pp, 20000);
  if (st == 20 || st == 42 || st == 43 || st == 50) {
    GTEST_SKIP() << "no pid/mount namespace, ns_last_pid or placement here (status " << st << ")";
  }
  ASSERT_EQ(st, 0) << "scene failed";
  const std::uint32_t birth = std::uint32_t(x->a_word.load() >> 32);
  EXPECT_FALSE(x->w_acquired.load() && x->w_saw_inside.load())
      << "two holders: W (own /proc) took the stripe over (owner_died=" << x->w_owner_died.load()
      << ") from thread A (tid " << x->a_tid.load() << "), alive and inside. A's word has birth " << birth
      << ", its start time is " << x->a_true_start.load() << ": self() read /proc/self/task/" << x->a_tid.load()
      << "/stat through the parent namespace's /proc, which is A's sibling thread B (outer tid "
      << x->b_outer.load() << ")";
  EXPECT_FALSE(x->w_acquired.load()) << "W should have been answered busy";
}

// ============================================================================
// 2. nspid_levels reads 8191 bytes of /proc/thread-self/status. Its Groups
//    line comes before NSpid, and a worker with a thousand or so
//    supplementary groups (directory-service users have as many) has a
//    status longer than that: no "\nNSpid:" in the buffer, 0 levels, "a
//    kernel before 4.1", and an ancestor's /proc is trusted again when the
//    waiter's numbers coincide (test_attack_lock4's scene, plus groups).
// ============================================================================
TEST(AttackLock5, WorkerWithManyGroupsWhoseNumberCoincidesInAnAncestorProcNeverTakesOverALiveHolder) {
  ScopedName name("atk5_grp");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  config.lock_timeout = 300ms;
  struct Extra {
    std::atomic<int> w_status_len{0}, w_nspid_at{0}, no_groups{0};
  };
  auto* y = new (testing::shared_memory(sizeof(Extra))) Extra;
  auto* x = new (testing::shared_memory(sizeof(testing::AncestorScene))) testing::AncestorScene;
  testing::run_ancestor_scene(config, true, x, [y] {
    std::vector<gid_t> groups;
    for (gid_t g = 0; g < 1400; ++g) groups.push_back(1000000 + g);
    if (::setgroups(groups.size(), groups.data()) != 0) {
      y->no_groups = 1;
      ::_exit(0);
    }
    const std::string status = slurp("/proc/thread-self/status");
    y->w_status_len = int(status.size());
    y->w_nspid_at = int(status.find("\nNSpid:"));
  });
  if (x->zombie > 0) testing::wait_for(x->zombie);
  if (::testing::Test::HasFatalFailure()) return;
  if (testing::scene_unsupported(*x)) {
    GTEST_SKIP() << "no pid namespace / clone3 set_tid here (status " << x->status << ", errno " << x->err << ")";
  }
  ASSERT_EQ(x->status, 0) << "scene failed";
  if (y->no_groups.load()) GTEST_SKIP() << "setgroups refused here";
  ASSERT_EQ(x->w_pid.load(), x->w_outer.load()) << "W's numbers do not coincide";
  ASSERT_GT(y->w_nspid_at.load(), 8191) << "W's status is short: not this test's subject";
  EXPECT_FALSE(x->w_acquired.load() && x->w_saw_inside.load())
      << "two holders: W (pid " << x->w_pid.load() << " at both levels, 1400 groups, status "
      << y->w_status_len.load() << " bytes, NSpid at byte " << y->w_nspid_at.load()
      << ") took the stripe over (takeovers +" << x->w_takeovers.load() << ") from live holder H, whose pid "
      << x->zombie
      << " names a zombie in the outer /proc: nspid_levels read 8191 bytes, found no NSpid line and said 0 "
         "(\"a kernel before 4.1\")";
  EXPECT_TRUE(x->w_busy.load()) << "W should have been answered busy (acquired=" << x->w_acquired.load() << ")";
}

// ============================================================================
// 3. hidepid=2 and another uid: a waiter that may not see the holder in
//    /proc nor signal it (kill EPERM, move_pages EPERM) judges by the
//    kernel's answers, which say "alive" for anything that exists.
//    (a) a live holder: busy, never stolen; (b) a killed and reaped holder:
//    taken over; (c) a killed holder not yet reaped (a zombie, as every
//    killed worker is until its master's SIGCHLD handler runs): the
//    design's bounded takeover (test_attack_lock3 takes a zombie over with a
//    full descriptor table) - here only once the zombie is reaped.
// ============================================================================
// What a waiter facing fork_holder's holder saw.
struct WaiterView {
  std::atomic<int> inside{0}, acquired{0}, owner_died{0}, saw_inside{0};
};

// Kills holder hp (SIGKILL) and waits for its exit, leaving it a zombie
// (unreaped) when asked.
void kill_holder(pid_t hp, WaiterView* x, bool zombie) {
  x->inside = 0;  // a dead holder is inside no more
  ::kill(hp, SIGKILL);
  siginfo_t info{};
  ASSERT_EQ(::waitid(P_PID, id_t(hp), &info, WEXITED | (zombie ? WNOWAIT : 0)), 0);
}

// The waiter's attempt: stripe h's lock within 3 s, recorded in x.
void wait_for_lock(layout::StripeHeader& h, WaiterView* x) {
  const auto a = stripe_lock::lock(h, steady::now() + 3s);
  x->acquired = a.acquired;
  x->owner_died = a.owner_died;
  x->saw_inside = x->inside.load();
  if (a.acquired) stripe_lock::unlock(h);
}

enum class HolderFate { alive, reaped, zombie };

void hidden_holder_scene(HolderFate fate) {
  ScopedName name("atk5_hide");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  auto* x = new (testing::shared_memory(sizeof(WaiterView))) WaiterView;
  Pipe holding, release;
  const pid_t hp = fork_holder(h, x->inside, holding, release);
  ASSERT_TRUE(holding.recv());
  if (fate != HolderFate::alive) {
    kill_holder(hp, x, fate == HolderFate::zombie);
    if (::testing::Test::HasFatalFailure()) return;
  }
  const pid_t wp = ::fork();
  if (wp == 0) {
    if (!own_proc("hidepid=2")) ::_exit(50);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setgroups(0, nullptr) != 0) {
      if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0) ::_exit(51);
    }
    if (::setresuid(65534, 65534, 65534) != 0) ::_exit(51);
    // The holder is hidden from this /proc (the precondition).
    if (::access(("/proc/" + std::to_string(hp) + "/stat").c_str(), F_OK) == 0) ::_exit(52);
    wait_for_lock(h, x);
    ::_exit(0);
  }
  const int ws = testing::finishes_within(wp, 15000);
  release.send();
  if (fate == HolderFate::alive) {
    EXPECT_EQ(testing::finishes_within(hp, 10000), 0);
  } else if (fate == HolderFate::zombie) {
    testing::wait_for(hp);
  }
  if (ws == 50 || ws == 51) GTEST_SKIP() << "no mount namespace / hidepid / setresuid here (status " << ws << ")";
  ASSERT_NE(ws, 52) << "the holder was not hidden by hidepid=2";
  ASSERT_EQ(ws, 0);
  switch (fate) {
    case HolderFate::alive:
      EXPECT_FALSE(x->acquired.load() && x->saw_inside.load()) << "two holders: a hidden live holder was taken over";
      EXPECT_FALSE(x->acquired.load());
      break;
    case HolderFate::reaped:
      EXPECT_TRUE(x->acquired.load() && x->owner_died.load()) << "a killed and reaped hidden holder was not taken over in 3 s";
      break;
    case HolderFate::zombie:
      EXPECT_TRUE(x->acquired.load() && x->owner_died.load())
          << "holder " << hp << " killed (a zombie, not yet reaped) and hidden from the waiter's /proc "
             "(hidepid=2, another uid): not taken over in 3 s; kill(tid, 0) and move_pages both answer EPERM, "
             "which life_by_kernel reads as alive";
      break;
  }
}

TEST(AttackLock5, HiddenLiveHolderOfAnotherUidIsNeverTakenOver) { hidden_holder_scene(HolderFate::alive); }
TEST(AttackLock5, HiddenReapedHolderOfAnotherUidIsTakenOver) { hidden_holder_scene(HolderFate::reaped); }
TEST(AttackLock5, HiddenKilledUnreapedHolderOfAnotherUidIsTakenOverInBoundedTime) {
  hidden_holder_scene(HolderFate::zombie);
}

// ============================================================================
// 4. A waiter whose own status line cannot be read (an empty/unreadable
//    /proc/thread-self/status: nspid_levels -1): proc_shows says no, the
//    kernel judges. Done with a /proc of its own where a file is bound over
//    its status: a live holder is busy, a killed unreaped one is taken over
//    (move_pages EINVAL for a zombie of the same uid).
// ============================================================================
void unreadable_status_scene(bool killed) {
  ScopedName name("atk5_st");
  Config config = testing::small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(config);
  layout::StripeHeader& h = header_of(cache, 0);
  ASSERT_EQ(cache.set("k", "v"), Errc::ok);
  auto* x = new (testing::shared_memory(sizeof(WaiterView))) WaiterView;
  auto* levels_readable = new (testing::shared_memory(sizeof(std::atomic<int>))) std::atomic<int>(0);
  Pipe holding, release;
  const pid_t hp = fork_holder(h, x->inside, holding, release);
  ASSERT_TRUE(holding.recv());
  if (killed) {
    kill_holder(hp, x, true);
    if (::testing::Test::HasFatalFailure()) return;
  }
  const pid_t wp = ::fork();
  if (wp == 0) {
    if (!own_proc(nullptr)) ::_exit(50);
    (void)stripe_lock::self_word();
    const std::string st = "/proc/" + std::to_string(::getpid()) + "/task/" + std::to_string(gettid_()) + "/status";
    if (::mount("/dev/null", st.c_str(), nullptr, MS_BIND, nullptr) != 0) ::_exit(53);
    *levels_readable = !slurp("/proc/thread-self/status").empty();
    wait_for_lock(h, x);
    ::_exit(0);
  }
  const int ws = testing::finishes_within(wp, 15000);
  release.send();
  testing::wait_for(hp);
  if (ws == 50 || ws == 53) GTEST_SKIP() << "cannot bind over /proc here (status " << ws << ")";
  ASSERT_EQ(ws, 0);
  ASSERT_FALSE(levels_readable->load()) << "the bind did not hide the status";
  if (killed) {
    EXPECT_TRUE(x->acquired.load() && x->owner_died.load()) << "a zombie holder was not taken over in 3 s";
  } else {
    EXPECT_FALSE(x->acquired.load() && x->saw_inside.load()) << "two holders";
    EXPECT_FALSE(x->acquired.load());
  }
}

TEST(AttackLock5, WaiterWithAnUnreadableStatusIsBusyOnALiveHolder) { unreadable_status_scene(false); }
TEST(AttackLock5, WaiterWithAnUnreadableStatusTakesOverAZombieHolder) { unreadable_status_scene(true); }

// ============================================================================
// 8. nspid_levels as a reader of status files (review of 568f6d0): the NSpid
//    line is found wherever it is (after a Groups line of any length, after
//    a line of exactly the reader's buffer, as a last line without its
//    newline: "no NSpid" there trusted an ancestor's /proc), and a file
//    without one, or none at all, says so. Files written here: a model of
//    what /proc/PID/status may hold, not a replay of one kernel's.
// ============================================================================
std::string status_file(const std::string& text) {
  char path[] = "/tmp/hc_nspid_XXXXXX";
  const int fd = ::mkstemp(path);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, text.data(), text.size()), ssize_t(text.size()));
  ::close(fd);
  return path;
}

TEST(AttackLock5, NspidLevelsFindsTheLineWhereverTheFilePutsIt) {
  const std::string head = "Name:\tw\nState:\tS (sleeping)\nTgid:\t7\nPid:\t7\n";
  std::string groups = "Groups:\t";
  for (int g = 0; g < 3000; ++g) groups += std::to_string(1000000 + g) + " ";
  groups += "\n";
  struct Case {
    const char* what;
    std::string text;
    int levels;
  };
  const std::vector<Case> cases = {
      {"one level", head + "NSpid:\t7\nNSpgid:\t7\n", 1},
      {"two levels", head + "NSpid:\t4021\t7\nNSpgid:\t4021\t7\n", 2},
      {"three levels, tabs and spaces", head + "NSpid:\t9 \t8\t7\n", 3},
      {"after a Groups line of 24 KiB", head + groups + "NSpid:\t4021\t7\nNSpgid:\t1\n", 2},
      {"a last line without its newline", head + "NSpid:\t4021\t7", 2},
      {"after Groups, last, no newline", head + groups + "NSpid:\t4021\t7", 2},
      {"after a line of exactly 1023 bytes and its newline", head + std::string(1023, 'x') + "\nNSpid:\t5\t6\n", 2},
      {"after a line of exactly 1024 bytes and its newline", head + std::string(1024, 'x') + "\nNSpid:\t5\t6\n", 2},
      {"after a line of 1025 bytes", head + std::string(1025, 'x') + "\nNSpid:\t5\t6\n", 2},
      {"NSpid: inside another line is not the line", head + "Xx: NSpid:\t1\nNSpid:\t2\t3\n", 2},
      {"no NSpid line (Linux before 4.1)", head + groups + "VmRSS:\t1 kB\n", 0},
      {"an over-long line that is the file's end", head + std::string(5000, 'y'), 0},
      {"an empty file", "", 0},
  };
  for (const Case& c : cases) {
    const std::string path = status_file(c.text);
    EXPECT_EQ(stripe_lock::nspid_levels(path.c_str()), c.levels) << c.what;
    ::unlink(path.c_str());
  }
  EXPECT_EQ(stripe_lock::nspid_levels("/nonexistent/hc/status"), -1);
  // This thread's own, as the kernel writes it: one level here, or more
  // when the test runs inside a pid namespace with an ancestor's /proc.
  EXPECT_GE(stripe_lock::nspid_levels("/proc/thread-self/status"), 1);
}

}  // namespace
}  // namespace hostcache
