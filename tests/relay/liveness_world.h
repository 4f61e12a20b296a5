// liveness_world.h — the fixture of the relay's later liveness attacks
// (test_attack_relay_liveness3, test_attack_relay_liveness4): a real
// redis-server, host B (its relay straight to Redis, through the hostile
// proxy, through the flood proxy, or to a replica) and host A (straight to
// Redis), each with its own segment; what is left running is stopped, and
// the relays' logs printed on a failure.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hostile_proxy.h"
#include "relay.h"
#include "relay_harness.h"
#include "two_hosts.h"

namespace hostcache::relay::two_hosts {

using LivenessClock = std::chrono::steady_clock;

inline double ms_since(LivenessClock::time_point t) {
  return std::chrono::duration<double, std::milli>(LivenessClock::now() - t).count();
}

// A field of /proc/PID/status in KiB ("VmRSS:"), -1 when absent.
inline long proc_kib(pid_t pid, const char* field) {
  const std::string s = harness::read_file("/proc/" + std::to_string(pid) + "/status");
  const std::size_t p = s.find(field);
  return p == std::string::npos ? -1 : std::atol(s.c_str() + p + std::strlen(field));
}

inline std::int64_t wall_now() { return outbox::now_ms(); }
inline void sleep_until_wall(std::int64_t ms) {
  const std::int64_t d = ms - wall_now();
  if (d > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d));
}

struct World {
  double stale_bound_s = 1;
  int block_ms = 200;
  int io_ms = 400;
  bool with_a = true;
  enum class Via { direct, hostile, flood } b_via = Via::direct;
  std::chrono::milliseconds delay{0};
  std::vector<std::string> extra_args{};  // appended to every relay's arguments
  int b_port_override = 0;                // B's relay connects here (a replica) when set
};

class LivenessWorld : public ::testing::Test {
 protected:
  static constexpr std::chrono::milliseconds kSlack{1000};

  // `stream`: the relays' stream key; `label`: the segments' names start with it.
  LivenessWorld(std::string stream, std::string label) : stream_(std::move(stream)), label_(std::move(label)) {}

  void SetUp() override {
    if (std::string(HOSTCACHE_REDIS_SERVER).empty() || ::access(HOSTCACHE_REDIS_SERVER, X_OK) != 0) {
      GTEST_SKIP() << "redis-server not found";
    }
  }
  void TearDown() override {
    if (redis_ && redis_->pid() > 0) ::kill(redis_->pid(), SIGCONT);
    for (auto& x : extra_) x->terminate();
    for (Host* h : {&a_, &b_}) {
      if (h->relay) {
        if (h->relay->pid() > 0) ::kill(h->relay->pid(), SIGCONT);  // pid() is -1 once it ended: kill(-1) signals every process
        h->relay->terminate();
      }
    }
    if (HasFailure() || std::getenv("HCRELAY_TEST_LOGS")) {
      for (Host* h : {&a_, &b_}) {
        if (h->relay) {
          std::string log = harness::read_file(h->relay->log());
          if (log.size() > 4000) log = "[...]\n" + log.substr(log.size() - 4000);
          std::cerr << "---- relay " << (h == &a_ ? "A" : "B") << " log (tail):\n" << log;
        }
      }
    }
    extra_.clear();
    a_.relay.reset();
    b_.relay.reset();
    proxy_.reset();
    flood_.reset();
    redis_.reset();
    for (const auto& n : names_) Cache::remove(n);
  }

