// Adversarial tests of the relay's staleness and liveness logic as changed in
// commit 21e9ab2 ("only a whole reply proves a host current, as of when its
// XREAD was sent; a replay resync proves nothing; every command has one
// deadline; a connected relay whose proof is older than the bound asks for a
// fresh one"), with real processes: a real redis-server, hostcache-relay
// processes, SIGSTOP/SIGCONT, kill -9, and a hostile TCP proxy in a forked
// child driven through a pipe (every switch acknowledged).
//
// The contract (docs/hostcache-relay.md, "Bounded staleness"): no host serves
// an entry another host invalidated more than one bound + one heartbeat + one
// timeout ago (plus scheduling slack); a relay never clears needlessly when
// Redis and the link are fine (after a pause past the bound, during a
// catch-up included).
//
// Waits are on conditions (bounded); the only sleeps are outages and pauses.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <iostream>
#include <sstream>

#include "relay.h"
#include "relay_harness.h"
#include "hostile_proxy.h"
#include "two_hosts.h"

namespace hostcache::relay {
namespace {

using namespace std::chrono_literals;
using harness::RedisClient;
using harness::RedisServer;
using harness::RelayProcess;
using harness::Reply;
using Clock = std::chrono::steady_clock;

const std::string kStream = "hc:live2";
constexpr auto kSlack = 1000ms;  // scheduling, reconnect attempts in flight

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// ---- a hostile proxy in a child process ----------------------------------------------

using two_hosts::HostileProxy;
using two_hosts::Mode;

// ---- two hosts: A straight to Redis (or played by the test), B through the proxy or straight ----

struct World {
  double stale_bound_s = 1;
  int block_ms = 200;
  int io_ms = 400;
  bool with_a = true;
  bool b_via_proxy = false;
  std::chrono::milliseconds delay{0};
  std::vector<std::string> redis_extra;
  std::vector<std::string> b_extra;
};

using two_hosts::Host;

class LivenessAttack2 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(HOSTCACHE_REDIS_SERVER).empty() || ::access(HOSTCACHE_REDIS_SERVER, X_OK) != 0) {
      GTEST_SKIP() << "redis-server not found";
    }
  }
  void TearDown() override {
    for (pid_t p : hogs_) {
      ::kill(p, SIGKILL);
      harness::reap(p, 1s);
    }
    if (redis_ && redis_->pid() > 0) ::kill(redis_->pid(), SIGCONT);
    two_hosts::stop_and_report(a_, b_, HasFailure());
    proxy_.reset();
    redis_.reset();
    for (const auto& n : names_) Cache::remove(n);
  }

  std::vector<std::string> relay_args(const Host& h, int port, bool for_b) {
    std::ostringstream bound;
    bound << setup_.stale_bound_s;
    std::vector<std::string> v{h.name, "--redis", "127.0.0.1:" + std::to_string(port), "--stream", kStream,
                               "--stale-bound", bound.str(), "--block-ms", std::to_string(setup_.block_ms),
                               "--timeout-ms", std::to_string(setup_.io_ms), "--reconnect-max-ms", "200"};
    if (for_b) v.insert(v.end(), setup_.b_extra.begin(), setup_.b_extra.end());
    return v;
  }

  void open_host(Host& h, const std::string& label) {
    h.name = harness::unique_segment("live2" + label);
    names_.push_back(h.name);
    Config c;
    c.name = h.name;
    c.capacity_bytes = 8u << 20;
    h.cache.emplace(Cache::open(c));
  }

  int b_port() const { return setup_.b_via_proxy ? proxy_->port() : redis_->port(); }

  void start(const World& s) {
    setup_ = s;
    redis_ = std::make_unique<RedisServer>(dir_.path(), harness::free_port(), s.redis_extra);
    redis_->start();
    if (s.b_via_proxy) proxy_ = std::make_unique<HostileProxy>(redis_->port(), two_hosts::ProxyTimes{.delay = s.delay});
    open_host(b_, "B");
    b_.relay = std::make_unique<RelayProcess>(relay_args(b_, b_port(), true), dir_.path() + "/relay-B.log");
    b_.relay->start();
    if (s.with_a) {
      open_host(a_, "A");
      a_.relay = std::make_unique<RelayProcess>(relay_args(a_, redis_->port(), false), dir_.path() + "/relay-A.log");
      a_.relay->start();
    }
    ASSERT_TRUE(settled()) << "the relays did not settle after starting; B: " << describe(b_);
    for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  }

  std::vector<Host*> hosts() {
    std::vector<Host*> v{&b_};
    if (a_.cache) v.push_back(&a_);
    return v;
  }
  void set_everywhere(const std::string& key, const std::string& tag) {
    for (Host* h : hosts()) ASSERT_NO_FATAL_FAILURE(set_on(*h, key, tag));
  }

  bool settled(std::chrono::milliseconds timeout = 10s) { return two_hosts::settled(redis_->port(), kStream, hosts(), timeout); }

  std::chrono::milliseconds allowed() const {
    return two_hosts::allowed(std::chrono::milliseconds(std::int64_t(setup_.stale_bound_s * 1000)),
                              std::chrono::milliseconds(setup_.block_ms), std::chrono::milliseconds(setup_.io_ms), kSlack);
  }

  // The distinct "connection lost: ..." reasons in the log (first 3).
  std::string lost_reasons(Host& h) {
    const std::string log = h.relay ? harness::read_file(h.relay->log()) : "";
    std::string out;
    int n = 0;
    for (std::size_t p = log.find("connection lost: "); p != std::string::npos && n < 3;
         p = log.find("connection lost: ", p + 1), ++n) {
      const std::size_t e = log.find('\n', p);
      out += " [" + log.substr(p + 17, (e == std::string::npos ? log.size() : e) - p - 17) + "]";
    }
    return out;
  }

  std::string describe(Host& h) {
    const auto s = status(h);
    std::ostringstream o;
    o << "connected=" << s.connected << " stale_clears=" << s.stale_clears << " clears=" << clears(h)
      << " heartbeat_age_ms=" << (outbox::now_ms() - s.heartbeat_ms) << " resync_replay=" << s.resync_replay
      << " resync_lost=" << s.resync_lost << " applied=" << s.applied
      << " 'connection lost'=" << count_in_log(h, "connection lost") << lost_reasons(h);
    return o.str();
  }

  int blocked_clients() {
    RedisClient rc(redis_->port());
    Reply r = rc.cmd({"INFO", "clients"});
    const std::string s = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
    const std::size_t p = s.find("blocked_clients:");
    return p == std::string::npos ? -1 : std::atoi(s.c_str() + p + 16);
  }

  // Another host's invalidations, `n` of them in ONE atomic script (as one
  // relay's EVAL of a 256-event batch lands): tags t.<stem>.<i>, and `extra`.
  StreamId xadd_batch(int n, const std::string& stem, const std::string& extra = "") {
    RedisClient rc(redis_->port());
    const char* lua = R"lua(
local last
for i = 1, tonumber(ARGV[1]) do
  last = redis.call('XADD', KEYS[1], '*', 'host', 'some-other-host-with-a-long-id', 'kind', 'tag', 'name', ARGV[2] .. '.' .. string.format('%06d', i))
end
if ARGV[3] ~= '' then last = redis.call('XADD', KEYS[1], '*', 'host', 'some-other-host-with-a-long-id', 'kind', 'tag', 'name', ARGV[3]) end
return last
)lua";
    Reply r = rc.cmd({"EVAL", lua, "1", kStream, std::to_string(n), "t." + stem, extra});
    if (!r || r->type != REDIS_REPLY_STRING) return {};
    return StreamId::parse(std::string(r->str, r->len)).value_or(StreamId{});
  }

  bool b_caught_up_to(StreamId id) {
    const auto s = status(b_);
    return StreamId{s.last_id_ms, s.last_id_seq} >= id;
  }

  World setup_;
  harness::TempDir dir_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<HostileProxy> proxy_;
  Host a_, b_;
  std::vector<std::string> names_;
  std::vector<pid_t> hogs_;
};

