// fork_park.h — what the fork reviews (test_attack_fork8, 10 and 11)
// use to park a thread where the kernel shows it and to wait, bounded.
#pragma once

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

namespace hostcache::fork_park {

inline pid_t gettid_() { return pid_t(::syscall(SYS_gettid)); }

// The number of the system call thread `tid` of this process is blocked in
// (first field of /proc/self/task/TID/syscall), -1 if it is running or
// cannot be read.
inline long blocked_in(pid_t tid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/syscall", int(tid));
  std::ifstream f(path);
  std::string first;
  if (!(f >> first) || first == "running") return -1;
  char* end = nullptr;
  const long n = std::strtol(first.c_str(), &end, 10);
  return end != first.c_str() ? n : -1;
}

// Polls cond (yielding) for at most `guard`.
template <class F>
bool within(std::chrono::milliseconds guard, F cond) {
  const auto give_up = std::chrono::steady_clock::now() + guard;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    sched_yield();
  }
  return true;
}

// fd 2 a 4 KiB non-blocking pipe; returns its read end (-1: no pipe, -2:
// its size not settable).
inline int small_nonblocking_stderr() {
  int p[2];
  if (::pipe(p) != 0) return -1;
  ::fcntl(p[1], F_SETPIPE_SZ, 4096);
  if (::fcntl(p[1], F_GETPIPE_SZ) != 4096) return -2;
  ::fcntl(p[1], F_SETFL, ::fcntl(p[1], F_GETFL) | O_NONBLOCK);
  if (::dup2(p[1], 2) < 0) return -1;
  ::close(p[1]);
  return p[0];
}

// fd 2 made a full pipe: a log collector that stopped reading (a stalled
// journald/docker pipe), so the next write(2) to stderr blocks. Returns the
// read end (to drain it later), -1 on failure.
inline int make_stderr_a_full_pipe() {
  int p[2];
  if (::pipe(p) != 0) return -1;
  ::fcntl(p[1], F_SETPIPE_SZ, 4096);
  if (::dup2(p[1], 2) < 0) return -1;
  ::close(p[1]);
  const int fl = ::fcntl(2, F_GETFL);
  ::fcntl(2, F_SETFL, fl | O_NONBLOCK);
  char junk[4096];
  std::memset(junk, '.', sizeof junk);
  while (::write(2, junk, sizeof junk) > 0 || errno == EINTR) {
  }
  ::fcntl(2, F_SETFL, fl & ~O_NONBLOCK);
  return p[0];
}

// Reads whatever is in the pipe now (non-blocking), so a writer blocked on
// it can go on; returns what it read.
inline std::string drain(int rd) {
  const int fl = ::fcntl(rd, F_GETFL);
  if (!(fl & O_NONBLOCK)) ::fcntl(rd, F_SETFL, fl | O_NONBLOCK);
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t r = ::read(rd, buf, sizeof buf);
    if (r > 0) {
      out.append(buf, std::size_t(r));
    } else if (!(r < 0 && errno == EINTR)) {
      return out;
    }
  }
}

// Installs a seccomp filter on this thread (and those it makes after):
// 0, or -1 where seccomp is not available.
template <std::size_t N>
int install_seccomp(sock_filter (&f)[N]) {
  sock_fprog prog{static_cast<unsigned short>(N), f};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0 ? 0 : -1;
}

// The lines of s; a last one without its newline too.
inline std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at < s.size()) {
    const std::size_t nl = s.find('\n', at);
    if (nl == std::string::npos) {
      out.push_back(s.substr(at));
      break;
    }
    out.push_back(s.substr(at, nl - at));
    at = nl + 1;
  }
  return out;
}

// The log sink's prefix: "[YYYY-mm-ddTHH:MM:SS.eeeZ] [hostcache] [LEVEL] [pid N] ".
inline bool starts_like_a_line(const std::string& l) {
  static const std::regex re(
      R"(^\[-?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] \[hostcache\] \[[a-z]+\] \[pid \d+\] )");
  return std::regex_search(l, re);
}

}  // namespace hostcache::fork_park
