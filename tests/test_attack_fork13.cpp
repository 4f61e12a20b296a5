// test_attack_fork13.cpp — adversarial review of cfb1b55 (log.cpp: shared torn
// page, error handler, SigPnd parsing; segment.cpp: reserve_stdio/above_stdio).
// Six of eight failed on cfb1b55 (helper-53): a child writing to its own file
// cleared, or took, its parent's torn line (the record now names the stream);
// the error handler's line ignored the torn line; SigPnd past 4 KiB of a long
// Groups line was not found (read as a stream now); and / as O_PATH, the
// filler of a hole among fd 0-2, was a way out of a chroot and, where even it
// could not be opened, above_stdio closed another thread's dup2 onto fd 2 (an
// empty sealed memfd fills the hole now). All pass since.
#include <gtest/gtest.h>
#include <hostcache/memoize.h>

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "fork_park.h"
#include "log.h"
#include "memoize_fixture.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using memoize_testing::finishes;
using testing::ScopedName;
using testing::small_config;
using testing::spawn;
using fork_park::drain;
using fork_park::small_nonblocking_stderr;
using fork_park::lines_of;

// The line holding needle starts with `start`.
bool line_starts(const std::string& all, const std::string& needle, const std::string& start) {
  for (const auto& l : lines_of(all)) {
    if (l.find(needle) == std::string::npos) continue;
    return l.rfind(start, 0) == 0 && l.find("[hostcache]") == l.rfind("[hostcache]");
  }
  return false;
}


std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// ---------------------------------------------------------------------------------
// A. The torn flag is shared by the whole process tree, whatever each one's fd 2 is
// ---------------------------------------------------------------------------------

// The parent's line is torn in its pipe. A worker whose stderr is its own log
// file (a daemon's per-worker log) writes a whole line there: it clears the
// flag the parent's pipe needs. The parent's next line is glued onto its own
// fragment.
TEST(ForkAttack13, AChildLoggingToItsOwnFileDoesNotClearTheParentsTornLine) {
  const std::string file = "/tmp/fa13_child_" + std::to_string(::getpid()) + ".log";
  const pid_t h = spawn([&] {
    const int rd = small_nonblocking_stderr();
    if (rd == -2) return 20;
    if (rd < 0) return 3;
    log::get().warn("parent torn {}", std::string(6000, 'a'));
    std::string all = drain(rd);
    if (all.size() != 4096 || all.find('\n') != std::string::npos) return 21;
    const pid_t c = ::fork();
    if (c == 0) {
      const int f = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(f, 2);
      log::get().warn("worker into its own file");
      ::_exit(0);
    }
    if (finishes(c, 10s) != 0) return 22;
    log::get().warn("parent next");
    all += drain(rd);
    if (line_starts(all, "parent next", "[")) return 0;
    std::fprintf(stdout, "parent's stderr: ...%s\n", all.substr(4060).c_str());
    std::fflush(stdout);
    return 10;
  });
  const int st = finishes(h, 20s);
  ::unlink(file.c_str());
  if (st == 20) GTEST_SKIP() << "pipe size not settable";
  EXPECT_EQ(st, 0) << "A1: 10 = the parent's next line is glued to its own torn fragment: a child writing "
                      "whole to ANOTHER file cleared the tree-wide flag";
}

// The other way: the parent tore a line in its pipe; a worker whose stderr
// is a fresh log file starts that file with an empty line.
TEST(ForkAttack13, AChildsOwnLogFileDoesNotStartWithTheParentsNewline) {
  const std::string file = "/tmp/fa13_child2_" + std::to_string(::getpid()) + ".log";
  const pid_t h = spawn([&] {
    const int rd = small_nonblocking_stderr();
    if (rd == -2) return 20;
    if (rd < 0) return 3;
    log::get().warn("parent torn {}", std::string(6000, 'a'));
    drain(rd);
    const pid_t c = ::fork();
    if (c == 0) {
      const int f = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(f, 2);
      log::get().warn("worker into its own file");
      ::_exit(0);
    }
    if (finishes(c, 10s) != 0) return 22;
    const std::string got = read_file(file);
    if (!got.empty() && got[0] == '[') return 0;
    std::fprintf(stdout, "worker's file starts with byte %d\n", got.empty() ? -1 : int(got[0]));
    std::fflush(stdout);
    return 10;
  });
  const int st = finishes(h, 20s);
  ::unlink(file.c_str());
  if (st == 20) GTEST_SKIP() << "pipe size not settable";
  EXPECT_EQ(st, 0) << "A2: 10 = the worker's own file starts with a stray newline (someone else's torn line)";
}

