// hostcache-storm — the SIGKILL storm.
//
// N worker processes (writers and readers; every value embeds its key and a
// checksum) share one segment while a killer SIGKILLs a random worker every
// 1-20 ms and respawns it. Checked throughout: no operation blocks longer than
// 1 s (watchdog), zero corrupt reads, and every 100 kills the workers are
// paused, every stripe is made to recover, and the segment checker must find
// nothing. At the end, sentinel entries written before the storm and never
// touched again must have survived (>= 99.9%: only an entry being moved by a
// killed writer may be lost). Prints recovery latency percentiles. Exits 1 on
// any failure.
#include <hostcache/cache.h>
#include <hostcache/inspect.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "reliability_support.h"
#include "stripe.h"

namespace {

using namespace hostcache;
using Clock = std::chrono::steady_clock;

constexpr int kMaxWorkers = 64;
constexpr std::size_t kMaxLatencies = 1 << 16;

struct WorkerSlot {
  std::atomic<pid_t> pid;
  std::atomic<std::int64_t> op_start_ns;  // 0 when not inside an operation
  std::atomic<bool> paused;
};

struct Board {
  std::atomic<bool> stop;
  std::atomic<bool> pause;
  std::atomic<long> ops, hits, corrupt;
  std::atomic<std::size_t> latencies_n;
  std::uint32_t latencies_us[kMaxLatencies];
  WorkerSlot workers[kMaxWorkers];
};

Board* g_board = nullptr;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void record_recovery(std::uint64_t micros, bool) {
  std::size_t i = g_board->latencies_n.fetch_add(1);
  if (i < kMaxLatencies) g_board->latencies_us[i] = std::uint32_t(std::min<std::uint64_t>(micros, UINT32_MAX));
}

[[noreturn]] void worker(const std::string& name, int id, std::uint64_t seed) {
  Board& b = *g_board;
  WorkerSlot& me = b.workers[id];
  stripe::set_recovery_observer(record_recovery);
  Cache cache = Cache::attach(name);
  std::mt19937_64 rng(seed);
  std::string v;
  long ops = 0;
  while (!b.stop.load(std::memory_order_relaxed)) {
    if (b.pause.load(std::memory_order_acquire)) {
      me.paused.store(true);
      while (b.pause.load() && !b.stop.load()) std::this_thread::yield();
      me.paused.store(false);
      continue;
    }
    // Keys shared by all workers (contention) and the worker's own.
    const std::string key = (rng() % 2 ? "shared-" : "own" + std::to_string(id) + "-") + std::to_string(rng() % 400);
    const unsigned op = rng() % 100;
    me.op_start_ns.store(now_ns(), std::memory_order_relaxed);
    if (op < 60) {
      if (cache.get(key, v)) {
        b.hits.fetch_add(1, std::memory_order_relaxed);
        if (!testing::verify_value(key, v)) b.corrupt.fetch_add(1);
      }
    } else if (op < 92) {
      SetOptions o;
      if (op % 4 == 0) o.tags = {"storm.tag"};
      cache.set(key, testing::make_value(key, rng(), 32 + rng() % 1500), o);
    } else if (op < 99) {
      cache.erase(key);
    } else {
      cache.invalidate("storm.tag");
    }
    me.op_start_ns.store(0, std::memory_order_relaxed);
    if (++ops % 64 == 0) b.ops.fetch_add(64, std::memory_order_relaxed);
  }
  ::_exit(0);
}

pid_t start_worker(const std::string& name, int id, std::uint64_t seed) {
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) worker(name, id, seed);
  g_board->workers[id].pid.store(pid);
  return pid;
}

