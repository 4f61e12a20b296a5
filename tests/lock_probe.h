// lock_probe.h — what the stripe lock's adversarial tests share
// (test_attack_core, test_attack_lock2..4): a stripe's header and its lock
// word, a one-byte pipe, a task's start time as /proc shows it, and a full
// descriptor table.
#pragma once

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <cstdint>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "cache_impl.h"
#include "layout.h"
#include "segment.h"

namespace hostcache::testing {

inline layout::StripeHeader& header_of(const Cache& cache, std::uint32_t i) {
  return *reinterpret_cast<layout::StripeHeader*>(detail::Access::segment(cache).stripe_base(i));
}

// A one-byte message through a pipe (the tests' synchronisation).
struct Pipe {
  int fd[2] = {-1, -1};
  Pipe() {
    if (::pipe2(fd, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  }
  ~Pipe() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  void send() {
    char c = 1;
    if (::write(fd[1], &c, 1) != 1) ::_exit(97);
  }
  void close_write() {
    if (fd[1] >= 0) ::close(fd[1]);
    fd[1] = -1;
  }
  bool recv() {
    char c;
    ssize_t n;
    while ((n = ::read(fd[0], &c, 1)) < 0 && errno == EINTR) {
    }
    return n == 1;
  }
};

// Start time (clock ticks since boot, field 22) of a task, as this process sees it.
inline std::uint64_t start_ticks(pid_t tid) {
  std::ifstream f("/proc/" + std::to_string(tid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto p = s.rfind(')');
  if (p == std::string::npos) return 0;
  std::istringstream in(s.substr(p + 2));
  std::string field;
  for (int i = 3; i <= 22 && (in >> field); ++i) {
    if (i == 22) return std::stoull(field);
  }
  return 0;
}

// The boot clock in the same ticks (USER_HZ 100).
inline std::int64_t boot_ticks_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_BOOTTIME, &ts);
  return std::int64_t(ts.tv_sec) * 100 + ts.tv_nsec / 10'000'000;
}

// The stripe's lock word, for tests that forge or read it.
inline std::atomic_ref<std::uint64_t> word_ref(layout::StripeHeader& h) { return std::atomic_ref<std::uint64_t>(h.lock); }

// Fills this process's descriptor table (soft RLIMIT_NOFILE lowered to 64),
// as a worker leaking descriptors, or one under load, has it. Returns the
// first descriptor it took, so that the table can be emptied again.
inline int fill_fd_table() {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = 64;
  ::setrlimit(RLIMIT_NOFILE, &r);
  const int first = ::dup(2);
  for (int i = 0; i < 100000 && ::dup(2) >= 0; ++i) {
  }
  return first;
}

}  // namespace hostcache::testing
