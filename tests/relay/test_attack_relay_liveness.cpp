// Adversarial tests of the relay's link liveness (review of commit d00d19a:
// a link is taken for half-open only if no reply is readable), with real processes: a
// real redis-server, hostcache-relay processes, and a hostile TCP proxy that
// runs in a forked child and is driven through a pipe (every mode switch is
// acknowledged before the test goes on).
//
// The contract under attack (docs/hostcache-relay.md, "Bounded staleness"):
// no host serves an entry that another host invalidated more than about one
// stale bound, plus one heartbeat period and one socket timeout, ago; and a
// relay never clears when the link is fine.
//
// Each test that checks the contract waits for the condition (bounded), then
// asserts when it held; a failure message says what was observed. The only
// sleeps are outages themselves.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <random>
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

const std::string kStream = "hc:live";
constexpr auto kBlock = 200ms;    // --block-ms
constexpr auto kIo = 400ms;       // --timeout-ms
constexpr auto kSlack = 1000ms;   // scheduling, reconnect attempts in flight

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// ---- a hostile proxy in a child process --------------------------------------------

using two_hosts::HostileProxy;
using two_hosts::Mode;

// ---- two hosts: A straight to Redis, B through the proxy (or straight) ---------------

struct World {
  double stale_bound_s = 1;
  bool with_a = true;            // false: the test plays host A itself (XADD)
  bool b_via_proxy = true;
  std::vector<std::string> b_extra;  // more hostcache-relay arguments for B
  std::chrono::microseconds drip{500};
  std::chrono::milliseconds slow{300};
};

using two_hosts::Host;

class LivenessAttack : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(HOSTCACHE_REDIS_SERVER).empty() || ::access(HOSTCACHE_REDIS_SERVER, X_OK) != 0) {
      GTEST_SKIP() << "redis-server not found";
    }
  }
  void TearDown() override {
    if (redis_ && redis_->pid() > 0) ::kill(redis_->pid(), SIGCONT);  // a test stopped it
    two_hosts::stop_and_report(a_, b_, HasFailure(), 6000);
    proxy_.reset();
    redis_.reset();
    for (const auto& n : names_) Cache::remove(n);
  }

  std::vector<std::string> relay_args(const Host& h, int port, const std::vector<std::string>& extra) {
    std::vector<std::string> v{h.name, "--redis", "127.0.0.1:" + std::to_string(port), "--stream", kStream,
                               "--stale-bound", std::to_string(setup_.stale_bound_s), "--block-ms",
                               std::to_string(kBlock.count()), "--timeout-ms", std::to_string(kIo.count()),
                               "--reconnect-max-ms", "200"};
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  }

  void open_host(Host& h, const std::string& label) {
    h.name = harness::unique_segment("live" + label);
    names_.push_back(h.name);
    Config c;
    c.name = h.name;
    c.capacity_bytes = 4u << 20;
    h.cache.emplace(Cache::open(c));
  }

  void start(const World& s) {
    setup_ = s;
    redis_ = std::make_unique<RedisServer>(dir_.path(), harness::free_port());
    redis_->start();
    if (s.b_via_proxy) proxy_ = std::make_unique<HostileProxy>(redis_->port(), two_hosts::ProxyTimes{.drip = s.drip, .slow = s.slow});
    open_host(b_, "B");
    b_.relay = std::make_unique<RelayProcess>(
        relay_args(b_, s.b_via_proxy ? proxy_->port() : redis_->port(), s.b_extra), dir_.path() + "/relay-B.log");
    b_.relay->start();
    if (s.with_a) {
      open_host(a_, "A");
      a_.relay = std::make_unique<RelayProcess>(relay_args(a_, redis_->port(), {}), dir_.path() + "/relay-A.log");
      a_.relay->start();
    }
    ASSERT_TRUE(settled()) << "the relays did not settle after starting";
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

  // What the contract allows from the moment an invalidation (or an outage) starts.
  std::chrono::milliseconds allowed() const {
    return two_hosts::allowed(std::chrono::milliseconds(std::int64_t(setup_.stale_bound_s * 1000)), kBlock, kIo, kSlack);
  }

  std::string describe(Host& h) {
    const auto s = status(h);
    std::ostringstream o;
    o << "connected=" << s.connected << " stale_clears=" << s.stale_clears << " clears=" << clears(h)
      << " heartbeat_age_ms=" << (outbox::now_ms() - s.heartbeat_ms) << " lag_events=" << s.lag_events
      << " resync_replay=" << s.resync_replay << " applied=" << s.applied
      << " 'connection lost' in log=" << count_in_log(h, "connection lost");
    return o.str();
  }


  // Host A invalidates `tag`; returns how long (ms) B kept serving `key`
  // afterwards, waiting at most `most`; -1 if it still served it then.
  double b_serves_after_invalidation(const std::string& key, const std::string& tag, std::chrono::milliseconds most,
                                     Clock::time_point* at = nullptr) {
    const auto t0 = Clock::now();
    if (at) *at = t0;
    a_.cache->invalidate(tag);
    const bool gone = harness::await([&] { return !present(b_, key); }, most);
    return gone ? ms_since(t0) : -1;
  }

  World setup_;
  harness::TempDir dir_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<HostileProxy> proxy_;
  Host a_, b_;
  std::vector<std::string> names_;
};

