// test_support.h — helpers every hostcache test shares.
//
// Unique segment names (removed at scope exit), fork-and-wait with real
// processes, a fake clock, and shared anonymous memory for counting across
// forked children.
#pragma once

#include <hostcache/cache.h>
#include <sched.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hostcache::testing {

// A fresh segment name, unique across processes and runs.
std::string unique_name(const std::string& stem = "t");

// Removes the segment (and its name) when the scope ends.
struct ScopedName {
  explicit ScopedName(const std::string& stem = "t") : name(unique_name(stem)) {}
  ~ScopedName() { Cache::remove(name); }
  std::string name;
};

// A small cache config for tests.
Config small_config(const std::string& name, std::size_t capacity = 4u << 20, unsigned stripes = 0);

// Forks a child that runs fn() and _exits with its return value (exceptions: 99).
pid_t spawn(const std::function<int()>& fn);
// Waits for pid; returns its exit status, or 128 + signal if it was killed.
int wait_for(pid_t pid);
// Forks n children running fn(i) and waits for all; returns their statuses.
std::vector<int> run_children(int n, const std::function<int(int)>& fn);

// Anonymous memory shared with forked children (MAP_SHARED), zero-filled.
void* shared_memory(std::size_t bytes);

// While alive, the library's clock reads `now_ms` (advance it with advance()).
class FakeClock {
 public:
  explicit FakeClock(std::int64_t start_ms = 1'000'000);
  ~FakeClock();
  void advance(std::int64_t ms);
  std::int64_t now() const;

 private:
  std::int64_t* now_;
};

// A value that embeds its key and a checksum: verify() tells if a read is
// exactly what some writer wrote for that key.
std::string make_value(const std::string& key, std::uint64_t version, std::size_t size);
bool verify_value(const std::string& key, const std::string& value);

// A pipe used to make a child wait until the parent says go (no sleeps).
struct Gate {
  Gate();
  ~Gate();
  void open();  // parent: release everyone waiting
  void wait();  // child: block until opened (closes the child's write end)
  int fds[2];
};

// A child that rewrites `key` of segment `name` (64 bytes, changing) until
// *quit is set or its parent is gone, counting its sets in *sets; exits 1 if
// a set fails. Readers of the key's stripe then retry (tests of the retry path).
pid_t spawn_rewriter(const std::string& name, const std::string& key, std::atomic<std::uint64_t>* sets,
                     const std::atomic<std::uint64_t>* quit);

// Waits (yielding, no sleep) until every writer has counted `n` sets. False
// as soon as one of them has exited instead (peeked at, not reaped), so a
// writer that crashed fails the test rather than hanging it.
inline bool await_progress(const std::atomic<std::uint64_t>* sets,
                           const std::vector<pid_t>& writers, std::uint64_t n) {
  for (;;) {
    bool all = true;
    for (std::size_t w = 0; w < writers.size(); ++w) all = all && sets[w].load() >= n;
    if (all) return true;
    for (pid_t p : writers) {
      siginfo_t info{};
      if (::waitid(P_PID, id_t(p), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == p) {
        return false;
      }
    }
    sched_yield();
  }
}

}  // namespace hostcache::testing
