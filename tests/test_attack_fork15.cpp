// test_attack_fork15.cpp — adversarial review of stdio_fill (fill_holes,
// reserve_stdio, the stripe lock's /proc and pidfd opens) and of log.cpp's
// 8-slot shared torn-line table, helper-56.
//
// Detection of "the library put a descriptor of its own at fd 2": a seccomp
// filter that kills the process (SIGSYS, status 159) on read(2, ...) or
// close(2) once the test itself has closed fd 2. The library has no reason
// to read fd 2 or close it: either means a /proc file, a pidfd or a segment
// was opened into the hole at 2 (where another thread's warning goes into
// it, and its close closes another thread's dup2 onto 2: test_attack_fork14
// B and C, found there by races; here deterministic).
#include <gtest/gtest.h>
#include <hostcache/memoize.h>

#include <dirent.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
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
#include <string>
#include <thread>
#include <vector>

#include "fork_park.h"
#include "log.h"
#include "memoize_fixture.h"
#include "segment.h"
#include "stdio_fill.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using fork_park::drain;
using memoize_testing::finishes;
using testing::ScopedName;
using testing::small_config;
using testing::spawn;

constexpr int kSigsys = 128 + SIGSYS;

void fill_0_and_1() {
  for (int fd = 0; fd <= 1; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0) {
      const int n = ::open("/dev/null", O_RDWR);
      if (n != fd && n >= 0) {
        ::dup2(n, fd);
        ::close(n);
      }
    }
  }
}

// The filter: kill on read(2,..)/close(2); EACCES for memfd_create,
// epoll_create1 and openat(O_RDWR) (the fillers) where deny_fillers; EPERM
// for fcntl(fd, F_GETFD) where deny_getfd (a sandbox whose fcntl whitelist
// lacks it).
int install(bool deny_fillers, bool deny_getfd) {
  const unsigned no = 0xffffffffu;
  sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      /* 1*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_read, 8, 0),
      /* 2*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_close, 7, 0),
      /* 3*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny_fillers ? unsigned(__NR_memfd_create) : no, 14, 0),
      /* 4*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny_fillers ? unsigned(__NR_epoll_create1) : no, 13, 0),
      /* 5*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny_fillers ? unsigned(__NR_openat) : no, 7, 0),
      /* 6*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, deny_getfd ? unsigned(__NR_fcntl) : no, 1, 0),
      /* 7*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      // fcntl: cmd F_GETFD -> EPERM
      /* 8*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[1])),
      /* 9*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_GETFD, 9, 7),
      // read / close: fd 2 -> kill
      /*10*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
      /*11*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 2, 0, 5),
      /*12*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      // openat: flags O_RDWR (the filler's /dev/null) -> EACCES
      /*13*/ BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[2])),
      /*14*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR, 3, 0),
      /*15*/ BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, O_RDWR | 0100000, 2, 1),
      /*16*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /*17*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      /*18*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
      /*19*/ BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
  };
  return fork_park::install_seccomp(f);
}

int count_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n - 1;
}

// ---------------------------------------------------------------------------------
// A. fill_holes and errno
// ---------------------------------------------------------------------------------

// fill_holes() saves errno to restore it, but only after has_hole() has run
// its failing fcntl(F_GETFD): the "saved" value is has_hole's EBADF.
TEST(ForkAttack15, FillHolesKeepsTheCallersErrno) {
  const pid_t h = spawn([] {
    fill_0_and_1();
    ::close(1);  // a hole (not at 2: gtest's output stays)
    errno = EDOM;
    const bool ok = stdio_fill::fill_holes();
    const int e = errno;
    std::fprintf(stderr, "fill_holes -> %d, errno %d (%s)\n", int(ok), e, std::strerror(e));
    if (!ok || ::fcntl(1, F_GETFD) < 0) return 3;
    return e == EDOM ? 0 : 10;
  });
  EXPECT_EQ(finishes(h, 20s), 0) << "10 = errno changed by fill_holes (EBADF from has_hole's probe)";
}