// ---- 1. a trickle that never completes a reply ---------------------------------------

// The stream connection receives the start of a 100 MB bulk reply and then one
// byte every 200 us: every ppoll of the relay (--poll-us 50000, a documented
// knob) finds a byte, so the deadline branch (block + timeout, and the poll()
// of d00d19a) is never reached; last_contact is never renewed, but nothing
// looks at it while connected. The command connection works, so the state
// check passes every block period (and counts the lag, which nobody acts on).
TEST_F(LivenessAttack, ATrickleThatNeverCompletesAReplyMustNotHoldTheStaleBoundOff) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_extra = {"--poll-us", "50000"}, .drip = 200us}));
  set_everywhere("k", "t.k");
  const std::size_t lost0 = count_in_log(b_, "connection lost");
  proxy_->set_mode(Mode::sub_trickle);
  const double cpu0 = b_.relay->cpu_seconds();
  const auto t0 = Clock::now();
  const double served = b_serves_after_invalidation("k", "t.k", 8s);
  const double cpu = (b_.relay->cpu_seconds() - cpu0) / (ms_since(t0) / 1000.0);
  EXPECT_TRUE(served >= 0 && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << (served < 0 ? ">8000" : std::to_string(served))
      << " ms (the contract: " << allowed().count() << " ms); the link was dropped "
      << (count_in_log(b_, "connection lost") - lost0) << " times meanwhile; B: " << describe(b_) << "; relay CPU "
      << int(cpu * 100) << "%";
}

// ---- 2. a partial reply, then silence ---------------------------------------------------