// ---- 1. a big XREAD reply waiting in the socket after a pause ------------------------------

// B's XREAD BLOCK is blocked in Redis; B is stopped; another host publishes
// `n` invalidations in one script (one relay's 256-event EVAL does the same),
// so Redis answers B's XREAD with one reply of all of them, which waits in
// B's socket. B resumes past the bound with Redis fine. read_replies() reads
// once (hiredis reads 16 KiB per redisBufferRead); a reply bigger than that is
// not whole yet, the XREAD's deadline has passed during the pause, and the
// link is dropped as "no whole reply"; disconnected with a proof older than
// the bound, the relay clears at once.

TEST_F(LivenessAttack2, ABigXreadReplyWaitingAfterAPauseMustNotClear) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 2, .block_ms = 1000, .io_ms = 400, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_TRUE(harness::await([&] { return blocked_clients() == 1; }, 3s)) << "B's XREAD is not blocked in Redis";
  b_.relay->pause();
  const auto paused = Clock::now();
  const StreamId last = xadd_batch(400, "big", "t.k");  // ~45 KB of reply
  ASSERT_FALSE(last.zero());
  ASSERT_TRUE(harness::await([&] { return blocked_clients() == 0; }, 2s)) << "Redis did not answer B's XREAD";
  std::this_thread::sleep_until(paused + 2500ms);  // the pause, past the 2 s bound
  b_.relay->resume();
  const auto resumed = Clock::now();
  const bool caught_up = harness::await([&] { return b_caught_up_to(last) && !present(b_, "k"); }, 8s);
  EXPECT_TRUE(caught_up) << "B did not catch up within 8 s; B: " << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u)
      << "B cleared its whole cache after a pause with Redis and the link fine (caught up "
      << ms_since(resumed) << " ms after resuming); B: " << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << describe(b_);
}

// The control: the same with a reply under 16 KiB (100 entries): no clear.
TEST_F(LivenessAttack2, ControlASmallXreadReplyWaitingAfterAPauseDoesNotClear) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 2, .block_ms = 1000, .io_ms = 400, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_TRUE(harness::await([&] { return blocked_clients() == 1; }, 3s)) << "B's XREAD is not blocked in Redis";
  b_.relay->pause();
  const auto paused = Clock::now();
  const StreamId last = xadd_batch(100, "small", "t.k");
  ASSERT_FALSE(last.zero());
  ASSERT_TRUE(harness::await([&] { return blocked_clients() == 0; }, 2s));
  std::this_thread::sleep_until(paused + 2500ms);
  b_.relay->resume();
  EXPECT_TRUE(harness::await([&] { return b_caught_up_to(last) && !present(b_, "k"); }, 8s)) << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u) << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << describe(b_);
}

