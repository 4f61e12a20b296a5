// fork_probe.h — what the fork-injection attack suites share
// (test_attack_perf4, test_attack_fork3 to test_attack_fork7): a monotonic
// clock, a bounded wait on a condition, an x86-64 debug-register watchpoint
// on a traced child, and a re-executed copy of the test binary for scenes
// that need a fresh process.
#pragma once

#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "test_support.h"

namespace hostcache::testing {

inline std::int64_t mono_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Yields until `cond` holds; false after `ms` (a bound, not a synchronization).
inline bool await(const std::function<bool()>& cond, std::int64_t ms = 5000) {
  const std::int64_t until = mono_ms() + ms;
  while (!cond()) {
    if (mono_ms() > until) return false;
    sched_yield();
  }
  return true;
}

// Debug register 7's RW field: trap on writes, or on reads and writes.
enum : long { kWatchWrites = 1, kWatchAccesses = 3 };

// Runs the stopped tracee `l` at full speed until its first access (`rw`) of
// the 8 bytes at `addr` (debug register 0: the trap comes right after the
// accessing instruction), then clears the watchpoint. False if debug
// registers cannot be set (then a caller may single-step instead).
inline bool run_to_access(pid_t l, const void* addr, long rw) {
#if defined(__x86_64__)
  const auto dr = [](int i) { return reinterpret_cast<void*>(offsetof(struct user, u_debugreg) + i * sizeof(long)); };
  if (::ptrace(PTRACE_POKEUSER, l, dr(0), const_cast<void*>(addr)) != 0) return false;
  const long dr7 = 1 | (rw << 16) | (3L << 18);  // L0 enabled, RW0 = rw, LEN0 = 8 bytes
  if (::ptrace(PTRACE_POKEUSER, l, dr(7), reinterpret_cast<void*>(dr7)) != 0) return false;
  if (::ptrace(PTRACE_CONT, l, nullptr, nullptr) != 0) return false;
  int status = 0;
  if (::waitpid(l, &status, 0) != l || !WIFSTOPPED(status) || WSTOPSIG(status) != SIGTRAP) return false;
  ::ptrace(PTRACE_POKEUSER, l, dr(7), nullptr);
  ::ptrace(PTRACE_POKEUSER, l, dr(6), nullptr);
  return true;
#else
  (void)l;
  (void)addr;
  (void)rw;
  return false;
#endif
}

// The child's exit status (128 + n if signal n killed it), or -2 after
// killing it once `ms` have passed: a hang bound. Traced children too (__WALL).
inline int finishes_within(pid_t pid, std::int64_t ms) {
  const std::int64_t until = mono_ms() + ms;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG | __WALL);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
    if (mono_ms() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, __WALL);
      return -2;
    }
    struct timespec ts{0, 1000000};
    ::nanosleep(&ts, nullptr);  // a poll interval, not an ordering
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

// Waits for the forking tracee `l` (become_forking_tracee) to stop for its
// tracer, then runs it to its first access of `addr` (run_to_access). ""
// when it stands there; else why the scene cannot be played on this machine
// (the caller skips; `l` is then reaped). A tracee that does not stop is a
// failure of the test.
inline std::string stop_tracee_at(pid_t l, const void* addr, long rw) {
  int status = 0;
  if (::waitpid(l, &status, 0) != l || !(WIFSTOPPED(status) || WIFEXITED(status))) {
    ADD_FAILURE() << "the tracee " << l << " neither stopped nor exited";
    return "no tracee";
  }
  if (WIFEXITED(status)) {
    if (WEXITSTATUS(status) != 97) ADD_FAILURE() << "the tracee exited " << WEXITSTATUS(status) << " before its stop";
    return "ptrace unavailable";
  }
  if (!run_to_access(l, addr, rw)) {
    ::kill(l, SIGKILL);
    ::waitpid(l, &status, 0);
    return "no x86-64 debug-register watchpoint available";
  }
  return "";
}

// What L (the parent, a locker that takes a dead owner's stripe over and
// repairs it) and G (its child, forked from L's signal handler inside the
// repair) report, in shared memory (test_attack_fork4, test_attack_fork5).
struct Late {
  std::atomic<int> g_pid, g_in_handler, g_go, g_timed_out, g_done, g_rc;
  std::atomic<int> l_done, l_rc, quit;
};
inline Late* g_late = nullptr;

// The fork: G waits in the handler ("scheduled late") until the test says
// go, then returns into the repair exactly where L was interrupted.
inline void late_forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    g_late->g_in_handler.store(1);
    if (!await([] { return g_late->g_go.load() != 0; }, 20000)) g_late->g_timed_out.store(1);
    errno = saved;
    return;
  }
  g_late->g_pid.store(c);
  errno = saved;
}

// In a child about to be traced: SIGUSR1 runs `handler` (which forks: the
// tracer delivers SIGUSR1 at the instruction it chose), then the child asks
// to be traced and stops for its tracer. Exits 97 if ptrace is refused.
inline void become_forking_tracee(void (*handler)(int)) {
  struct sigaction sa{};
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGUSR1, &sa, nullptr);
  if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(97);
  ::raise(SIGSTOP);
}

// This process's address-space size (VmSize), 0 if unknown.
inline std::uint64_t vm_size_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmSize:", 0) == 0) return std::strtoull(line.c_str() + 7, nullptr, 10) * 1024;
  }
  return 0;
}

// Runs the gtest `helper` (a DISABLED_ test of this binary that reads `env`)
// in a fresh process: this binary re-executed with env=value. Returns the
// helper's exit status as wait_for does; 96: the exec failed.
inline int run_exec_helper(const char* helper, const char* env, const std::string& value) {
  const pid_t p = ::fork();
  if (p == 0) {
    ::setenv(env, value.c_str(), 1);
    const std::string filter = std::string("--gtest_filter=") + helper;
    char arg0[] = "hostcache-test";
    char arg2[] = "--gtest_also_run_disabled_tests";
    char* argv[] = {arg0, const_cast<char*>(filter.c_str()), arg2, nullptr};
    ::execv("/proc/self/exe", argv);
    ::_exit(96);
  }
  return wait_for(p);
}

}  // namespace hostcache::testing