// Every stream connection (the reconnected ones too) gets "$10\r\nab" and
// then silence; the command connection works. The half-open link itself is
// found at block + timeout; the stale bound must hold across the reconnects.
TEST_F(LivenessAttack, APartialReplyThenSilenceOnEveryStreamConnectionMustStillEnforceTheStaleBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  set_everywhere("k", "t.k");
  const std::size_t lost0 = count_in_log(b_, "connection lost");
  proxy_->set_mode(Mode::sub_partial);
  const double cpu0 = b_.relay->cpu_seconds();
  const auto t0 = Clock::now();
  EXPECT_TRUE(harness::await([&] { return count_in_log(b_, "connection lost") > lost0; }, kBlock + kIo + kSlack))
      << "the half-read link was not dropped within " << (kBlock + kIo + kSlack).count() << " ms";
  const double first_drop = ms_since(t0);
  const double served = b_serves_after_invalidation("k", "t.k", 8s);
  EXPECT_TRUE(served >= 0 && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << (served < 0 ? ">8000" : std::to_string(served))
      << " ms (the contract: " << allowed().count() << " ms); first drop " << first_drop << " ms after the switch; B: "
      << describe(b_);
  const double cpu = (b_.relay->cpu_seconds() - cpu0) / (ms_since(t0) / 1000.0);
  EXPECT_LT(cpu, 0.5) << "the relay spins on a half-read reply: CPU " << int(cpu * 100) << "%";
  EXPECT_EQ(clears(a_), 0u);
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(settled()) << "B did not heal; " << describe(b_);
}

// ---- 3. EOF / RST on the stream connection -----------------------------------------------

void expect_prompt_drop(const char* what, std::size_t lost_before, const std::function<void()>& switch_mode,
                        const std::function<std::size_t()>& lost) {
  const auto t0 = Clock::now();
  switch_mode();
  const bool seen = harness::await([&] { return lost() > lost_before; }, 2s);
  const double took = ms_since(t0);
  std::cout << "  " << what << " on the stream connection: link dropped after " << took << " ms\n";
  // Before the dead-link timeout could have fired: the EOF itself was noticed.
  EXPECT_TRUE(seen && took < double((kBlock + kIo).count())) << what << " on the stream connection noticed after " << took
                                  << " ms (seen=" << seen << "); a dead-link timeout would be "
                                  << (kBlock + kIo).count() << " ms";
}

TEST_F(LivenessAttack, AFinOnTheStreamConnectionIsNoticedPromptly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 30}));
  const std::size_t before = count_in_log(b_, "connection lost");
  expect_prompt_drop("a FIN", before, [&] { proxy_->set_mode(Mode::sub_close); },
                     [&] { return count_in_log(b_, "connection lost"); });
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << "a reconnect within the bound cleared: " << describe(b_);
}

TEST_F(LivenessAttack, AResetOnTheStreamConnectionIsNoticedPromptly) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 30}));
  const std::size_t before = count_in_log(b_, "connection lost");
  expect_prompt_drop("an RST", before, [&] { proxy_->set_mode(Mode::sub_reset); },
                     [&] { return count_in_log(b_, "connection lost"); });
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << "a reconnect within the bound cleared: " << describe(b_);
}

// The stream connection dies on every XREAD, the command connection works:
// each reconnect's resync (a replay, on the command connection) sets
// last_contact = now although nothing after the replay position was read.
TEST_F(LivenessAttack, AStreamConnectionThatDiesOnEveryXreadMustStillEnforceTheStaleBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  set_everywhere("k", "t.k");
  proxy_->set_mode(Mode::sub_close);
  const double cpu0 = b_.relay->cpu_seconds();
  const auto t0 = Clock::now();
  const double served = b_serves_after_invalidation("k", "t.k", 8s);
  const double cpu = (b_.relay->cpu_seconds() - cpu0) / (ms_since(t0) / 1000.0);
  EXPECT_TRUE(served >= 0 && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << (served < 0 ? ">8000" : std::to_string(served))
      << " ms (the contract: " << allowed().count() << " ms); B: " << describe(b_) << "; relay CPU "
      << int(cpu * 100) << "%";
}

// The same with nothing hostile but Redis itself: the ACL of the relay's user
// denies XREAD (every other command the relay uses, scripts included, works).
TEST_F(LivenessAttack, XreadDeniedByAclMustStillEnforceTheStaleBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_via_proxy = false}));
  set_everywhere("k", "t.k");
  RedisClient rc(redis_->port());
  Reply r = rc.cmd({"ACL", "SETUSER", "default", "-xread"});
  ASSERT_TRUE(r && r->type == REDIS_REPLY_STATUS) << (r ? std::string(r->str, r->len) : "no reply");
  // B's XREAD in flight was admitted before the change: wait for the first refusal.
  ASSERT_TRUE(harness::await([&] { return count_in_log(b_, "NOPERM") > 0; }, 3s)) << describe(b_);
  const double served = b_serves_after_invalidation("k", "t.k", 8s);
  EXPECT_TRUE(served >= 0 && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << (served < 0 ? ">8000" : std::to_string(served))
      << " ms (the contract: " << allowed().count() << " ms); B: " << describe(b_)
      << "; 'NOPERM' in B's log: " << count_in_log(b_, "NOPERM");
}