// ---- 2. the connection closed while the relay was stopped ------------------------------------

// B is stopped past the bound; meanwhile its connections are closed (a
// load balancer's or NAT's idle timeout; here a FIN from the proxy, which
// then passes again: Redis and a new link are fine). On resuming, B finds
// EOF, drops, and the disconnected branch clears at once (proof older than
// the bound) before it even tries to reconnect, though a reconnect and one
// XREAD would prove it current within a millisecond.
TEST_F(LivenessAttack2, AConnectionClosedDuringAPauseMustNotClearWhenRedisIsFine) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 2, .b_via_proxy = true}));
  set_everywhere("k", "t.k");
  b_.relay->pause();
  const auto paused = Clock::now();
  a_.cache->invalidate("t.k");
  proxy_->set_mode(Mode::fin_all);
  std::this_thread::sleep_until(paused + 2500ms);
  b_.relay->resume();
  const auto resumed = Clock::now();
  EXPECT_TRUE(harness::await([&] { return !present(b_, "k"); }, 5s)) << describe(b_);
  EXPECT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u)
      << "B cleared its whole cache on resuming (Redis fine, a new connection fine); settled "
      << ms_since(resumed) << " ms after resuming; B: " << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << describe(b_);
}

// The same with nothing hostile: Redis's own `timeout 1` closes the idle
// connections of the stopped relay.
TEST_F(LivenessAttack2, RedisIdleTimeoutClosingAPausedRelaysLinksMustNotClear) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 2, .redis_extra = {"--timeout", "1"}}));
  set_everywhere("k", "t.k");
  b_.relay->pause();
  const auto paused = Clock::now();
  a_.cache->invalidate("t.k");
  std::this_thread::sleep_until(paused + 2800ms);  // Redis closes clients idle > 1 s (clientsCron)
  b_.relay->resume();
  EXPECT_TRUE(harness::await([&] { return !present(b_, "k"); }, 5s)) << describe(b_);
  EXPECT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u)
      << "B cleared on resuming although Redis was fine (it had only closed idle connections); B: " << describe(b_);
  EXPECT_EQ(clears(a_), 0u);
}

// ---- 3. many commands in a row, each within its own deadline -------------------------------

// Each command on the command connection answers just within the timeout
// (1.8 s of 2 s: slow, not dead); the stream connection closes on every
// XREAD. A reconnect runs SCRIPT LOAD twice and the state script, 3 x 1.8 s,
// without looking at the stale bound; the next check comes after it. Right
// after a stale clear, an entry set on B and invalidated on A stays served
// for that whole connect.
TEST_F(LivenessAttack2, ASlowCommandConnectionDuringAReconnectMustNotStretchTheBound) {
  ASSERT_NO_FATAL_FAILURE(
      start({.stale_bound_s = 1, .block_ms = 200, .io_ms = 2000, .b_via_proxy = true, .delay = 1800ms}));
  proxy_->set_mode(Mode::pub_delay_sub_close);
  ASSERT_TRUE(harness::await([&] { return status(b_).stale_clears >= 1; }, 15s))
      << "no stale clear at all; B: " << describe(b_);
  // Just after a clear: the entry, then its invalidation on A.
  const std::uint64_t c0 = status(b_).stale_clears;
  ASSERT_TRUE(harness::await([&] { return status(b_).stale_clears > c0; }, 15s)) << describe(b_);
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "k", "t.k"));
  const auto t0 = Clock::now();
  a_.cache->invalidate("t.k");
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 15s);
  const double served = ms_since(t0);
  EXPECT_TRUE(gone && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << served << " ms (gone=" << gone << "; the contract: "
      << allowed().count() << " ms: the promise, a command in flight and " << kSlack.count() << " ms slack); B: " << describe(b_);
}

// ---- 4. SIGTERM while a command waits ---------------------------------------------------------

// Every connection swallowed; --timeout-ms 20000. The relay sits in a command
// (the state check). SIGTERM interrupts poll() with EINTR, and
// Conn::command's loop goes back to waiting for the rest of the timeout.
TEST_F(LivenessAttack2, SigtermWhileACommandWaitsExitsPromptly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 30, .block_ms = 200, .io_ms = 20000, .with_a = false,
                                 .b_via_proxy = true}));
  proxy_->set_mode(Mode::swallow);
  ASSERT_TRUE(harness::await([&] { return outbox::now_ms() - status(b_).heartbeat_ms > 500; }, 5s))
      << "B never blocked on a swallowed command; B: " << describe(b_);
  const pid_t pid = b_.relay->pid();
  const auto t0 = Clock::now();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  int st = 0;
  const bool exited = harness::await([&] { return ::waitpid(pid, &st, WNOHANG) == pid; }, 25s);
  const double took = ms_since(t0);
  if (!exited) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &st, 0);
  }
  b_.relay.reset(new RelayProcess({}, b_.relay->log()));  // already reaped: nothing to terminate
  EXPECT_TRUE(exited && took < 2000) << "the relay took " << took << " ms to exit on SIGTERM (exited=" << exited
                                     << "; its --timeout-ms is 20000)";
}

// ---- 5. a relay SIGKILLed and restarted while Redis is unreachable -----------------------------

