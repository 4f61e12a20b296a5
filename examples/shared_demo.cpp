// shared_demo — several processes share one cache; one clears it while the
// others watch.
//
// The parent creates a segment and forks three workers. Each worker memoizes
// an "expensive" computation in the cache and reports whether it was served
// from the cache (hit) or computed (miss). The parent then clears the cache:
// every worker's next read misses at once, with no message sent to them.
#include <hostcache/cache.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <sys/mman.h>
#include <thread>

namespace {

struct Board {                // shared with the workers, to pace the demo
  std::atomic<int> round;     // the parent bumps it; workers do one read per round
  std::atomic<int> done;      // workers that finished the round
};

std::string compute(int worker, int round) {
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the "50 ms extraction"
  return "metadata computed by worker " + std::to_string(worker) + " in round " + std::to_string(round);
}

void worker(int id, const std::string& name, Board* board) {
  hostcache::Cache cache = hostcache::Cache::attach(name);
  int seen = 0;
  for (;;) {
    int round;
    while ((round = board->round.load()) == seen) std::this_thread::yield();
    if (round < 0) return;
    seen = round;
    std::string value;
    const auto t0 = std::chrono::steady_clock::now();
    bool hit = cache.get("metadata_product", value);
    if (!hit) {
      value = compute(id, round);
      cache.set("metadata_product", value);
    }
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    std::printf("  worker %d (pid %d): %-4s %7lld us  -> \"%s\"\n", id, int(::getpid()), hit ? "hit" : "miss",
                static_cast<long long>(us.count()), value.c_str());
    std::fflush(stdout);
    board->done.fetch_add(1);
  }
}

}  // namespace

int main() {
  const std::string name = "demo-" + std::to_string(::getpid());
  hostcache::Config config;
  config.name = name;
  config.capacity_bytes = 8u << 20;
  hostcache::Cache cache = hostcache::Cache::open(config);
  auto* board = new (::mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0))
      Board{};
  std::printf("segment /dev/shm/hostcache.%s: %zu bytes, shared by 3 worker processes\n", name.c_str(),
              config.capacity_bytes);
  std::fflush(stdout);  // before fork, or the children print it again
  const int workers = 3;
  pid_t pids[workers];
  for (int i = 0; i < workers; ++i) {
    if ((pids[i] = ::fork()) == 0) {
      worker(i + 1, name, board);
      ::_exit(0);
    }
  }
  auto run_round = [&](int round, const char* what) {
    std::printf("\nround %d: %s\n", round, what);
    std::fflush(stdout);
    board->done.store(0);
    board->round.store(round);
    while (board->done.load() < workers) std::this_thread::yield();
  };
  run_round(1, "one worker computes, the others may race it");
  run_round(2, "everyone reads the shared value");
  std::printf("\nparent: clear() -- one atomic increment, no message to anyone\n");
  cache.clear();
  run_round(3, "the first read after the clear misses in every process");
  run_round(4, "and the recomputed value is shared again");
  board->round.store(-1);
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  const hostcache::Stats s = cache.stats();
  std::printf("\nstats over all processes: gets %llu, hits %llu, misses %llu, hit ratio %.2f, sets %llu\n",
              static_cast<unsigned long long>(s.gets), static_cast<unsigned long long>(s.hits),
              static_cast<unsigned long long>(s.misses), s.hit_ratio(), static_cast<unsigned long long>(s.sets));
  hostcache::Cache::remove(name);
  return 0;
}