// ---- 4. Redis stopped, or a server that never answers -------------------------------------

TEST_F(LivenessAttack, RedisSigstoppedIsClearedWithinTheBoundEverywhere) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_via_proxy = false}));
  set_everywhere("k", "t.k");
  ASSERT_EQ(::kill(redis_->pid(), SIGSTOP), 0);
  const auto t0 = Clock::now();
  const bool cleared = harness::await(
      [&] { return status(a_).stale_clears >= 1 && status(b_).stale_clears >= 1; }, allowed() + 3s);
  const double took = ms_since(t0);
  EXPECT_TRUE(cleared && took <= double(allowed().count()))
      << "stale clears " << took << " ms after Redis stopped (cleared=" << cleared << "); A: " << describe(a_)
      << "; B: " << describe(b_);
  EXPECT_FALSE(present(b_, "k"));
  ::kill(redis_->pid(), SIGCONT);
  ASSERT_TRUE(settled()) << "no recovery after SIGCONT; B: " << describe(b_);
  EXPECT_EQ(status(b_).resync_lost, 0u);
}

TEST_F(LivenessAttack, AServerThatAcceptsAndNeverAnswersIsClearedWithinTheBound) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  set_everywhere("k", "t.k");
  proxy_->set_mode(Mode::swallow);
  const auto t0 = Clock::now();
  const bool cleared = harness::await([&] { return status(b_).stale_clears >= 1; }, allowed() + 3s);
  const double took = ms_since(t0);
  EXPECT_TRUE(cleared && took <= double(allowed().count()))
      << "stale clear " << took << " ms after the server went mute (cleared=" << cleared << "); B: " << describe(b_);
  EXPECT_EQ(status(a_).stale_clears, 0u);
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(clears(a_), 0u);
}

// ---- 5. a slow command connection ------------------------------------------------------------

// Replies on the command connection arrive one byte per 300 ms (under the
// 400 ms socket timeout, which hiredis applies per read()): the relay's
// thread sits inside redisCommand for the state check; nothing else runs.
TEST_F(LivenessAttack, ASlowCommandConnectionMustNotHoldTheStaleBoundOff) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .slow = 300ms}));
  set_everywhere("k", "t.k");
  proxy_->set_mode(Mode::pub_slow);
  // The relay's thread sat inside a command on the slow link for a whole
  // timeout. (Its heartbeat stopping for 500 ms was the sign before every
  // command got one 400 ms deadline; since then that is scheduling luck.)
  ASSERT_TRUE(harness::await([&] { return count_in_log(b_, "no whole reply within") > 0; }, 3s))
      << "the relay never blocked on the slow command connection; B: " << describe(b_);
  const double served = b_serves_after_invalidation("k", "t.k", 8s);
  EXPECT_TRUE(served >= 0 && served <= double(allowed().count()))
      << "B served an entry invalidated on A for " << (served < 0 ? ">8000" : std::to_string(served))
      << " ms (the contract: " << allowed().count() << " ms); B: " << describe(b_);
}

// ---- 6. an old reply read after a pause ---------------------------------------------------------