// B's relay dies (kill -9); A invalidates; Redis stops; B's relay is started
// again past the bound. The new process takes its start for a proof
// (last_contact = now) and serves the entry for one more whole bound, though
// the status in the segment shows the previous relay died long ago. (Compare a
// paused relay, which clears within one timeout on resuming.)
TEST_F(LivenessAttack2, ARelayRestartedPastTheBoundWithRedisGoneClearsPromptly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 3}));
  set_everywhere("k", "t.k");
  b_.relay->kill9();
  a_.cache->invalidate("t.k");
  RedisClient rc(redis_->port());
  ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 3s));
  const auto invalidated = Clock::now();
  ASSERT_EQ(::kill(redis_->pid(), SIGSTOP), 0);
  std::this_thread::sleep_until(invalidated + 4000ms);  // dead past the 3 s bound
  b_.relay = std::make_unique<RelayProcess>(relay_args(b_, redis_->port(), true), dir_.path() + "/relay-B2.log");
  b_.relay->start();
  const auto restarted = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 8s);
  const double after = ms_since(restarted);
  EXPECT_TRUE(gone && after <= double(setup_.block_ms + setup_.io_ms + kSlack.count()))
      << "B's restarted relay served an entry invalidated " << ms_since(invalidated) << " ms ago for " << after
      << " ms after it started (gone=" << gone << "); B: " << describe(b_);
  ::kill(redis_->pid(), SIGCONT);
}

// ---- 6. catch-up after a pause -------------------------------------------------------------------


class CatchUp : public LivenessAttack2, public ::testing::WithParamInterface<int> {};

// B stopped past the bound; meanwhile `entries` invalidations land (in
// scripts of 1000, after B's XREAD BLOCK has answered with a heartbeat). On
// resuming, every non-blocking batch is a full COUNT (no proof) until the end.
TEST_P(CatchUp, ABacklogAfterAPauseIsCaughtUpWithoutClearing) {
  const int n = GetParam();
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  b_.relay->pause();
  const auto paused = Clock::now();
  std::this_thread::sleep_for(400ms);  // B's XREAD BLOCK (200 ms) answers nil meanwhile
  StreamId last;
  for (int done = 0; done < n; done += 1000) last = xadd_batch(std::min(1000, n - done), "c" + std::to_string(done));
  last = xadd_batch(0, "x", "t.k");
  ASSERT_FALSE(last.zero());
  const double filled = ms_since(paused);
  std::this_thread::sleep_until(std::max(paused + 1300ms, Clock::now()));
  b_.relay->resume();
  const auto resumed = Clock::now();
  const bool caught = harness::await([&] { return b_caught_up_to(last); }, 60s);
  const double took = ms_since(resumed);
  std::cout << "  " << n << " entries (written in " << filled << " ms): caught up in " << took << " ms; "
            << describe(b_) << "\n";
  EXPECT_TRUE(caught) << "B did not catch up with " << n << " entries in 60 s; B: " << describe(b_);
  EXPECT_FALSE(present(b_, "k"));
  EXPECT_EQ(status(b_).stale_clears, 0u) << "B cleared during a catch-up of " << n << " entries (" << took
                                         << " ms) with Redis and the link fine; B: " << describe(b_);
}
// A catch-up that takes longer than a heartbeat and a timeout after the
// relay became overdue clears (the backlog holds invalidations older than
// the bound: docs/hostcache-relay.md). The review measured 9 ms for 5,000
// entries, 106 ms for 50,000, 419 ms for 300,000 and 1735 ms (one clear) for
// 1,000,000; CI runs the two that stay well inside the grace under a sanitizer.
INSTANTIATE_TEST_SUITE_P(Entries, CatchUp, ::testing::Values(5000, 50000));

// ---- 7. a Redis that is slow, but within the timeout -------------------------------------------

// Every reply on both connections is held 90% of --timeout-ms. Nothing times
// out; nothing should clear. Parameters: bound (s), block, timeout.
struct Slow {
  double bound_s;
  int block_ms, io_ms;
};
class SlowRedis : public LivenessAttack2, public ::testing::WithParamInterface<Slow> {};

TEST_P(SlowRedis, ALinkSlowButWithinTheTimeoutNeverClears) {
  const Slow p = GetParam();
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = p.bound_s, .block_ms = p.block_ms, .io_ms = p.io_ms,
                                 .b_via_proxy = true, .delay = std::chrono::milliseconds(p.io_ms * 9 / 10)}));
  set_everywhere("k", "t.k");
  proxy_->set_mode(Mode::delay);
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(6s);  // the slow period itself
  const auto s = status(b_);
  EXPECT_EQ(s.stale_clears, 0u) << "B cleared " << s.stale_clears << " times in " << ms_since(t0)
                                << " ms with every reply " << p.io_ms * 9 / 10 << " ms late (timeout " << p.io_ms
                                << " ms, bound " << p.bound_s << " s, block " << p.block_ms << " ms); B: " << describe(b_);
  EXPECT_EQ(count_in_log(b_, "connection lost"), 0u) << describe(b_);
  // And the invalidations still flow.
  const auto t1 = Clock::now();
  a_.cache->invalidate("t.k");
  EXPECT_TRUE(harness::await([&] { return !present(b_, "k"); }, allowed()))
      << "not applied within " << allowed().count() << " ms; " << ms_since(t1) << "; B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Params, SlowRedis,
                         ::testing::Values(Slow{1, 200, 400}, Slow{0.5, 200, 400}, Slow{0, 200, 400}));