// ---------------------------------------------------------------------------------
// B. A hole at 2 that cannot be filled: the stripe lock's /proc read goes there
// ---------------------------------------------------------------------------------

// The cache was opened before the process closed fd 2 and entered a sandbox
// without /dev/null, memfd_create or epoll. A new thread's first set() reads
// /proc/thread-self/stat (its identity): stripe_lock.cpp ignores
// fill_holes()'s false and opens it anyway, at fd 2.
TEST(ForkAttack15, StripeLockNeverOpensAProcFileIntoAnUnfillableHole) {
#if defined(__SANITIZE_ADDRESS__)
  // UBSan's vptr check (built with ASan here) probes memory through a pipe
  // of its own, which lands at the hole at 2 and is closed there: the
  // filter's SIGSYS, from the sanitizer's runtime, not from the library.
  GTEST_SKIP() << "UBSan's IsAccessibleMemoryRange opens and closes fd 2";
#endif
  ScopedName n("fa15s");
  const pid_t h = spawn([&] {
    fill_0_and_1();
    Cache c = Cache::open(small_config(n.name));
    c.set("warm", "v");
    ::close(2);
    if (install(true, false) != 0) return 4;
    if (::open("/dev/null", O_RDWR) >= 0) return 5;
    int r = 0;
    std::thread t([&] {
      try {
        c.set("k", "v");
        r = 1;
      } catch (const std::exception&) {
        r = 2;
      }
    });
    t.join();
    return r != 0 ? 0 : 6;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << (st == kSigsys ? "SIGSYS: the library read or closed fd 2 (/proc/thread-self/stat opened "
                                       "into the hole at 2, fill_holes()'s false ignored)"
                                     : "");
}

// Control: the log's own /proc/thread-self/status read (SIGPIPE pending for
// the thread) is skipped when the hole cannot be filled.
TEST(ForkAttack15, ControlLogNeverOpensItsStatusFileIntoAnUnfillableHole) {
  const pid_t h = spawn([&] {
    fill_0_and_1();
    log::get().warn("fa15 warm-up");
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
    ::syscall(SYS_tgkill, ::getpid(), fork_park::gettid_(), SIGPIPE);
    ::close(2);
    if (install(true, false) != 0) return 4;
    errno = EDOM;
    log::get().warn("into an unfillable hole");
    return errno == EDOM ? 0 : 10;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0);
}

// ---------------------------------------------------------------------------------
// C. fcntl(F_GETFD) denied: has_hole() reads every failure as "no hole"
// ---------------------------------------------------------------------------------

// has_hole() counts a hole only when fcntl fails with EBADF; under a filter
// that answers EPERM it sees none, fills nothing, and attach's open lands at
// fd 2 (then above_stdio moves it: close(2)). /dev/null is there to be had.
TEST(ForkAttack15, FcntlDeniedTheSegmentIsNeverOpenedAtFd2) {
  ScopedName n("fa15f");
  { Cache made = Cache::open(small_config(n.name)); }
  const pid_t h = spawn([&] {
    fill_0_and_1();
    ::close(2);
    if (install(false, true) != 0) return 4;
    try {
      Cache c = Cache::open(small_config(n.name));
      c.set("k", "v");
    } catch (const std::exception&) {
      return 6;
    }
    return 0;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << (st == kSigsys ? "SIGSYS: the segment was opened at fd 2 (has_hole saw EPERM as 'no hole')"
                                     : "6 = the open failed");
}

// The same filter, the log path: a thread with SIGPIPE pending opens
// /proc/thread-self/status at fd 2, reads it and closes it.
TEST(ForkAttack15, FcntlDeniedTheLogsStatusFileIsNeverOpenedAtFd2) {
  const pid_t h = spawn([&] {
    fill_0_and_1();
    log::get().warn("fa15 warm-up");
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
    ::syscall(SYS_tgkill, ::getpid(), fork_park::gettid_(), SIGPIPE);
    ::close(2);
    if (install(false, true) != 0) return 4;
    log::get().warn("x");
    return 0;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << (st == kSigsys ? "SIGSYS: /proc/thread-self/status was opened at fd 2" : "");
}

// ---------------------------------------------------------------------------------
// D. A refused create leaves nothing behind (control)
// ---------------------------------------------------------------------------------

// Descriptors counted by probing (opendir would itself open into the hole).
int probe_fds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += ::fcntl(fd, F_GETFD) >= 0;
  return n;
}
int shm_entries_named(const std::string& name) {
  DIR* d = ::opendir("/dev/shm");
  int left = 0;
  while (dirent* e = ::readdir(d)) left += std::strstr(e->d_name, name.c_str()) != nullptr;
  ::closedir(d);
  return left;
}

TEST(ForkAttack15, ControlARefusedCreateLeavesNoTemporaryNoSegmentNoFd) {
  ScopedName n("fa15r");
  const pid_t h = spawn([&] {
    fill_0_and_1();
    ::close(2);
    if (install(true, false) != 0) return 4;
    const int before = probe_fds();
    int refused = 0;
    for (int i = 0; i < 50; ++i) {
      try {
        Cache c = Cache::open(small_config(n.name));
        return 10;  // opened with a hole at 2 nothing could fill
      } catch (const Error& e) {
        refused += e.code() == Errc::io_error;
      } catch (const std::exception&) {
      }
    }
    if (refused != 50) return 11;
    return probe_fds() != before ? 12 : 0;
  });
  const int st = finishes(h, 30s);
  if (st == 4) GTEST_SKIP() << "seccomp unavailable";
  EXPECT_EQ(st, 0) << "10 = opened anyway, 11 = not io_error, 12 = fd leaked";
  EXPECT_EQ(shm_entries_named(n.name), 0) << "a temporary or a segment left in /dev/shm";
}

// ---------------------------------------------------------------------------------
// E. More than 8 torn streams: "the oldest-named slot goes"
// ---------------------------------------------------------------------------------

// Runs this binary afresh (a fresh MAP_SHARED torn table: the gtest process's
// is shared by every test's children) on one Inner test.
int run_fresh(const char* test) {
  const pid_t p = ::fork();
  if (p == 0) {
    ::setenv("HC_FA15_INNER", "1", 1);
    const std::string filter = std::string("--gtest_filter=ForkAttack15Inner.") + test;
    ::execl("/proc/self/exe", "inner", filter.c_str(), (char*)nullptr);
    ::_exit(127);
  }
  return finishes(p, 60s);
}

struct Stream {
  int rd = -1, wr = -1;
  std::string got;
};
bool make_stream(Stream& s) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return false;
  ::fcntl(p[1], F_SETPIPE_SZ, 4096);
  if (::fcntl(p[1], F_GETPIPE_SZ) != 4096) return false;
  ::fcntl(p[1], F_SETFL, ::fcntl(p[1], F_GETFL) | O_NONBLOCK);
  s.rd = p[0];
  s.wr = p[1];
  return true;
}
void to(Stream& s) { ::dup2(s.wr, 2); }
void tear(Stream& s, char c) {
  to(s);
  log::get().warn("torn {}", std::string(6000, c));
  s.got += drain(s.rd);
}
bool whole(const std::string& all, const std::string& needle) {
  for (const auto& l : fork_park::lines_of(all)) {
    if (l.find(needle) == std::string::npos) continue;
    return l.rfind("[", 0) == 0 && l.find("[hostcache]") == l.rfind("[hostcache]");
  }
  return false;
}

// Streams S0..S7 torn (8 slots). S0's line is ended (its slot freed). S8
// torn (slot 0), then S9 torn: nine lines open at once, one record must go,
// and log.cpp says the oldest-named one (S1). mark_torn's fallback takes
// slot next % 8 with `next` counting only fallbacks: slot 0, S8's record,
// the newest. S8's next line is then glued to its fragment.
TEST(ForkAttack15Inner, NinthStream) {
  if (std::getenv("HC_FA15_INNER") == nullptr) GTEST_SKIP();
  const int saved2 = ::dup(2);
  Stream s[10];
  for (auto& x : s) ASSERT_TRUE(make_stream(x));
  for (int i = 0; i < 8; ++i) tear(s[i], char('a' + i));
  to(s[0]);
  log::get().warn("S0 ends");
  s[0].got += drain(s[0].rd);
  tear(s[8], 'i');
  tear(s[9], 'j');
  to(s[8]);
  log::get().warn("S8 next");
  s[8].got += drain(s[8].rd);
  to(s[1]);
  log::get().warn("S1 next");
  s[1].got += drain(s[1].rd);
  ::dup2(saved2, 2);
  EXPECT_TRUE(whole(s[0].got, "S0 ends"));
  EXPECT_EQ(s[8].got.substr(0, 4096).find('\n'), std::string::npos)
      << "the torn fragment of S8 holds no newline";
  EXPECT_TRUE(whole(s[8].got, "S8 next")) << "S8 (the newest torn line) lost its record to S9: ..."
                                          << s[8].got.substr(4080, 120);
}
TEST(ForkAttack15, NinthTornStreamDropsTheOldestRecordNotTheNewest) {
  EXPECT_EQ(run_fresh("NinthStream"), 0) << "see the Inner test's output above";
}

// Control: 8 streams torn at once, each one's record is kept and each next
// line starts whole.
TEST(ForkAttack15Inner, EightStreams) {
  if (std::getenv("HC_FA15_INNER") == nullptr) GTEST_SKIP();
  const int saved2 = ::dup(2);
  Stream s[8];
  for (auto& x : s) ASSERT_TRUE(make_stream(x));
  for (int i = 0; i < 8; ++i) tear(s[i], char('a' + i));
  for (int i = 7; i >= 0; --i) {
    to(s[i]);
    log::get().warn("next {}", i);
    s[i].got += drain(s[i].rd);
  }
  ::dup2(saved2, 2);
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(whole(s[i].got, "next " + std::to_string(i))) << i;
}
TEST(ForkAttack15, ControlEightTornStreamsAllKeepTheirRecords) { EXPECT_EQ(run_fresh("EightStreams"), 0); }

// ---------------------------------------------------------------------------------
// F. fork while another thread tears lines (control): no child waits
// ---------------------------------------------------------------------------------

TEST(ForkAttack15, ControlChildrenForkedWhileAThreadMarksTornLinesLog) {
  const pid_t h = spawn([] {
    Stream a;
    if (!make_stream(a)) return 20;
    to(a);
    std::atomic<bool> stop{false};
    std::thread t([&] {
      while (!stop.load()) {
        log::get().warn("t {}", std::string(6000, 't'));
        drain(a.rd);
      }
    });
    int bad = 0;
    for (int i = 0; i < 200 && !bad; ++i) {
      int p[2];
      if (::pipe(p) != 0) return 3;
      const pid_t c = ::fork();
      if (c == 0) {
        ::dup2(p[1], 2);
        log::get().warn("child {}", i);
        ::_exit(0);
      }
      ::close(p[1]);
      const int cs = finishes(c, 10s);
      std::string got = fork_park::drain(p[0]);
      ::close(p[0]);
      if (cs != 0) bad = 10;
      else if (!whole(got, "child " + std::to_string(i))) bad = 11;
    }
    stop = true;
    t.join();
    return bad;
  });
  const int st = finishes(h, 120s);
  if (st == 20) GTEST_SKIP() << "pipe size not settable";
  EXPECT_EQ(st, 0) << "10 = a child hung or died, 11 = its line was not whole";
}

}  // namespace
}  // namespace hostcache