// B's relay is stopped; Redis answers its XREAD BLOCK with the nil heartbeat
// (it waits in B's socket); another host's invalidation reaches the stream;
// then Redis stops. When B's relay runs again, past the bound, the one proof
// it has is that old heartbeat, older than the invalidation: the contract
// wants a clear about at once. The relay takes the heartbeat as a proof made
// now, and serves the entry for one more full bound.
TEST_F(LivenessAttack, AnOldHeartbeatReadAfterAPauseIsNotAFreshProof) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 3, .with_a = false, .b_via_proxy = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  RedisClient rc(redis_->port());
  auto blocked = [&] {
    Reply r = rc.cmd({"INFO", "clients"});
    const std::string s = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
    const std::size_t p = s.find("blocked_clients:");
    return p == std::string::npos ? -1 : std::atoi(s.c_str() + p + 16);
  };
  ASSERT_TRUE(harness::await([&] { return blocked() == 1; }, 2s)) << "B's XREAD is not blocked in Redis";
  b_.relay->pause();
  const auto paused = Clock::now();
  ASSERT_TRUE(harness::await([&] { return blocked() == 0; }, 2s)) << "Redis did not answer B's XREAD BLOCK";
  Reply id = rc.cmd({"XADD", kStream, "*", "host", "some-other-host", "kind", "tag", "name", "t.k"});
  ASSERT_TRUE(id && id->type == REDIS_REPLY_STRING);
  rc.cmd({"HSET", kStream + ":epochs", "t:t.k", std::string(id->str, id->len)});
  const auto invalidated = Clock::now();
  ASSERT_EQ(::kill(redis_->pid(), SIGSTOP), 0);
  std::this_thread::sleep_until(paused + 3500ms);  // the pause itself, past the bound
  b_.relay->resume();
  const auto resumed = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 8s);
  const double after_resume = ms_since(resumed);
  const double after_inval = ms_since(invalidated);
  const double want = double((kBlock + 2 * kIo + kSlack).count());
  EXPECT_TRUE(gone && after_resume <= want)
      << "B's relay, resumed " << std::chrono::duration<double, std::milli>(resumed - invalidated).count()
      << " ms after the invalidation and past the " << setup_.stale_bound_s
      << " s bound, kept serving the entry for " << after_resume << " ms more (" << after_inval
      << " ms after the invalidation; gone=" << gone << "); B: " << describe(b_);
}

// The control: the same pause, but Redis stops before it answers; no reply
// waits in the socket, and the relay clears as soon as it runs again.
TEST_F(LivenessAttack, APauseWithNoReplyWaitingClearsAtOnceOnResume) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 3, .with_a = false, .b_via_proxy = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  RedisClient rc(redis_->port());
  auto blocked = [&] {
    Reply r = rc.cmd({"INFO", "clients"});
    const std::string s = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
    const std::size_t p = s.find("blocked_clients:");
    return p == std::string::npos ? -1 : std::atoi(s.c_str() + p + 16);
  };
  ASSERT_TRUE(harness::await([&] { return blocked() == 1; }, 2s));
  b_.relay->pause();
  ASSERT_EQ(::kill(redis_->pid(), SIGSTOP), 0);
  const auto paused = Clock::now();
  std::this_thread::sleep_until(paused + 3500ms);
  b_.relay->resume();
  const auto resumed = Clock::now();
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 8s);
  EXPECT_TRUE(gone && ms_since(resumed) <= double((kBlock + 2 * kIo + kSlack).count()))
      << "gone=" << gone << " after " << ms_since(resumed) << " ms; B: " << describe(b_);
}

// ---- 7. never clear needlessly: a storm of pauses past the bound, Redis fine ------------------

TEST_F(LivenessAttack, RepeatedPausesPastTheBoundWithRedisFineNeverClear) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .b_via_proxy = false}));
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 6; ++i) {
    const std::string key = "s" + std::to_string(i), tag = "t.s" + std::to_string(i);
    set_everywhere(key, tag);
    // Stop it at a random point of its loop (not a synchronisation: placement).
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 250000));
    b_.relay->pause();
    a_.cache->invalidate(tag);
    std::this_thread::sleep_for(1300ms);  // the pause itself, past the 1 s bound
    b_.relay->resume();
    ASSERT_TRUE(harness::await([&] { return !present(b_, key); }, 5s)) << "round " << i << ": " << describe(b_);
    ASSERT_TRUE(settled()) << "round " << i << ": " << describe(b_);
  }
  EXPECT_EQ(status(b_).stale_clears, 0u) << describe(b_);
  EXPECT_EQ(clears(b_), 0u) << describe(b_);
  EXPECT_EQ(clears(a_), 0u);
}

}  // namespace
}  // namespace hostcache::relay