// ---- 8. odd bounds with a fine link: a bound below the heartbeat, a bound of 0, and pauses ------

struct Odd {
  double bound_s;
  int block_ms;
  int pause_ms;
};
class OddBound : public LivenessAttack2, public ::testing::WithParamInterface<Odd> {};

TEST_P(OddBound, AFineLinkNeverClearsEvenAfterAPause) {
  const Odd p = GetParam();
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = p.bound_s, .block_ms = p.block_ms, .io_ms = 400}));
  for (int round = 0; round < 3; ++round) {
    const std::string key = "k" + std::to_string(round), tag = "t.k" + std::to_string(round);
    set_everywhere(key, tag);
    std::this_thread::sleep_for(std::chrono::milliseconds(p.block_ms * 2 + 37 * round));  // a few heartbeats
    b_.relay->pause();
    a_.cache->invalidate(tag);
    std::this_thread::sleep_for(std::chrono::milliseconds(p.pause_ms));
    b_.relay->resume();
    ASSERT_TRUE(harness::await([&] { return !present(b_, key); }, 5s)) << "round " << round << ": " << describe(b_);
    ASSERT_TRUE(settled()) << "round " << round << ": " << describe(b_);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(p.block_ms * 3));  // a few more heartbeats, unpaused
  EXPECT_EQ(status(b_).stale_clears, 0u) << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << describe(b_);
  EXPECT_EQ(count_in_log(b_, "connection lost"), 0u) << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Params, OddBound,
                         ::testing::Values(Odd{0.1, 1000, 1500}, Odd{0, 200, 1500}, Odd{0, 1000, 2500},
                                           Odd{0.3, 1000, 200}));

// ---- 9. CPU starvation --------------------------------------------------------------------------

// B's relay at nice 19 while four busy loops (nice 0) load both cores for 8 s,
// and A invalidates a tag every 20 ms. Redis and the link are fine: no clear,
// no dropped link, and every invalidation within the bound.
TEST_F(LivenessAttack2, CpuStarvationNeverClearsNeedlessly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 0.5, .block_ms = 100, .io_ms = 100}));
  ASSERT_EQ(::setpriority(PRIO_PROCESS, id_t(b_.relay->pid()), 19), 0) << std::strerror(errno);
  for (int i = 0; i < 4; ++i) {
    const pid_t p = ::fork();
    ASSERT_GE(p, 0);
    if (p == 0) {
      ::alarm(20);  // bounded even if the test dies
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
    hogs_.push_back(p);
  }
  const auto t0 = Clock::now();
  double worst = 0;
  int missed = 0, rounds = 0;
  while (Clock::now() - t0 < 8s) {
    const std::string key = "s" + std::to_string(rounds), tag = "t.s" + std::to_string(rounds);
    set_everywhere(key, tag);
    const auto t1 = Clock::now();
    a_.cache->invalidate(tag);
    if (!harness::await([&] { return !present(b_, key); }, allowed())) ++missed;
    worst = std::max(worst, ms_since(t1));
    ++rounds;
    std::this_thread::sleep_for(20ms);
  }
  for (pid_t p : hogs_) {
    ::kill(p, SIGKILL);
    harness::reap(p, 1s);
  }
  hogs_.clear();
  std::cout << "  starvation: " << rounds << " rounds, worst " << worst << " ms; B: " << describe(b_) << "\n";
  EXPECT_EQ(missed, 0) << "invalidations not applied within " << allowed().count() << " ms: " << missed;
  EXPECT_EQ(status(b_).stale_clears, 0u) << "B cleared under CPU starvation with Redis fine; " << describe(b_);
  EXPECT_EQ(count_in_log(b_, "connection lost"), 0u) << describe(b_);
}

// ---- 10. Redis restarted empty while the relay is stopped ---------------------------------------

TEST_F(LivenessAttack2, RedisRestartedEmptyWhileTheRelayIsStoppedClearsOnResume) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 30, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  b_.relay->pause();
  redis_->kill9();  // with it, the invalidation another host published just before (never read by B)
  redis_->start();  // empty, same port
  std::this_thread::sleep_for(500ms);
  b_.relay->resume();
  const auto resumed = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 5s);
  EXPECT_TRUE(gone && ms_since(resumed) <= double(setup_.block_ms + setup_.io_ms + kSlack.count()))
      << "gone=" << gone << " after " << ms_since(resumed) << " ms; B: " << describe(b_);
  // The count is saved after the clear (a kill -9 between them must not skip
  // the clear), so the clear can be seen a moment before the count.
  EXPECT_TRUE(harness::await([&] { return status(b_).resync_lost >= 1; }, 5s)) << describe(b_);
}

// ---- 11. a stream connection that answers only non-blocking XREADs -------------------------------

// XREAD BLOCK is swallowed on the stream connection (each such link dies at
// block + timeout); XREAD without BLOCK passes. The bound must hold; and the
// relay must not spin.
TEST_F(LivenessAttack2, AStreamLinkAnsweringOnlyNonBlockingXreadsKeepsTheBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_via_proxy = true}));
  proxy_->set_mode(Mode::only_nonblocking);
  std::this_thread::sleep_for(2500ms);  // past the bound, in that mode
  set_everywhere("k", "t.k");
  const double cpu0 = b_.relay->cpu_seconds();
  const auto t0 = Clock::now();
  a_.cache->invalidate("t.k");
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 8s);
  const double served = ms_since(t0);
  std::this_thread::sleep_until(t0 + 3s);
  const double cpu = (b_.relay->cpu_seconds() - cpu0) / (ms_since(t0) / 1000.0);
  std::cout << "  only non-blocking XREADs: applied after " << served << " ms; CPU " << int(cpu * 100) << "%; "
            << describe(b_) << "\n";
  EXPECT_TRUE(gone && served <= double(allowed().count())) << "served " << served << " ms; B: " << describe(b_);
  EXPECT_LT(cpu, 0.5) << "the relay spins: CPU " << int(cpu * 100) << "%";
}

