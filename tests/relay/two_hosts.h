// two_hosts.h — what the relay's liveness attacks share
// (test_attack_relay_liveness to liveness4): a host (its
// segment and its relay process), what its status and log say, whether the
// relays have settled, and the staleness the contract allows.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "relay.h"
#include "relay_harness.h"

namespace hostcache::relay::two_hosts {

struct Host {
  std::string name;
  std::optional<Cache> cache;
  std::unique_ptr<harness::RelayProcess> relay;
  std::uint64_t global0 = 0;  // the global generation once settled: clears() counts from it
};

inline outbox::RelayStatus status(Host& h) { return outbox::relay_status(*h.cache); }
inline std::uint64_t clears(Host& h) { return h.cache->generations({}).global - h.global0; }
inline bool present(Host& h, const std::string& key) { return h.cache->get(key).has_value(); }
inline void set_on(Host& h, const std::string& key, const std::string& tag) {
  SetOptions o;
  o.tags = {tag};
  ASSERT_EQ(h.cache->set(key, "v", o), Errc::ok);
}

inline std::size_t count(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}
inline std::size_t count_in_log(Host& h, const std::string& needle) {
  return h.relay ? count(harness::read_file(h.relay->log()), needle) : 0;
}

// Every relay connected, its outbox published and the stream read to its end.
inline bool settled(int redis_port, const std::string& stream, const std::vector<Host*>& hosts,
                    std::chrono::milliseconds timeout) {
  harness::RedisClient rc(redis_port);
  return harness::await(
      [&] {
        const StreamId last = rc.last_generated(stream);
        if (last.zero()) return false;
        for (Host* h : hosts) {
          const auto s = status(*h);
          if (!s.connected || s.cursor != outbox::head(*h->cache) || StreamId{s.last_id_ms, s.last_id_seq} != last) {
            return false;
          }
        }
        return true;
      },
      timeout);
}

// A host's relay status and log counts, for failure messages.
inline std::string describe(Host& h) {
  if (!h.cache) return "(none)";
  const auto s = status(h);
  std::ostringstream o;
  o << "connected=" << s.connected << " stale_clears=" << s.stale_clears << " clears=" << clears(h)
    << " published=" << s.published << " cursor=" << s.cursor << " head=" << outbox::head(*h.cache)
    << " applied=" << s.applied << " resync_replay=" << s.resync_replay << " resync_lost=" << s.resync_lost
    << " proof_age_ms=" << (outbox::now_ms() - s.proven_ms)
    << " 'connection lost'=" << two_hosts::count_in_log(h, "connection lost")
    << " 'publish refused'=" << two_hosts::count_in_log(h, "publish refused");
  return o.str();
}

// A fixture's TearDown, the common part: terminates both hosts' relays and,
// when the test failed (or HCRELAY_TEST_LOGS is set), prints the tail of
// each relay's log; then drops the relays.
inline void stop_and_report(Host& a, Host& b, bool failed, std::size_t tail = 5000) {
  for (Host* h : {&a, &b}) {
    if (h->relay) h->relay->terminate();
  }
  if (failed || std::getenv("HCRELAY_TEST_LOGS")) {
    for (Host* h : {&a, &b}) {
      if (!h->relay) continue;
      std::string log = harness::read_file(h->relay->log());
      if (log.size() > tail) log = "[...]\n" + log.substr(log.size() - tail);
      std::cerr << "---- relay " << (h == &a ? "A" : "B") << " log (tail):\n" << log;
    }
  }
  a.relay.reset();
  b.relay.reset();
}

// The promise (docs/hostcache-relay.md): max(bound, 2 x block + 3 x timeout)
// + block + 2 x timeout, plus one timeout for a command in flight when it
// passes, plus scheduling slack.
inline std::chrono::milliseconds allowed(std::chrono::milliseconds bound, std::chrono::milliseconds block,
                                         std::chrono::milliseconds io, std::chrono::milliseconds slack) {
  return std::max(bound, 2 * block + 3 * io) + (block + 2 * io) + io + slack;
}

}  // namespace hostcache::relay::two_hosts
