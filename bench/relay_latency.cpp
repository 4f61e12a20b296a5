// relay_latency — how long an invalidation takes to cross hosts through
// hostcache-relay, and what the relay costs. Reported, not asserted.
//
// Starts its own redis-server on a free loopback port, two segments A and B
// with a relay process each, then:
//   1. latency: N times, set an entry tagged t<i> on B, invalidate(t<i>) on A,
//      and time from invalidate() returning to the entry being invisible on B
//      (B is polled with get() every --observe-us, sleeping between), after a random pause so
//      that the invalidations do not fall in step with the relay's outbox
//      polling: p50/p90/p99/p99.9/max;
//   2. idle cost: both relays' CPU over a few idle seconds;
//   3. load cost: invalidations paced at --rate per second on A for
//      --seconds, the CPU of relay A (publisher) and relay B (subscriber).
// CPU is utime + stime of each relay process (what getrusage reports for
// it), read from /proc over the window, and its total from wait4's rusage at
// the end. Prints a Markdown report.
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>

#include "relay_harness.h"

using namespace hostcache;
using namespace hostcache::relay;
using Clock = std::chrono::steady_clock;

namespace {

double pct(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const std::size_t i = std::min(v.size() - 1, std::size_t(p / 100.0 * double(v.size())));
  return v[i];
}

struct Usage {
  double user = 0, sys = 0;
};

Usage reap_usage(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  rusage ru{};
  ::wait4(pid, &status, 0, &ru);
  return {double(ru.ru_utime.tv_sec) + ru.ru_utime.tv_usec / 1e6, double(ru.ru_stime.tv_sec) + ru.ru_stime.tv_usec / 1e6};
}

}  // namespace