// ==== the third round (review of 2418d20): escapes from the bound while Redis is down ====

long vm_hwm_kib(pid_t pid) {
  const std::string s = harness::read_file("/proc/" + std::to_string(pid) + "/status");
  const std::size_t p = s.find("VmHWM:");
  return p == std::string::npos ? -1 : std::atol(s.c_str() + p + 6);
}

// Sends `sig` to `pid` every `period` from a thread until stopped.
class Pester {
 public:
  Pester(pid_t pid, int sig, std::chrono::milliseconds period)
      : t_([=, this] {
          while (!stop_.load()) {
            ::kill(pid, sig);
            std::this_thread::sleep_for(period);
          }
        }) {}
  ~Pester() {
    stop_ = true;
    t_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread t_;
};

// ---- 1. SIGCONT sent often while Redis is down ------------------------------------------------------

// Redis dies (kill -9: nothing answers, nothing will). B's relay must clear
// within S + G + timeout. Another process of the same user (or a supervisor,
// a monitoring script, `kill -CONT`) sends SIGCONT to the relay every 300 ms,
// less than G (1000 ms). Each SIGCONT restarts the grace (staleness():
// overdue_since = now), so the clear never comes. The control: no SIGCONT.
class SigcontFlood : public LivenessAttack2, public ::testing::WithParamInterface<int> {};

TEST_P(SigcontFlood, RedisDownMustStillClearWithinTheBound) {
  const int period_ms = GetParam();  // 0: no SIGCONT (the control)
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  redis_->kill9();
  const auto t0 = Clock::now();
  std::optional<Pester> p;
  if (period_ms > 0) p.emplace(b_.relay->pid(), SIGCONT, std::chrono::milliseconds(period_ms));
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 3 * allowed());
  const double after = ms_since(t0);
  p.reset();
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "with Redis dead and a SIGCONT every " << period_ms << " ms, B served an entry " << after
      << " ms after Redis died (gone=" << gone << "; allowed " << allowed().count() << " ms); B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Period, SigcontFlood, ::testing::Values(0, 300, 900));

// ---- 2. starvation while Redis is down: the 100 ms wait-gap heuristic ------------------------------

// Redis dies. B's relay is then run on a duty cycle: 150 ms stopped, 50 ms
// running (what a cgroup CPU quota of 25% with a 200 ms period, or heavy
// contention, does to it). Every wait spans a stop, takes > 100 ms more than
// asked, and restarts the grace (after_wait()). With SIGCONT ignored by the
// relay's parent (inherited SIG_IGN: the relay then installs no handler),
// only the heuristic is at work; with the handler, both are.
class DutyCycle : public LivenessAttack2, public ::testing::WithParamInterface<bool> {};

TEST_P(DutyCycle, StarvedRelayWithRedisDownMustStillClearWithinTheBound) {
  const bool ignore_sigcont = GetParam();
  struct sigaction old {};
  if (ignore_sigcont) {
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGCONT, &ign, &old);
  }
  start({.stale_bound_s = 1, .with_a = false});
  if (ignore_sigcont) ::sigaction(SIGCONT, &old, nullptr);
  if (HasFatalFailure()) return;
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  redis_->kill9();
  const auto t0 = Clock::now();
  bool gone = false;
  while (!gone && Clock::now() - t0 < 3 * allowed()) {
    ::kill(b_.relay->pid(), SIGSTOP);
    std::this_thread::sleep_for(150ms);
    ::kill(b_.relay->pid(), SIGCONT);
    std::this_thread::sleep_for(50ms);
    gone = !present(b_, "k");
  }
  const double after = ms_since(t0);
  ::kill(b_.relay->pid(), SIGCONT);
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "B's relay, running 25% of the time (150 ms stopped / 50 ms running), SIGCONT "
      << (ignore_sigcont ? "ignored" : "handled") << ", served an entry " << after
      << " ms after Redis died (gone=" << gone << "; allowed " << allowed().count() << " ms); B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(SigcontIgnored, DutyCycle, ::testing::Values(true, false));

// Real CPU starvation: B's relay under SCHED_IDLE while four busy loops load
// both cores; Redis dies. Does any wait overrun by 100 ms often enough (once
// per G) to hold the clear off?
TEST_F(LivenessAttack2, RealStarvationWithRedisDownMustStillClearWithinTheBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  sched_param sp{};
  ASSERT_EQ(::sched_setscheduler(b_.relay->pid(), SCHED_IDLE, &sp), 0) << std::strerror(errno);
  for (int i = 0; i < 4; ++i) {
    const pid_t p = ::fork();
    ASSERT_GE(p, 0);
    if (p == 0) {
      ::alarm(30);
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
    hogs_.push_back(p);
  }
  redis_->kill9();
  const auto t0 = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 3 * allowed());
  const double after = ms_since(t0);
  for (pid_t p : hogs_) {
    ::kill(p, SIGKILL);
    harness::reap(p, 1s);
  }
  hogs_.clear();
  std::cout << "  SCHED_IDLE + 4 hogs: cleared after " << after << " ms (gone=" << gone << ")\n";
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "B (SCHED_IDLE, both cores busy) served an entry " << after << " ms after Redis died (gone=" << gone
      << "; allowed " << allowed().count() << " ms); B: " << describe(b_);
}

// ---- 3. the restart rule ------------------------------------------------------------------------

// Redis dies; B's relay is in a crash loop (kill -9 and start again every
// 700 ms, as systemd's Restart=always would with a relay that keeps dying).
// Every relay, even disconnected, saves a heartbeat every 100 ms; the next
// one counts its proof from that heartbeat, which is no proof at all: the
// proof is laundered on every restart and the clear never comes.
// Parameter: the bound (s); with 0, the promise is a clear once a second.
class RestartLoop : public LivenessAttack2, public ::testing::WithParamInterface<double> {};

TEST_P(RestartLoop, ACrashLoopingRelayWithRedisDownMustStillClear) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = GetParam(), .with_a = false}));
  redis_->kill9();
  std::this_thread::sleep_for(300ms);  // bound 0: the drop's own clear
  const std::uint64_t c0 = clears(b_);
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  const auto t0 = Clock::now();
  int restarts = 0;
  bool gone = false;
  while (!gone && Clock::now() - t0 < 3 * allowed()) {
    b_.relay->kill9();
    b_.relay = std::make_unique<RelayProcess>(relay_args(b_, redis_->port(), true),
                                              dir_.path() + "/relay-B-r" + std::to_string(++restarts) + ".log");
    b_.relay->start();
    const auto next = Clock::now() + 700ms;
    while (!gone && Clock::now() < next) {
      gone = !present(b_, "k");
      std::this_thread::sleep_for(5ms);
    }
  }
  const double after = ms_since(t0);
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "bound " << GetParam() << " s: B's relay restarted " << restarts
      << " times (every 700 ms) with Redis dead served an entry set " << after
      << " ms after Redis died (gone=" << gone << ", clears since=" << clears(b_) - c0 << "; allowed "
      << allowed().count() << " ms); B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Bound, RestartLoop, ::testing::Values(1.0, 0.0));