// ---------------------------------------------------------------------------------
// B. The error handler ignores the torn flag
// ---------------------------------------------------------------------------------

// A line is torn; then a message whose format fails: the handler's line is
// glued onto the fragment (it neither starts with '\n' nor clears/sets the flag).
TEST(ForkAttack13, TheErrorHandlersLineAfterATornOneStartsWhole) {
  const pid_t h = spawn([] {
    const int rd = small_nonblocking_stderr();
    if (rd == -2) return 20;
    if (rd < 0) return 3;
    log::get().warn("torn {}", std::string(6000, 'a'));
    std::string all = drain(rd);
    if (all.size() != 4096) return 21;
    log::get().warn(fmt::runtime("bad format {} {}"), 1);  // one argument too few
    all += drain(rd);
    if (all.find("dropped") == std::string::npos) return 22;
    if (line_starts(all, "dropped", "[hostcache] [error]")) return 0;
    std::fprintf(stdout, "after the fragment: ...%s\n", all.substr(4080).c_str());
    std::fflush(stdout);
    return 10;
  });
  const int st = finishes(h, 20s);
  if (st == 20) GTEST_SKIP() << "pipe size not settable";
  EXPECT_EQ(st, 0) << "B1: 10 = the error handler's line is glued to the torn fragment; 22 = no handler line";
}

// The handler's own line torn: the next message would be glued to it (the
// handler never sets the flag). Not reproducible on a pipe: the handler's line
// is at most 320 bytes <= PIPE_BUF, so a non-blocking write of it is all or
// nothing (scene not set: 21). Kept DISABLED as a record.
TEST(ForkAttack13, DISABLED_NotReproducibleOnAPipe_ALineAfterATornErrorHandlerLineStartsWhole) {
  const pid_t h = spawn([] {
    const int rd = small_nonblocking_stderr();
    if (rd == -2) return 20;
    if (rd < 0) return 3;
    // fill to 4096 - 20: 20 bytes room for the handler's line
    ::fcntl(2, F_SETFL, ::fcntl(2, F_GETFL) & ~O_NONBLOCK);
    std::string fill(4076, '.');
    fill.back() = '\n';
    if (::write(2, fill.data(), fill.size()) != ssize_t(fill.size())) return 23;
    ::fcntl(2, F_SETFL, ::fcntl(2, F_GETFL) | O_NONBLOCK);
    log::get().warn(fmt::runtime("bad format {} {}"), 1);
    std::string all = drain(rd);
    if (all.size() != 4096 || all.back() == '\n') return 21;  // the handler's line open
    log::get().warn("next after the handler");
    all += drain(rd);
    if (line_starts(all, "next after the handler", "[")) return 0;
    std::fprintf(stdout, "tail: ...%s\n", all.substr(4070).c_str());
    std::fflush(stdout);
    return 10;
  });
  const int st = finishes(h, 20s);
  if (st == 20) GTEST_SKIP() << "pipe size not settable";
  EXPECT_EQ(st, 0) << "B2: 10 = the next line is glued to the error handler's torn line";
}

// ---------------------------------------------------------------------------------
// C. SigPnd beyond the first 4095 bytes of /proc/thread-self/status
// ---------------------------------------------------------------------------------

// A process with many supplementary groups (Groups: line of ~7 KB; NGROUPS_MAX
// is 65536) blocks SIGPIPE, has one process-directed SIGPIPE pending, logs into
// a reader-less stderr: SigPnd is not in the 4095 bytes read -> "assume pending"
// -> the library's own SIGPIPE is left beside the process's (the case fork12's
// ...NotLeftPendingBesideTheProcesssOwn fixed).
int sigpipes_left_with_groups(int ngroups, bool no_fd = false) {
  const pid_t h = spawn([ngroups, no_fd] {
    std::vector<gid_t> g;
    for (int i = 0; i < ngroups; ++i) g.push_back(gid_t(100000 + i));
    if (ngroups > 0 && ::setgroups(g.size(), g.data()) != 0) return 4;
    const std::string st = read_file("/proc/thread-self/status");
    const std::size_t at = st.find("\nSigPnd:");
    std::fprintf(stdout, "%d groups: SigPnd at byte %zu of %zu\n", ngroups, at, st.size());
    std::fflush(stdout);
    int p[2];
    if (::pipe(p) != 0 || ::dup2(p[1], 2) < 0) return 3;
    ::close(p[1]);
    ::close(p[0]);
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &pipe_only, nullptr);
    const timespec zero0{};
    ::kill(::getpid(), SIGPIPE);
    log::get().warn("warm");  // the sink made before the descriptors run out
    ::sigtimedwait(&pipe_only, nullptr, &zero0);
    ::kill(::getpid(), SIGPIPE);
    if (no_fd) {
      rlimit r{64, 64};
      ::setrlimit(RLIMIT_NOFILE, &r);
      while (::dup(0) >= 0) {
      }
    }
    log::get().warn("into a broken stderr");
    const timespec zero{};
    if (::sigtimedwait(&pipe_only, nullptr, &zero) != SIGPIPE) return 5;
    sigset_t pend;
    ::sigpending(&pend);
    return sigismember(&pend, SIGPIPE) ? 10 : 0;
  });
  return finishes(h, 20s);
}