int main(int argc, char** argv) {
  int n = 10000, rate = 1000, seconds = 10, idle_seconds = 5, poll_us = 500, gap_us = 2000, nice = 0, observe_us = 50;
  CLI::App app{"relay_latency: invalidation latency between two hosts through hostcache-relay, and its CPU cost"};
  app.add_option("-n", n, "invalidations timed")->capture_default_str();
  app.add_option("--rate", rate, "invalidations per second in the CPU phase")->capture_default_str();
  app.add_option("--seconds", seconds, "length of the CPU phase")->capture_default_str();
  app.add_option("--idle-seconds", idle_seconds, "length of the idle phase")->capture_default_str();
  app.add_option("--poll-us", poll_us, "the relays' --poll-us")->capture_default_str();
  app.add_option("--gap-us", gap_us, "random pause (0..gap) before each timed invalidation, so that it does not "
                                     "fall in step with the relay's polling")
      ->capture_default_str();
  app.add_option("--observe-us", observe_us, "the observer's sleep between two get()s on B")->capture_default_str();
  app.add_option("--nice", nice, "nice value for the relays and redis-server (negative needs privilege)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // fine-grained sleeps for the observer
  harness::TempDir dir;
  harness::RedisServer redis(dir.path(), harness::free_port());
  redis.start();
  const std::string na = harness::unique_segment("benchA"), nb = harness::unique_segment("benchB");
  Config c;
  c.capacity_bytes = 16u << 20;
  c.name = na;
  Cache a = Cache::open(c);
  c.name = nb;
  Cache b = Cache::open(c);
  auto relay_args = [&](const std::string& name) {
    return std::vector<std::string>{HOSTCACHE_RELAY_BIN, name, "--redis", "127.0.0.1:" + std::to_string(redis.port()),
                                    "--stream", "bench:stream", "--poll-us", std::to_string(poll_us)};
  };
  const pid_t ra = harness::spawn_process(relay_args(na), dir.path() + "/relayA.log");
  const pid_t rb = harness::spawn_process(relay_args(nb), dir.path() + "/relayB.log");
  if (nice != 0) {
    for (pid_t p : {ra, rb, redis.pid()}) ::setpriority(PRIO_PROCESS, id_t(p), nice);
  }
  if (!harness::await([&] { return outbox::relay_status(a).connected && outbox::relay_status(b).connected; })) {
    std::cerr << "relays did not connect\n" << harness::read_file(dir.path() + "/relayA.log");
    return 1;
  }
  auto cpu = [](pid_t pid) {
    const std::string stat = harness::read_file("/proc/" + std::to_string(pid) + "/stat");
    std::istringstream in(stat.substr(stat.rfind(')') + 2));
    std::string f;
    unsigned long long ut = 0, st = 0;
    for (int i = 3; i <= 15 && in >> f; ++i) {
      if (i == 14) ut = std::stoull(f);
      if (i == 15) st = std::stoull(f);
    }
    return double(ut + st) / double(::sysconf(_SC_CLK_TCK));
  };

  // 1. latency
  std::vector<double> us;
  us.reserve(std::size_t(n));
  SetOptions o;
  std::string value(64, 'v');
  int timeouts = 0;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> gap(0, std::max(0, gap_us));
  for (int i = 0; i < n; ++i) {
    if (gap_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(gap(rng)));
    const std::string tag = "t" + std::to_string(i), key = "k" + std::to_string(i);
    o.tags = {tag};
    b.set(key, value, o);
    a.invalidate(tag);
    const auto t0 = Clock::now();
    for (;;) {
      if (!b.get(key)) break;
      if (Clock::now() - t0 > std::chrono::seconds(2)) {
        ++timeouts;
        break;
      }
      // Sleep, not spin: on a 2-core VM a spinning observer would take a
      // core from the relays and Redis it is measuring.
      std::this_thread::sleep_for(std::chrono::microseconds(observe_us));
    }
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double x : us) sum += x;

  // 2. idle
  double ia = cpu(ra), ib = cpu(rb);
  std::this_thread::sleep_for(std::chrono::seconds(idle_seconds));
  const double idle_a = (cpu(ra) - ia) / idle_seconds, idle_b = (cpu(rb) - ib) / idle_seconds;

  // 3. paced load
  const std::uint64_t applied0 = outbox::relay_status(b).applied;
  const double la = cpu(ra), lb = cpu(rb);
  const auto start = Clock::now();
  const auto period = std::chrono::nanoseconds(1000000000LL / rate);
  const long total = long(rate) * seconds;
  for (long i = 0; i < total; ++i) {
    std::this_thread::sleep_until(start + period * i);
    a.invalidate("load" + std::to_string(i % 1000));
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const double load_a = (cpu(ra) - la) / wall, load_b = (cpu(rb) - lb) / wall;
  harness::await([&] { return outbox::relay_status(b).applied - applied0 >= std::uint64_t(total); },
                 std::chrono::seconds(10));
  const std::uint64_t delivered = outbox::relay_status(b).applied - applied0;
  const auto sa = outbox::relay_status(a), sb = outbox::relay_status(b);

  const Usage ua = reap_usage(ra), ub = reap_usage(rb);
  redis.stop();
  Cache::remove(na);
  Cache::remove(nb);

  double load[3] = {0, 0, 0};
  ::getloadavg(load, 3);
  std::printf("Relays with --poll-us %d, nice %d; observer sleeps %d us; load average at the end %.2f %.2f %.2f.\n\n",
              poll_us, nice, observe_us, load[0], load[1], load[2]);
  std::printf("## Latency: invalidate() on A returning -> entry invisible on B (%d invalidations)\n\n", n);
  std::printf("| p50 | p90 | p99 | p99.9 | max | mean | > 2 s |\n|---|---|---|---|---|---|---|\n");
  std::printf("| %.0f us | %.0f us | %.0f us | %.0f us | %.0f us | %.0f us | %d |\n\n", pct(us, 50), pct(us, 90),
              pct(us, 99), pct(us, 99.9), us.empty() ? 0 : us.back(), us.empty() ? 0 : sum / double(us.size()),
              timeouts);
  std::printf("## Relay CPU (utime + stime, fraction of one core)\n\n");
  std::printf("| phase | relay A (publishes) | relay B (applies) |\n|---|---|---|\n");
  std::printf("| idle, %d s | %.2f %% | %.2f %% |\n", idle_seconds, idle_a * 100, idle_b * 100);
  std::printf("| %d invalidations/s on A, %.1f s | %.2f %% | %.2f %% |\n", rate, wall, load_a * 100, load_b * 100);
  std::printf("\nDelivered in the load phase: %llu of %ld (B's applied counter).\n",
              (unsigned long long)delivered, total);
  std::printf("Whole run, wait4 rusage: relay A user %.2f s sys %.2f s; relay B user %.2f s sys %.2f s.\n", ua.user,
              ua.sys, ub.user, ub.sys);
  std::printf("Relay A: published %llu, overflow clears %llu; relay B: applied %llu, lag_ms %lld.\n",
              (unsigned long long)sa.published, (unsigned long long)sa.overflow_clears,
              (unsigned long long)sb.applied, (long long)sb.lag_ms);
  return 0;
}