std::uint32_t percentile(std::vector<std::uint32_t> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, std::size_t(p * double(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hostcache-storm: SIGKILL workers at random while they use one segment, and check nothing is lost"};
  long kills = 500;
  int workers = 8;
  int sentinels = 2000;
  std::string capacity_mb = "16";
  std::uint64_t seed = 1;
  app.add_option("--kills", kills, "how many SIGKILLs")->check(CLI::PositiveNumber);
  app.add_option("--workers", workers, "worker processes")->check(CLI::Range(1, kMaxWorkers));
  app.add_option("--sentinels", sentinels, "entries written before the storm and checked at the end");
  app.add_option("--seed", seed, "random seed");
  app.footer("Example: hostcache-storm --kills 10000 --workers 8");
  CLI11_PARSE(app, argc, argv);

  const std::string name = testing::unique_name("storm");
  Config config = testing::small_config(name, 16u << 20, 16);
  Cache cache = Cache::open(config);
  g_board = new (testing::shared_memory(sizeof(Board))) Board{};
  stripe::set_recovery_observer(record_recovery);

  std::vector<std::string> sentinel_keys;
  for (int i = 0; i < sentinels; ++i) {
    sentinel_keys.push_back("sentinel-" + std::to_string(i));
    if (cache.set(sentinel_keys.back(), testing::make_value(sentinel_keys.back(), 7, 150)) != Errc::ok) return 1;
  }
  std::mt19937_64 rng(seed);
  for (int i = 0; i < workers; ++i) start_worker(name, i, rng());

  int failures = 0;
  auto fail = [&failures](const std::string& what) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  };
  std::int64_t max_op_ns = 0;
  auto watchdog = [&] {
    const std::int64_t now = now_ns();
    for (int i = 0; i < workers; ++i) {
      const std::int64_t start = g_board->workers[i].op_start_ns.load();
      if (start != 0) max_op_ns = std::max(max_op_ns, now - start);
    }
    if (max_op_ns > 1'000'000'000) fail("an operation blocked for more than 1 s");
  };
  // Pauses every worker between operations, repairs every stripe, checks.
  auto checkpoint = [&](long at) {
    g_board->pause.store(true);
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    for (int i = 0; i < workers; ++i) {
      while (!g_board->workers[i].paused.load()) {
        if (Clock::now() > deadline) {
          fail("worker " + std::to_string(i) + " did not pause within 5 s (blocked?)");
          break;
        }
        std::this_thread::yield();
      }
    }
    testing::touch_all_stripes(cache);
    const auto violations = inspect::check(name);
    if (!violations.empty()) fail("checker after " + std::to_string(at) + " kills:\n" + testing::describe(violations));
    g_board->pause.store(false);
  };

  const auto t0 = Clock::now();
  long done = 0;
  for (long k = 1; k <= kills && failures == 0; ++k, ++done) {
    std::this_thread::sleep_for(std::chrono::microseconds(1000 + rng() % 19000));  // the storm's pace
    watchdog();
    const int victim = int(rng() % workers);
    const pid_t pid = g_board->workers[victim].pid.load();
    g_board->workers[victim].paused.store(false);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    g_board->workers[victim].op_start_ns.store(0);
    start_worker(name, victim, rng());
    if (k % 100 == 0) {
      checkpoint(k);
      std::printf("  %ld kills, %ld ops, %ld verified hits, %ld corrupt\n", k, g_board->ops.load(),
                  g_board->hits.load(), g_board->corrupt.load());
      std::fflush(stdout);
    }
  }
  g_board->stop.store(true);
  for (int i = 0; i < workers; ++i) ::waitpid(g_board->workers[i].pid.load(), nullptr, 0);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  testing::touch_all_stripes(cache);
  const auto violations = inspect::check(name);
  if (!violations.empty()) fail("checker at the end:\n" + testing::describe(violations));
  int survived = 0;
  std::string v;
  for (const auto& k : sentinel_keys) survived += cache.get(k, v) && testing::verify_value(k, v);
  const double survival = sentinels ? 100.0 * survived / sentinels : 100.0;
  if (g_board->corrupt.load() != 0) fail(std::to_string(g_board->corrupt.load()) + " corrupt reads");
  if (survival < 99.9) fail("sentinel survival " + std::to_string(survival) + "% < 99.9%");

  const Stats s = cache.stats();
  std::vector<std::uint32_t> lat(g_board->latencies_us,
                                 g_board->latencies_us + std::min(g_board->latencies_n.load(), kMaxLatencies));
  std::printf(
      "storm: %ld kills of %d workers in %.1f s; %ld ops, %ld verified hits, %ld corrupt reads\n"
      "  recoveries %llu (resets %llu); recovery latency p50 %u us, p99 %u us, max %u us (%zu samples)\n"
      "  sentinels intact %d of %d (%.3f%%); longest operation in flight seen by the watchdog %.1f ms\n",
      done, workers, seconds, g_board->ops.load(), g_board->hits.load(), g_board->corrupt.load(),
      static_cast<unsigned long long>(s.recoveries), static_cast<unsigned long long>(s.resets), percentile(lat, 0.5),
      percentile(lat, 0.99), percentile(lat, 1.0), lat.size(), survived, sentinels, survival, max_op_ns / 1e6);
  std::printf("%s\n", failures == 0 ? "storm: PASS" : "storm: FAIL");
  Cache::remove(name);
  return failures == 0 ? 0 : 1;
}