TEST(ForkAttack13, ControlFewGroupsTheLibrarysSigpipeIsTakenBack) {
  EXPECT_EQ(sigpipes_left_with_groups(0), 0);
}

TEST(ForkAttack13, ManyGroupsTheLibrarysSigpipeIsNotLeftPendingBesideTheProcesssOwn) {
  const int st = sigpipes_left_with_groups(1200);
  if (st == 4) GTEST_SKIP() << "setgroups not permitted";
  EXPECT_EQ(st, 0) << "C1: 10 = a second SIGPIPE (the library's) is left pending: SigPnd lies past byte 4095 "
                      "of /proc/thread-self/status and was not found";
}

// /proc/thread-self/status cannot be opened (EMFILE): "unknown: pending" —
// the library's SIGPIPE is left beside the process's (a documented choice).
TEST(ForkAttack13, DISABLED_Informational_NoDescriptorLeftTheLibrarysSigpipeIsNotLeftPending) {
  EXPECT_EQ(sigpipes_left_with_groups(0, true), 0) << "C2: 10 = left pending (open failed, assumed pending)";
}

// ---------------------------------------------------------------------------------
// D. Neither /dev/null nor / (a seccomp sandbox allowing neither open)
// ---------------------------------------------------------------------------------

// Denies openat(.., O_RDWR) (reserve_stdio's /dev/null) and any O_PATH open.
int install_no_devnull_no_opath_filter() {
  sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 6),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR | 0100000, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_PATH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return int(::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
}

int count_shm_with(const std::string& part) {
  int n = 0;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir("/dev/shm"), ::closedir);
  while (dirent* e = ::readdir(d.get())) n += std::string(e->d_name).find(part) != std::string::npos;
  return n;
}