// One restart only, just before the relay would have become overdue (bound
// 5 s: S 5 s, G 1 s): the new relay's proof dates from the old relay's last
// (disconnected) heartbeat, so it gets a whole new S + G.
TEST_F(LivenessAttack2, ASingleRestartJustBeforeOverdueMustNotExtendTheBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  redis_->kill9();
  const auto t0 = Clock::now();
  std::this_thread::sleep_until(t0 + 4500ms);
  ASSERT_TRUE(present(b_, "k")) << "cleared before S: " << describe(b_);
  b_.relay->kill9();
  b_.relay = std::make_unique<RelayProcess>(relay_args(b_, redis_->port(), true), dir_.path() + "/relay-B2.log");
  b_.relay->start();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 2 * allowed());
  const double after = ms_since(t0);
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "B's relay, restarted once 4.5 s into the outage (bound 5 s), served an entry " << after
      << " ms after Redis died (gone=" << gone << "; allowed " << allowed().count() << " ms); B: " << describe(b_);
}

// A restarted relay whose segment's heartbeat_ms is in the future (a relay in
// another time namespace: CLOCK_MONOTONIC differs; a garbage word): the
// previous relay died past the bound with Redis gone. Before, the new one
// took a future heartbeat for a proof made now and gave itself a whole S + G;
// a proof (proven_ms) in the future is now unknown: overdue at once.
class FutureHeartbeat : public LivenessAttack2, public ::testing::WithParamInterface<std::int64_t> {};

TEST_P(FutureHeartbeat, ARestartedRelayPastTheBoundClearsPromptly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  b_.relay->kill9();
  redis_->kill9();
  const auto t0 = Clock::now();
  std::this_thread::sleep_until(t0 + 3000ms);  // dead past S (1.6 s)
  auto st = status(b_);
  ASSERT_NE(st.pid, 0u);
  const std::int64_t off = GetParam();
  if (off != 0) {  // 0: the control, the dead relay's own heartbeat left as it was
    // Both the heartbeat (what a restart counted from before) and the proof
    // it counts from now: in the future, as garbage or another time
    // namespace's clock would have them.
    st.heartbeat_ms = off == INT64_MAX ? INT64_MAX : outbox::now_ms() + off;
    st.proven_ms = st.heartbeat_ms;
    outbox::set_relay_status(*b_.cache, st);
  }
  b_.relay = std::make_unique<RelayProcess>(relay_args(b_, redis_->port(), true), dir_.path() + "/relay-B2.log");
  b_.relay->start();
  const auto restarted = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 8s);
  const double after = ms_since(restarted);
  EXPECT_TRUE(gone && after <= double(setup_.block_ms + setup_.io_ms + kSlack.count()))
      << "heartbeat_ms = now + " << off << ": B's restarted relay served an entry (Redis dead for "
      << ms_since(t0) << " ms) for " << after << " ms after it started (gone=" << gone << "); B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Offset, FutureHeartbeat, ::testing::Values(std::int64_t(0), std::int64_t(3600000), INT64_MAX));

