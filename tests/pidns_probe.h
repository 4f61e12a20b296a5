// pidns_probe.h — what the stripe lock's pid-namespace attacks share
// (test_attack_lock4, test_attack_lock5): a fork at chosen pids (clone3
// set_tid), a task's state and a file's text as this process's /proc shows
// them, a child holding a stripe's lock until told, and the ancestor-/proc
// scene: a worker in a pid namespace that sees its parent namespace's /proc,
// facing a live holder whose inner pid names a zombie in the outer /proc.
#pragma once

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "fork_probe.h"
#include "lock_probe.h"
#include "log.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache::testing {

// fork() through clone3, with the child's pid chosen at each pid namespace
// level (tids[0]: the innermost). -1 with errno on failure.
inline pid_t fork_at(const pid_t* tids, std::size_t levels) {
  clone_args args{};
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<std::uint64_t>(tids);
  args.set_tid_size = levels;
  return pid_t(::syscall(SYS_clone3, &args, sizeof args));
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A task's state letter (field 3 of its stat), 0 if /proc does not show it.
inline char task_state(pid_t pid) {
  const std::string s = slurp("/proc/" + std::to_string(pid) + "/stat");
  const auto p = s.rfind(')');
  return p == std::string::npos || p + 2 >= s.size() ? 0 : s[p + 2];
}

inline pid_t gettid_() { return pid_t(::syscall(SYS_gettid)); }

// A mount namespace of this process's own in which `fs` ("proc", with its
// mount options `opts`, e.g. "hidepid=2"; or "tmpfs": a sandbox or a
// chroot without /proc) is mounted on /proc.
inline bool mount_on_proc(const char* fs, const char* opts) {
  if (::unshare(CLONE_NEWNS) != 0) return false;
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return false;
  return ::mount(fs, "/proc", fs, MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) == 0;
}
// A fresh /proc of this process's pid namespace (unshare --pid --mount-proc).
inline bool own_proc(const char* opts = nullptr) { return mount_on_proc("proc", opts); }
// An empty tmpfs over /proc: no /proc at all.
inline bool no_proc() { return mount_on_proc("tmpfs", "size=64k"); }

// A child that takes stripe h's lock, sets `inside`, says so on `holding`,
// and unlocks once `release` is written to or closed.
inline pid_t fork_holder(layout::StripeHeader& h, std::atomic<int>& inside, Pipe& holding, Pipe& release) {
  const pid_t hp = ::fork();
  if (hp == 0) {
    if (!stripe_lock::lock(h, std::chrono::steady_clock::now() + std::chrono::seconds(2)).acquired) ::_exit(12);
    inside = 1;
    holding.send();
    release.close_write();
    release.recv();
    inside = 0;
    stripe_lock::unlock(h);
    ::_exit(0);
  }
  holding.close_write();
  return hp;
}

// What the ancestor-/proc scene saw; in shared memory.
struct AncestorScene {
  std::atomic<int> w_pid{0}, w_outer{0};  // W's pid in its namespace, and in the outer one (its /proc's)
  std::atomic<int> w_acquired{0}, w_saw_inside{0}, w_busy{0}, w_takeovers{0};
  std::atomic<int> inside{0};  // H holds the lock
  int err = 0;                 // errno of a failed clone3
  pid_t zombie = 0;            // Z: the outer namespace's zombie, H's inner number
  int status = -1;             // 0: ran; 20, 31, 33: no pid namespace / clone3 set_tid here; other: failed
};

// Z, a zombie child of the test; then, in a new pid namespace whose /proc is
// still the parent's: C (its init) opens the segment, H (at pid Z there)
// takes stripe 0's lock and holds it, and W (at the same pid at both levels
// when `coincide`, else wherever fork puts it) runs `w_prelude` (which may
// _exit(0) to give up) and then a set, recorded in `x`. Z stays a zombie
// until the caller reaps it (testing::wait_for(x->zombie)).
template <class Prelude>
void run_ancestor_scene(const Config& config, bool coincide, AncestorScene* x, Prelude w_prelude) {
  using namespace std::chrono_literals;
  const pid_t z = spawn([] { return 0; });
  x->zombie = z;
  siginfo_t info{};
  ASSERT_EQ(::waitid(P_PID, id_t(z), &info, WEXITED | WNOWAIT), 0);
  ASSERT_EQ(task_state(z), 'Z');
  const int outer_last = std::atoi(slurp("/proc/sys/kernel/ns_last_pid").c_str());

  const pid_t pp = spawn([&] {
    if (::unshare(CLONE_NEWPID) != 0) return 20;
    const pid_t c = ::fork();
    if (c < 0) return 21;
    if (c == 0) {
      log::get().set_level(spdlog::level::off);
      Cache cache = Cache::open(config);
      layout::StripeHeader& h = header_of(cache, 0);
      if (cache.set("k", "v") != Errc::ok) ::_exit(30);
      Pipe holding, release;
      const pid_t hz[1] = {z};
      const pid_t hp = fork_at(hz, 1);  // H: number z in this namespace, a zombie's outside
      if (hp < 0) {
        x->err = errno;
        ::_exit(31);
      }
      if (hp == 0) {
        if (!stripe_lock::lock(h, std::chrono::steady_clock::now() + 2s).acquired) ::_exit(12);
        x->inside = 1;
        holding.send();
        release.close_write();
        release.recv();
        x->inside = 0;
        stripe_lock::unlock(h);
        ::_exit(0);
      }
      holding.close_write();
      if (!holding.recv()) ::_exit(32);
      auto w_body = [&] {
        w_prelude();
        char self[64] = {0};
        if (::readlink("/proc/self", self, sizeof self - 1) < 0) ::_exit(40);
        x->w_pid = ::getpid();
        x->w_outer = std::atoi(self);
        const std::uint64_t takeovers = h.takeovers;
        const Errc e = cache.set("k", "from W");
        x->w_acquired = e == Errc::ok;
        x->w_busy = e == Errc::busy;
        x->w_saw_inside = x->inside.load();
        x->w_takeovers = int(h.takeovers - takeovers);
        ::_exit(0);
      };
      pid_t wp = -1;
      if (coincide) {
        for (pid_t cand = outer_last + 500; cand < outer_last + 5000; ++cand) {
          const pid_t both[2] = {cand, cand};
          wp = fork_at(both, 2);
          if (wp == 0) w_body();
          if (wp > 0 || errno != EEXIST) break;
        }
      } else {
        wp = ::fork();
        if (wp == 0) w_body();
      }
      if (wp < 0) {
        x->err = errno;
        release.send();
        ::_exit(33);
      }
      const int ws = finishes_within(wp, 10000);
      release.send();
      const int hs = finishes_within(hp, 10000);
      ::_exit(ws == 0 && hs == 0 ? 0 : 34);
    }
    int st = 0;
    ::waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 35;
  });
  x->status = finishes_within(pp, 20000);
}

// A new time namespace whose monotonic clock is offset by `offset_ns` (any
// sign, under a millisecond too), for the children this process forks from
// now on: unshare(CLONE_NEWTIME) does not move the caller.
inline bool unshare_time_namespace_offset_ns(std::int64_t offset_ns) {
  if (::unshare(CLONE_NEWTIME) != 0) return false;
  std::int64_t s = offset_ns / 1'000'000'000, n = offset_ns % 1'000'000'000;
  if (n < 0) {
    n += 1'000'000'000;
    s -= 1;
  }
  std::ofstream off("/proc/self/timens_offsets");
  off << "monotonic " << s << " " << n << "\n";
  off.flush();
  return bool(off);
}

// Joins the namespace unshare_time_namespace_offset_ns made for children.
inline bool enter_time_namespace_for_children() {
  const int fd = ::open("/proc/self/ns/time_for_children", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::setns(fd, CLONE_NEWTIME) == 0;
  ::close(fd);
  return ok;
}

// Moves this single-threaded process into such a namespace at once.
inline bool move_to_time_namespace_offset_ns(std::int64_t offset_ns) {
  return unshare_time_namespace_offset_ns(offset_ns) && enter_time_namespace_for_children();
}

inline bool move_to_time_namespace_offset_ms(std::int64_t offset_ms) {
  return move_to_time_namespace_offset_ns(offset_ms * 1'000'000);
}

// A message in shared memory.
struct Text {
  char s[1024];
  void put(const std::string& t) { std::snprintf(s, sizeof s, "%s", t.c_str()); }
};

// Whether a scene's status says this machine cannot stage it.
inline bool scene_unsupported(const AncestorScene& x) { return x.status == 20 || x.status == 31 || x.status == 33; }

}  // namespace hostcache::testing