  // A relay's arguments for host h on `port`, the world's extra arguments last.
  std::vector<std::string> relay_args(const Host& h, int port) {
    std::ostringstream bound;
    bound << setup_.stale_bound_s;
    std::vector<std::string> v{h.name,           "--redis",
                               "127.0.0.1:" + std::to_string(port), "--stream",
                               stream_,          "--stale-bound",
                               bound.str(),      "--block-ms",
                               std::to_string(setup_.block_ms), "--timeout-ms",
                               std::to_string(setup_.io_ms),    "--reconnect-max-ms",
                               "200"};
    v.insert(v.end(), setup_.extra_args.begin(), setup_.extra_args.end());
    return v;
  }
  void open_host(Host& h, const std::string& label) {
    h.name = harness::unique_segment(label_ + label);
    names_.push_back(h.name);
    Config c;
    c.name = h.name;
    c.capacity_bytes = 8u << 20;
    h.cache.emplace(Cache::open(c));
  }
  int b_port() const {
    if (setup_.b_port_override) return setup_.b_port_override;
    switch (setup_.b_via) {
      case World::Via::hostile: return proxy_->port();
      case World::Via::flood: return flood_->port();
      default: return redis_->port();
    }
  }
  void start_b(const std::string& log_suffix = "") {
    b_.relay = std::make_unique<harness::RelayProcess>(relay_args(b_, b_port()),
                                                       dir_.path() + "/relay-B" + log_suffix + ".log");
    b_.relay->start();
  }
  // A's relay, straight to Redis.
  void start_a(const std::string& log_suffix = "") {
    a_.relay = std::make_unique<harness::RelayProcess>(relay_args(a_, redis_->port()),
                                                       dir_.path() + "/relay-A" + log_suffix + ".log");
    a_.relay->start();
  }
  // The relay's bound S and grace G for this world (docs/hostcache-relay.md).
  std::chrono::milliseconds S() const {
    return std::max(std::chrono::milliseconds(std::int64_t(setup_.stale_bound_s * 1000)),
                    2 * std::chrono::milliseconds(setup_.block_ms) + 3 * std::chrono::milliseconds(setup_.io_ms));
  }
  std::chrono::milliseconds G() const {
    return std::chrono::milliseconds(setup_.block_ms) + 2 * std::chrono::milliseconds(setup_.io_ms);
  }
  // Redis, B (but for a flood world, whose B the test starts), A when the
  // world has one, settled unless told not to; each host's global generation
  // noted, for clears().
  void start(const World& s, bool settle = true) {
    setup_ = s;
    redis_ = std::make_unique<harness::RedisServer>(dir_.path(), harness::free_port());
    redis_->start();
    if (s.b_via == World::Via::hostile) proxy_ = std::make_unique<HostileProxy>(redis_->port(), ProxyTimes{.delay = s.delay});
    if (s.b_via == World::Via::flood) flood_ = std::make_unique<ArrayFloodProxy>(redis_->port());
    open_host(b_, "B");
    if (s.b_via != World::Via::flood) start_b();
    if (s.with_a) {
      open_host(a_, "A");
      start_a();
    }
    if (settle) {
      std::vector<Host*> hs;
      for (Host* h : hosts()) {
        if (h->relay) hs.push_back(h);
      }
      ASSERT_TRUE(two_hosts::settled(redis_->port(), stream_, hs, std::chrono::seconds(10)))
          << "not settled; B: " << describe(b_);
    }
    for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  }
  std::vector<Host*> hosts() {
    std::vector<Host*> v{&b_};
    if (a_.cache) v.push_back(&a_);
    return v;
  }
  bool settled(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    return two_hosts::settled(redis_->port(), stream_, hosts(), timeout);
  }
  // S + G (+ one timeout): how long a host may serve what another invalidated.
  std::chrono::milliseconds allowed() const {
    return two_hosts::allowed(std::chrono::milliseconds(std::int64_t(setup_.stale_bound_s * 1000)),
                              std::chrono::milliseconds(setup_.block_ms), std::chrono::milliseconds(setup_.io_ms),
                              kSlack);
  }
  std::string describe(Host& h) { return two_hosts::describe(h); }

  const std::string stream_;
  const std::string label_;
  World setup_;
  harness::TempDir dir_;
  std::unique_ptr<harness::RedisServer> redis_;
  std::unique_ptr<HostileProxy> proxy_;
  std::unique_ptr<ArrayFloodProxy> flood_;
  Host a_, b_;
  std::vector<std::unique_ptr<harness::RelayProcess>> extra_;
  std::vector<std::string> names_;
};

}  // namespace hostcache::relay::two_hosts
