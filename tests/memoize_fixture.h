// memoize_fixture.h — what the memoize tests share: memory the forked
// children report through, conditions polled without sleeping as
// synchronisation, a hang guard for children, and a view of the flight slots.
#pragma once

#include <gtest/gtest.h>
#include <hostcache/memoize.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "cache_impl.h"
#include "flight.h"
#include "test_support.h"

namespace hostcache::memoize_testing {

using namespace std::chrono_literals;
using testing::ScopedName;
using testing::wait_for;

// What children report, in memory shared with them.
struct Shared {
  int computes;         // compute() calls, all processes
  int started;          // the first compute() has begun
  std::int64_t now_ms;  // a fake clock every process reads
  char results[32][64];
};

inline void raise(int& flag) { std::atomic_ref<int>(flag).store(1); }
inline int bump(int& field) { return std::atomic_ref<int>(field).fetch_add(1); }
inline int read(const int& field) { return std::atomic_ref<int>(const_cast<int&>(field)).load(); }

// Polls `cond` until it holds; false after a minute (a hang guard, not a timing claim).
inline bool eventually(const std::function<bool()>& cond) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The child's exit status (as wait_for), or -2 after killing it if it still
// runs after a minute (or `guard`): a protocol that hangs fails the test
// instead of hanging it. A process that waits for its own child gives it a
// shorter guard than its parent gives it, so that no hung grandchild outlives the test.
inline int finishes(pid_t pid, std::chrono::seconds guard = 60s) {
  const auto give_up = std::chrono::steady_clock::now() + guard;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > give_up) {
      ::kill(pid, SIGKILL);
      wait_for(pid);
      return -2;
    }
    std::this_thread::sleep_for(1ms);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

inline const layout::FlightSlot* flight_slots(const Cache& c) {
  return detail::Access::segment(c).flight_slots();
}
// As verified at attach: the live header may have been scribbled on.
inline std::uint32_t flight_count(const Cache& c) {
  return detail::Access::segment(c).geometry().flight_slots;
}
inline std::uint32_t sleeping_waiters(const Cache& c) {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    n += std::atomic_ref<std::uint32_t>(const_cast<std::uint32_t&>(flight_slots(c)[i].waiters))
             .load();
  }
  return n;
}
inline bool all_flights_free(const Cache& c) {
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    if (!flight::is_free(flight_slots(c)[i])) return false;
  }
  return true;
}
// The pid computing `key` now, 0 if nobody.
inline std::uint32_t flight_owner(const Cache& c, std::string_view key) {
  const std::uint64_t h = XXH3_64bits(key.data(), key.size());
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    flight::Owner o;
    if (flight::busy_owner(flight_slots(c)[i], o) && o.key_hash == h) return o.pid;
  }
  return 0;
}

inline std::optional<MethodStats> stats_of(const Cache& c, const std::string& method) {
  for (const MethodStats& m : method_stats(c)) {
    if (m.method == method) return m;
  }
  return std::nullopt;
}

class MemoizeTest : public ::testing::Test {
 protected:
  ScopedName name_{"memo"};
  Cache cache_ = Cache::open(testing::small_config(name_.name));
  Shared* shared_ = static_cast<Shared*>(testing::shared_memory(sizeof(Shared)));

  void set_result(int i, const std::string& v) {
    std::strncpy(shared_->results[i], v.c_str(), sizeof shared_->results[i] - 1);
  }
  std::string result(int i) const { return shared_->results[i]; }

  ~MemoizeTest() override { ::munmap(shared_, sizeof(Shared)); }

  ComputeOptions options(std::string_view method = {}) {
    ComputeOptions o;
    o.method = method;
    return o;
  }
};

}  // namespace hostcache::memoize_testing