// ---- 4. a peer that streams bytes fast on the stream connection ----------------------------------

// Every XREAD on the stream connection is answered by an XREAD reply whose
// entry is a bulk string of 2,000,000,000 bytes, streamed as fast as the
// socket takes them; the command connection passes. No whole reply ever:
// B must clear within the bound, and its memory must stay bounded
// (hiredis buffers a pending bulk whole).
TEST_F(LivenessAttack2, AStreamConnectionFloodedWithBytesKeepsTheBoundAndMemory) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_via_proxy = true}));
  set_everywhere("k", "t.k");
  const long hwm0 = vm_hwm_kib(b_.relay->pid());
  proxy_->set_mode(Mode::flood);
  // The XREAD BLOCK in flight (forwarded before) answers nil within 200 ms;
  // every XREAD after it is flooded. Then A invalidates.
  ASSERT_TRUE(harness::await([&] { return vm_hwm_kib(b_.relay->pid()) > hwm0 + 16 * 1024; }, 3s))
      << "the flood did not reach B";
  const auto t0 = Clock::now();
  a_.cache->invalidate("t.k");
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 3 * allowed());
  const double after = ms_since(t0);
  std::this_thread::sleep_until(std::max(Clock::now(), t0 + 5s));
  const long hwm = vm_hwm_kib(b_.relay->pid());
  std::cout << "  flood: gone after " << after << " ms; VmHWM " << hwm0 << " -> " << hwm << " KiB; " << describe(b_)
            << "\n";
  EXPECT_TRUE(gone && after <= double(allowed().count()))
      << "flooded stream connection: B served an invalidated entry for " << after << " ms (gone=" << gone
      << "; allowed " << allowed().count() << " ms); B: " << describe(b_);
  // The stream connection's replies are capped at 16 MiB: 22 MiB at the peak
  // here (749 MiB before). Under AddressSanitizer the freed buffers wait in
  // its quarantine (256 MiB at most) and the peak is about 340 MiB.
#if defined(__SANITIZE_ADDRESS__)
  constexpr long kLimitKib = 448 * 1024;
#else
  constexpr long kLimitKib = 64 * 1024;
#endif
  EXPECT_LT(hwm, kLimitKib) << "B's relay peaked at " << hwm / 1024 << " MiB under the flood (from " << hwm0 / 1024
                            << " MiB)";
}

// ---- 5. needless clears on a fine link ----------------------------------------------------------

// B's host invalidates distinct tags in a tight loop for 5 s (its relay
// publishes 256 per EVAL; its XREADs read its own events back, COUNT 512),
// and A reads them. Redis and the links are fine: no stale clear anywhere.
TEST_F(LivenessAttack2, AHeavyPublisherOnAFineLinkNeverClears) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  const auto t0 = Clock::now();
  std::uint64_t n = 0;
  while (Clock::now() - t0 < 5s) {
    b_.cache->invalidate("t.heavy." + std::to_string(n++));
    if (n % 64 == 0) std::this_thread::sleep_for(200us);
  }
  const bool caught = settled(30s);
  std::cout << "  heavy publisher: " << n << " invalidations; B: " << describe(b_) << "; A: " << describe(a_)
            << "; overflow_clears B=" << status(b_).overflow_clears << "\n";
  EXPECT_TRUE(caught) << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u) << "B cleared with Redis fine; B: " << describe(b_);
  EXPECT_EQ(status(a_).stale_clears, 0u) << "A cleared with Redis fine, reading B's " << n
                                         << " invalidations; A: " << describe(a_);
}

// The same with two heavy publishers (A and a third host played by the test,
// writing 256-entry scripts as a relay's EVAL does) and B only reading.
// The pause between bursts: under AddressSanitizer the relays run several
// times slower, and at the plain build's rate A fell behind by whole batches
// for longer than S + G once (CI, 04:38 UTC), which clears by design.
#if defined(__SANITIZE_ADDRESS__)
constexpr auto kPace = 25ms;
#else
constexpr auto kPace = 5ms;
#endif

TEST_F(LivenessAttack2, AHeavyStreamReaderOnAFineLinkNeverClears) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  const auto t0 = Clock::now();
  std::uint64_t n = 0;
  int batches = 0;
  // A heavy load the readers keep up with (tens of thousands of events a
  // second). A reader that stays behind by whole COUNT batches for longer
  // than the bound and the grace proves nothing and clears (documented:
  // docs/hostcache-relay.md); the review's unthrottled 200,000 a second on
  // this 2-core machine did that once in a while.
  while (Clock::now() - t0 < 5s) {
    for (int i = 0; i < 64; ++i) a_.cache->invalidate("t.a." + std::to_string(n++));
    xadd_batch(256, "c" + std::to_string(batches++));
    std::this_thread::sleep_for(kPace);  // the load's rate, not a synchronisation
  }
  const bool caught = settled(30s);
  std::cout << "  heavy readers: A " << n << " + third host " << batches * 256 << " invalidations; B: " << describe(b_)
            << "; A: " << describe(a_) << "\n";
  EXPECT_TRUE(caught) << describe(b_);
  EXPECT_EQ(status(b_).stale_clears, 0u) << "B cleared with Redis fine while reading a heavy stream; B: "
                                         << describe(b_);
  EXPECT_EQ(status(a_).stale_clears, 0u) << "A: " << describe(a_);
}

}  // namespace
}  // namespace hostcache::relay