// Neither /dev/null nor / can be opened, fd 2 closed: the hole is given a
// sealed empty memfd (before the fix of this review the create was refused:
// Boost's descriptor was 2). The create succeeds, fd 2 is that memfd, and
// /dev/shm holds the segment and no temporary object.
TEST(ForkAttack13, WithNoFileToPutAt2ACreateSucceedsAndLeavesNoTemporary) {
  ScopedName n("fa13r");
  const pid_t h = spawn([&] {
    ::close(2);
    if (install_no_devnull_no_opath_filter() != 0) return 4;
    if (::open("/dev/null", O_RDWR) >= 0 || ::open("/", O_PATH | O_DIRECTORY) >= 0) return 5;
    for (int i = 0; i < 50; ++i) {
      try {
        Cache c = Cache::open(small_config(n.name));
        c.set("k", "v");
      } catch (const std::exception& e) {
        std::fprintf(stdout, "open threw: %s\n", e.what());
        std::fflush(stdout);
        return 13;
      }
      struct stat st {};
      if (::fstat(2, &st) != 0) return 11;
      if (!S_ISREG(st.st_mode) || st.st_size != 0) return 12;  // the empty sealed memfd
    }
    return 0;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << "D1: 11 = fd 2 left closed, 12 = fd 2 is not the filler pipe, 13 = the open failed";
  EXPECT_EQ(count_shm_with(n.name), 1) << "D1: a temporary /dev/shm object was left behind";
}

// fd 2 closed at start (a daemon), neither /dev/null nor / can be opened. A
// thread sets up logging with ONE atomic dup2(logfd, 2) while another thread
// attaches. above_stdio: open() lands at 2, the dup2 replaces it, then
// above_stdio dups the *log pipe* and close(2) closes the thread's stderr.
TEST(ForkAttack13, AnAttachNeverClosesADescriptorAnotherThreadDup2dOnto2) {
  ScopedName n("fa13d");
  {
    Cache made = Cache::open(small_config(n.name));
  }
  const pid_t h = spawn([&] {
    int lp[2];
    if (::pipe(lp) != 0) return 3;
    const int logfd = lp[1];
    struct stat want {};
    ::fstat(logfd, &want);
    ::close(2);
    if (install_no_devnull_no_opath_filter() != 0) return 4;
    std::atomic<int> go{0};
    std::atomic<bool> stop{false};
    std::atomic<int> done{0};
    std::atomic<int> busy{0};
    std::thread b([&] {
      int seen = 0;
      while (!stop.load()) {
        if (go.load() == seen) continue;
        seen = go.load();
        // dup2 onto a slot another thread's open() has reserved but not yet
        // filled fails with EBUSY (Linux, dup2(2)): the kernel's race, not
        // ours; a careful program retries, and so does this one.
        while (::dup2(logfd, 2) < 0 && errno == EBUSY) busy.fetch_add(1);
        done.fetch_add(1);
      }
    });
    int closed = 0, wrong = 0, attach_failed = 0, iters = 0;
    const auto give_up = std::chrono::steady_clock::now() + 20s;
    for (; iters < 20000 && std::chrono::steady_clock::now() < give_up && !closed; ++iters) {
      ::close(2);
      const int d = done.load();
      go.fetch_add(1);
      try {
        Cache c = Cache::open(small_config(n.name));
      } catch (const std::exception& e) {
        if (++attach_failed == 1) std::fprintf(stdout, "attach threw: %s\n", e.what());
      }
      while (done.load() == d) {
      }
      struct stat got {};
      if (::fstat(2, &got) != 0) {
        ++closed;
      } else if (got.st_ino != want.st_ino) {
        ++wrong;
      }
    }
    stop = true;
    b.join();
    std::fprintf(stdout, "%d iterations: fd 2 closed after %d, not the log pipe %d, attach failed %d, dup2 EBUSY %d\n",
                 iters, closed, wrong, attach_failed, busy.load());
    std::fflush(stdout);
    if (closed) return 10;
    if (wrong) return 11;
    return attach_failed ? 12 : 0;
  });
  const int st = finishes(h, 90s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << "D2: 10 = the thread's dup2'd stderr was closed by above_stdio, 12 = attach got the "
                      "log pipe as its segment";
}

// ---------------------------------------------------------------------------------
// E. / as O_PATH at fd 2 is inherited: a handle on the real root
// ---------------------------------------------------------------------------------

// Without /dev/null (fork12's sandbox), fd 2 closed, a Cache::open fills fd 2
// with open("/", O_PATH|O_DIRECTORY), not close-on-exec. A launcher that then
// starts a chrooted child (fork, chroot, exec) hands it a directory fd on the
// host's root: openat(2, ...) reads files outside the jail (the classic
// chroot escape via an inherited directory fd).
int install_devnull_only_filter() {
  sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 4),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR, 1, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR | 0100000, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOENT & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return int(::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
}

TEST(ForkAttack13, AChrootedChildInheritsNoHandleOnTheRealRoot) {
  ScopedName n("fa13j");
  const std::string tag = std::to_string(::getpid());
  const std::string jail = "/tmp/fa13_jail_" + tag;
  const std::string secret = "fa13_secret_" + tag;
  ::mkdir(jail.c_str(), 0700);
  { std::ofstream("/tmp/" + secret) << "host secret"; }
  const pid_t h = spawn([&] {
    ::close(2);
    if (install_devnull_only_filter() != 0) return 4;
    try {
      Cache c = Cache::open(small_config(n.name));
    } catch (const std::exception& e) {
      std::fprintf(stdout, "open threw: %s\n", e.what());
      return 6;
    }
    const pid_t k = ::fork();
    if (k == 0) {
      if (::chroot(jail.c_str()) != 0 || ::chdir("/") != 0) ::_exit(7);
      // what an exec'd jailed program would do with its inherited fd 2
      if (::fcntl(2, F_GETFD) & FD_CLOEXEC) ::_exit(0);
      const std::string rel = "tmp/" + secret;
      const int f = ::openat(2, rel.c_str(), O_RDONLY | O_CLOEXEC);
      ::_exit(f >= 0 ? 10 : 0);
    }
    return finishes(k, 10s);
  });
  const int st = finishes(h, 30s);
  ::unlink(("/tmp/" + secret).c_str());
  ::rmdir(jail.c_str());
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  if (st == 7) GTEST_SKIP() << "chroot not permitted";
  EXPECT_EQ(st, 0) << "E1: 10 = a chrooted child read a host file through the O_PATH '/' the library left at "
                      "fd 2 (not close-on-exec)";
}

}  // namespace
}  // namespace hostcache
