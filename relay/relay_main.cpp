// hostcache-relay — carries one host's invalidations to the other hosts
// through a Redis Stream, and theirs to it. A thin main over relay.h; see
// docs/hostcache-relay.md.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>

#include "relay.h"

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) { g_stop.store(true); }

std::chrono::milliseconds seconds_to_ms(double s) {
  return std::chrono::milliseconds(static_cast<long long>(s * 1000.0 + 0.5));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hostcache;
  relay::Options o;
  std::string endpoint = "127.0.0.1:6379";
  double stale_bound_s = 30.0;
  long long block_ms = 1000, timeout_ms = 2000, poll_us = 500, reconnect_max_ms = 1000, pending_ms = 100;
  std::string password_file;
  bool force = false, allow_foreign = false;
  double wait_s = 0.0;

  CLI::App app{
      "hostcache-relay: carries the segment's local clear/invalidate events to a Redis Stream and applies the "
      "other hosts' events here (one relay per host and segment)."};
  app.add_option("name", o.segment, "segment name (as given to Cache::open)")->required();
  app.add_option("--redis", endpoint, "Redis endpoint HOST:PORT ([v6]:PORT)")->capture_default_str();
  app.add_option("--stream", o.stream, "stream key (also KEY:epochs and KEY:nonce; every host must use the same)")
      ->capture_default_str();
  app.add_option("--maxlen", o.maxlen, "XADD MAXLEN ~ N (every host must use the same)")
      ->capture_default_str()
      ->check(CLI::Range(std::uint64_t(1), std::uint64_t(1) << 40));
  app.add_option("--stale-bound", stale_bound_s,
                 "seconds Redis may be unreachable before the local cache is cleared (again each bound); 0: clear "
                 "as soon as the connection drops")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--block-ms", block_ms, "XREAD BLOCK timeout = heartbeat period")
      ->capture_default_str()
      ->check(CLI::Range(10LL, 60000LL));
  app.add_option("--timeout-ms", timeout_ms, "socket timeout; a reply later than this marks the link dead")
      ->capture_default_str()
      ->check(CLI::Range(10LL, 600000LL));
  app.add_option("--poll-us", poll_us, "how often the outbox is looked at (microseconds)")
      ->capture_default_str()
      ->check(CLI::Range(50LL, 1000000LL));
  app.add_option("--pending-ms", pending_ms, "an outbox slot stuck this long becomes a global clear")
      ->capture_default_str()
      ->check(CLI::Range(1LL, 60000LL));
  app.add_option("--reconnect-max-ms", reconnect_max_ms, "longest wait between reconnection attempts")
      ->capture_default_str()
      ->check(CLI::Range(10LL, 600000LL));
  app.add_option("--password-file", password_file, "file holding the Redis password (AUTH); or REDISCLI_AUTH");
  app.add_option("--wait", wait_s, "seconds to wait for the segment to appear (0: fail at once)")
      ->capture_default_str();
  app.add_flag("--force", force, "start even if the segment records another live relay");
  app.add_flag("--allow-foreign", allow_foreign, "attach to a segment owned by another user");
  CLI11_PARSE(app, argc, argv);

  if (!relay::parse_endpoint(endpoint, o.redis_host, o.redis_port)) {
    std::cerr << "hostcache-relay: --redis wants HOST:PORT, got '" << endpoint << "'\n";
    return 2;
  }
  o.stale_bound = seconds_to_ms(stale_bound_s);
  o.block = std::chrono::milliseconds(block_ms);
  o.io_timeout = std::chrono::milliseconds(timeout_ms);
  o.connect_timeout = std::min(o.io_timeout, std::chrono::milliseconds(1000));
  o.poll_interval = std::chrono::microseconds(poll_us);
  o.pending_timeout = std::chrono::milliseconds(pending_ms);
  o.reconnect_max = std::chrono::milliseconds(reconnect_max_ms);
  o.reconnect_min = std::min(o.reconnect_min, o.reconnect_max);
  if (!password_file.empty()) {
    std::ifstream in(password_file);
    if (!in || !std::getline(in, o.password)) {
      std::cerr << "hostcache-relay: cannot read " << password_file << "\n";
      return 2;
    }
  } else if (const char* p = std::getenv("REDISCLI_AUTH")) {
    o.password = p;
  }

  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a peer that went away is an error return, not a death

  std::optional<Cache> cache;
  const auto give_up = std::chrono::steady_clock::now() + seconds_to_ms(wait_s);
  for (;;) {
    try {
      cache.emplace(Cache::attach(o.segment, allow_foreign));
      break;
    } catch (const Error& e) {
      if (e.code() != Errc::not_found || std::chrono::steady_clock::now() >= give_up || g_stop.load()) {
        std::cerr << "hostcache-relay: " << e.what() << "\n";
        return e.code() == Errc::not_found ? 3 : 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  const outbox::RelayStatus prior = outbox::relay_status(*cache);
  if (!force && prior.pid != 0 && prior.pid != std::uint32_t(::getpid()) &&
      (::kill(pid_t(prior.pid), 0) == 0 || errno == EPERM) &&
      outbox::now_ms() - prior.heartbeat_ms < 10000) {
    std::cerr << "hostcache-relay: segment '" << o.segment << "' already has a live relay (pid " << prior.pid
              << "); one relay per segment (--force to override)\n";
    return 4;
  }

  relay::Relay r(*cache, o);
  return r.run(g_stop);
}
