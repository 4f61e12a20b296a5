// Adversarial tests of the relay, seventh round: review of 88a262a and
// 5e0c23b (a resume before the bound spends nothing; an exit within one
// timeout of a resume takes its grace back; the state script skips the scan
// of an epochs hash of more than 100,002 fields). Real processes:
// redis-server (killed, restarted from a snapshot, paused with CLIENT PAUSE,
// SIGSTOP and DEBUG SLEEP, replaced), hostcache-relay (SIGCONT, SIGTERM,
// kill -9), the hostile proxy, a hung listener. The fixture is
// liveness_world.h's.
//
// The promise (docs/hostcache-relay.md): a host that missed invalidations
// (trimmed, away too long, Redis lost data or was replaced) clears before it
// serves again; no host serves an entry another host invalidated more than
// S + G (+ one timeout) ago, S + 2G (+ one timeout) across a restart; a relay
// never hangs; it never clears with Redis and its link fine.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <thread>
#include <tuple>

#include "hostile_proxy.h"
#include "liveness_world.h"
#include "relay.h"
#include "relay_harness.h"
#include "two_hosts.h"

namespace hostcache::relay {
namespace {

using namespace std::chrono_literals;
using harness::RedisClient;
using harness::RedisServer;
using harness::RelayProcess;
using harness::Reply;
using two_hosts::clears;
using two_hosts::Host;
using two_hosts::HostileProxy;
using two_hosts::LivenessWorld;
using two_hosts::Mode;
using two_hosts::ms_since;
using two_hosts::present;
using two_hosts::set_on;
using two_hosts::sleep_until_wall;
using two_hosts::status;
using two_hosts::wall_now;
using two_hosts::World;
using Clock = std::chrono::steady_clock;

const std::string kStream = "hc:live6";

StreamId pos_of(Host& h) {
  const auto s = status(h);
  return StreamId{s.last_id_ms, s.last_id_seq};
}

// A "Redis" that hangs: a listening socket on the port that never accepts
// (the kernel completes the handshakes; what is sent waits unread).
class HungListener {
 public:
  explicit HungListener(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(std::uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd_, 1024) == 0;
  }
  ~HungListener() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return ok_; }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

class LivenessAttack6 : public LivenessWorld {
 protected:
  LivenessAttack6() : LivenessWorld(kStream, "live6") {}

  // LivenessWorld::start with redis-server's own arguments (DEBUG enabled):
  // B and A straight to Redis.
  void start_with_redis_args(const World& s, std::vector<std::string> redis_extra) {
    setup_ = s;
    redis_ = std::make_unique<RedisServer>(dir_.path(), harness::free_port(), std::move(redis_extra));
    redis_->start();
    open_host(b_, "B");
    start_b();
    open_host(a_, "A");
    start_a();
    ASSERT_TRUE(settled()) << "not settled; B: " << describe(b_) << "; A: " << describe(a_);
    for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  }
  // One EVAL on a connection of the test's own, without a timeout.
  static Reply slow_eval(int port, const std::vector<std::string>& args) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c == nullptr || c->err) {
      if (c) redisFree(c);
      return nullptr;
    }
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    Reply r(static_cast<redisReply*>(redisCommandArgv(c, int(argv.size()), argv.data(), lens.data())));
    redisFree(c);
    return r;
  }
};

// ---- 1. a rollback hidden by a newer publish -----------------------------------------------
//
// The doc: "A rollback is detected by hosts that saw (or published) more
// than the snapshot holds, and through the rotated nonce by all others."
// resync_kind's test is "the stream's last id is below the last id we read
// (or published)". But after a restart from an older snapshot, the next
// XADD gets an id from Redis's clock: above every id the lost events had.
// Any host that reconnects first and publishes (its outbox kept events
// while it was down) lifts the stream's last id above what the others
// read, and then none of them sees a rollback.
//
// A's relay is down (an upgrade) from the snapshot on; B invalidates t.k
// (B reads its own event: B saw more than the snapshot holds); B's link is
// partitioned for a moment (well within the bound) while Redis restarts
// from the snapshot; A's relay comes back first, resyncs by replay (its
// position is the snapshot's end) and publishes what its host invalidated
// meanwhile; then B's partition heals and B resyncs by replay too (the
// stream is past its position). Nobody rotates the nonce, nobody clears:
// A serves k, which B invalidated, for ever.
TEST_F(LivenessAttack6, ARollbackHiddenByAPublishBeforeTheWitnessReconnects) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .block_ms = 200, .io_ms = 400, .b_via = World::Via::hostile}));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "keepa", "t.keepa"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keepb", "t.keepb"));
  ASSERT_TRUE(settled());
  StreamId snap, lost;
  {
    RedisClient rc(redis_->port());
    Reply saved = rc.cmd({"SAVE"});
    ASSERT_TRUE(saved && saved->type == REDIS_REPLY_STATUS);
    snap = rc.last_generated(kStream);
    a_.relay->kill9();  // A's relay down across the rollback (its position: the snapshot's end)
    ASSERT_EQ(pos_of(a_), snap);
    b_.cache->invalidate("t.k");
    ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > snap; }, 5s)) << describe(b_);
    lost = rc.last_generated(kStream);
    ASSERT_TRUE(harness::await([&] { return pos_of(b_) == lost; }, 5s)) << "B did not read its event: " << describe(b_);
  }
  proxy_->set_mode(Mode::swallow);  // B partitioned, briefly (the bound is 5 s)
  const auto t0 = Clock::now();
  redis_->kill9();
  redis_->start();  // loads dump.rdb: the stream ends at the snapshot, the nonce is the same
  RedisClient rc(redis_->port());
  ASSERT_EQ(rc.last_generated(kStream), snap) << "the snapshot was not loaded";
  a_.cache->invalidate("t.z");  // A's host invalidated something while its relay was down
  start_a("2");
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > lost; }, 5s))
      << "A did not publish: " << describe(a_);
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  std::cout << "  partition + restart + A's publish: " << ms_since(t0) << " ms; resync_lost A="
            << status(a_).resync_lost << " B=" << status(b_).resync_lost << "\n";
  const bool gone = harness::await([&] { return !present(a_, "k"); }, allowed());
  EXPECT_TRUE(gone) << "Redis rolled back past B's invalidation of t.k (id " << lost.str() << ", snapshot ends at "
                    << snap.str() << "); A's publish (stream now at " << rc.last_generated(kStream).str()
                    << ") hid the rollback from B, the one host that saw more than the snapshot: no host "
                    << "rotated the nonce, no host cleared, A still serves k. A: " << describe(a_)
                    << "; B: " << describe(b_);
}

// ---- 2. a resume's grace, used up to one timeout, and then a start's whole grace ---------------
//
// 5e0c23b: an exit within io_timeout of a resume takes the resume's grace
// back ("unspent"), so that the next start gives one. But up to one timeout
// of it was spent: with Redis unreachable, the relay ran overdue for that
// long after the resume, then the next start gets a whole G. And a start
// against a hung Redis (accepts, never answers) checks the bound only
// between commands, up to one timeout late. The contract across a restart:
// S + 2G + one timeout (liveness4's limit). Here: B overdue at S, a SIGCONT
// at S + G - 0.4 s (the resume restarts G and marks the proof), SIGTERM
// 2.3 s later (within the 2.5 s timeout: the mark is taken back), a restart
// at once against a Redis that now hangs.
TEST_F(LivenessAttack6, ASigtermWithinATimeoutOfAResumeThenARestartAgainstAHungRedis) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .block_ms = 200, .io_ms = 2500, .with_a = false}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  const std::int64_t S = this->S().count(), G = this->G().count(), io = setup_.io_ms;
  const int port = redis_->port();
  redis_->kill9();
  std::this_thread::sleep_for(300ms);
  const std::int64_t proof = status(b_).proven_ms;
  sleep_until_wall(proof + S + G - 400);
  ASSERT_TRUE(present(b_, "k")) << "cleared before S + G: " << describe(b_);
  ASSERT_EQ(status(b_).proven_ms & 1, 0) << describe(b_);
  ::kill(b_.relay->pid(), SIGCONT);
  const std::int64_t cont = wall_now();
  ASSERT_TRUE(harness::await([&] { return (status(b_).proven_ms & 1) != 0; }, 1s))
      << "the resume did not mark the proof: " << describe(b_);
  HungListener hung(port);  // Redis comes back hung (frozen, or a half-dead host)
  ASSERT_TRUE(hung.ok());
  sleep_until_wall(cont + io - 200);
  ASSERT_TRUE(present(b_, "k")) << describe(b_);
  b_.relay->terminate();
  const bool marked = (status(b_).proven_ms & 1) != 0;
  start_b("2");
  const bool gone = harness::await([&] { return !present(b_, "k"); }, 30s);
  const std::int64_t age = wall_now() - proof;
  const std::int64_t limit = S + 2 * G + io + 500;
  std::cout << "  SIGCONT at S + G - 0.4 s, SIGTERM " << (io - 200) << " ms later (saved mark at exit: " << marked
            << "), restart against a hung Redis: cleared " << age << " ms after the proof (S + 2G + timeout = "
            << S + 2 * G + io << ")\n";
  EXPECT_TRUE(gone && age <= limit) << "B served k " << age << " ms past its last proof (limit " << limit
                                    << " = S + 2G + timeout + 0.5 s): the resume's grace, run for "
                                    << (io - 200) << " ms, was given back whole at exit, and the start's G came on top; "
                                    << "B: " << describe(b_);
}

// ---- 3. a trimmed host against an epochs hash past the scan limit, and at it -------------------
//
// Param: the epochs hash's size at the trimmed resync (HLEN), and B's
// --timeout-ms. The scan cap is 100,000 fields, 250 a millisecond of the
// timeout where that is fewer (docs/hostcache-relay.md). Over the cap, not
// scanned: B must clear once (it may not keep anything: "the trimmed host
// clears once") and then settle. Within it: B must bump t.k, keep the rest
// and settle. Either way A, untrimmed, never clears. Before the cap
// followed the timeout, 100,002 fields with --timeout-ms 60 (a valid value:
// 10 ms is the least) made a scan of ~100 ms refused at every reconnect:
// B never resynced and cleared every S + G with Redis fine.
class HashAtTheLimit : public LivenessAttack6, public ::testing::WithParamInterface<std::tuple<long, int>> {};

TEST_P(HashAtTheLimit, ATrimmedHostAgainstAnEpochsHashAtTheScanLimit) {
  const auto [hlen, io] = GetParam();
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .block_ms = 100, .io_ms = io}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  b_.relay->kill9();
  RedisClient rc(redis_->port());
  const StreamId before = rc.last_generated(kStream);
  a_.cache->invalidate("t.k");
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > before; }, 5s)) << describe(a_);
  const std::string epochs = kStream + ":epochs";
  Reply n0 = rc.cmd({"HLEN", epochs});
  ASSERT_TRUE(n0 && n0->type == REDIS_REPLY_INTEGER);
  const long fill = hlen - long(n0->integer);
  ASSERT_GT(fill, 0);
  for (long done = 0; done < fill; done += 50000) {
    Reply f = slow_eval(redis_->port(), {"EVAL",
                                         "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do "
                                         "redis.call('HSET', KEYS[1], 't:u' .. i, '1-1') end return 1",
                                         "1", epochs, std::to_string(done), std::to_string(std::min(fill, done + 50000) - 1)});
    ASSERT_TRUE(f && f->type == REDIS_REPLY_INTEGER);
  }
  Reply n1 = rc.cmd({"HLEN", epochs});
  ASSERT_TRUE(n1 && n1->type == REDIS_REPLY_INTEGER && n1->integer == hlen) << (n1 ? n1->integer : -1);
  // One pass of the state script's scan, timed (the same loop, without the reply).
  const auto s0 = Clock::now();
  Reply sc = slow_eval(redis_->port(),
                       {"EVAL",
                        "local c, n = '0', 0 repeat local r = redis.call('HSCAN', KEYS[1], c, 'COUNT', 1000) c = r[1] "
                        "for i = 1, #r[2], 2 do local ms, seq = string.match(r[2][i + 1], '^(%d+)-(%d+)$') "
                        "if r[2][i] ~= 'nonce' and ms and tonumber(ms) > 5 then n = n + 1 end end until c == '0' return n",
                        "1", epochs});
  const double scan_ms = ms_since(s0);
  ASSERT_TRUE(sc && sc->type == REDIS_REPLY_INTEGER);
  std::cout << "  HLEN " << hlen << ": one scan " << scan_ms << " ms (B's --timeout-ms " << io << ")\n";
  ASSERT_TRUE(two_hosts::settled(redis_->port(), kStream, {&a_}, 10s)) << describe(a_);
  rc.cmd({"XTRIM", kStream, "MAXLEN", "0"});
  const std::uint64_t sc0 = status(b_).stale_clears;
  const std::uint64_t ca0 = status(a_).stale_clears;
  start_b("2");
  const bool ok = settled(15s);
  EXPECT_TRUE(ok) << "B trimmed past, HLEN " << hlen << ", --timeout-ms " << io << " (one scan " << scan_ms
                  << " ms), never resynced: " << describe(b_) << " 'resync failed'="
                  << two_hosts::count_in_log(b_, "resync failed");
  EXPECT_FALSE(present(b_, "k")) << "t.k still served on B, trimmed past its invalidation: " << describe(b_);
  const long cap = std::clamp<long>(250L * io, 1000, 100000);
  EXPECT_EQ(status(a_).stale_clears, ca0) << "A, untrimmed, cleared while B's scans held Redis: " << describe(a_);
  EXPECT_EQ(status(b_).stale_clears, sc0) << "B cleared for want of a proof, with Redis fine: " << describe(b_);
  if (hlen > cap + 2) {
    EXPECT_FALSE(present(b_, "keep")) << "an unscanned hash (cap " << cap << ") must cost one clear: " << describe(b_);
  } else {
    EXPECT_TRUE(present(b_, "keep")) << "B cleared (stale_clears " << sc0 << " -> " << status(b_).stale_clears
                                     << "), the hash was within the scan cap " << cap << ": " << describe(b_);
  }
}
INSTANTIATE_TEST_SUITE_P(Hash, HashAtTheLimit,
                         ::testing::Values(std::make_tuple(100003L, 2000), std::make_tuple(100002L, 2000),
                                           std::make_tuple(100002L, 150), std::make_tuple(100002L, 60),
                                           std::make_tuple(15002L, 60)),
                         [](const auto& i) {
                           return "Hlen" + std::to_string(std::get<0>(i.param)) + "Timeout" +
                                  std::to_string(std::get<1>(i.param));
                         });

// ---- 4. Redis paused past the bound: CLIENT PAUSE ALL, SIGSTOP, DEBUG SLEEP --------------------
//
// Every command waits (a paused Redis accepts, and answers nothing). Each
// host must clear within S + G (+ one timeout) of the pause, whatever its
// link's state: B holds an entry A invalidates during the pause. A SIGTERM
// during the pause must end a relay within about one timeout (never a hang).
// After the pause both settle and stop clearing.
class RedisPaused : public LivenessAttack6, public ::testing::WithParamInterface<int> {};

TEST_P(RedisPaused, APausedRedisClearsEveryHostWithinTheBoundAndHangsNoRelay) {
  const int how = GetParam();  // 0 CLIENT PAUSE ALL, 1 SIGSTOP redis-server, 2 DEBUG SLEEP
  ASSERT_NO_FATAL_FAILURE(
      start_with_redis_args({.stale_bound_s = 1, .block_ms = 200, .io_ms = 400}, {"--enable-debug-command", "yes"}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "ka", "t.ka"));
  const auto pause = allowed() + 3s;
  const int secs = int(std::chrono::ceil<std::chrono::seconds>(pause).count());
  std::thread sleeper;
  const auto t0 = Clock::now();
  if (how == 0) {
    RedisClient rc(redis_->port());
    Reply p = rc.cmd({"CLIENT", "PAUSE", std::to_string(secs * 1000), "ALL"});
    ASSERT_TRUE(p && p->type == REDIS_REPLY_STATUS);
  } else if (how == 1) {
    ::kill(redis_->pid(), SIGSTOP);
  } else {
    const int port = redis_->port();
    sleeper = std::thread([port, secs] { slow_eval(port, {"DEBUG", "SLEEP", std::to_string(secs)}); });
    std::this_thread::sleep_for(50ms);
  }
  a_.cache->invalidate("t.k");
  const bool b_gone = harness::await([&] { return !present(b_, "k"); }, allowed());
  const double b_ms = ms_since(t0);
  const bool a_gone = harness::await([&] { return !present(a_, "ka"); }, 2s);
  const double a_ms = ms_since(t0);
  // A SIGTERM to A during the pause.
  const auto k0 = Clock::now();
  a_.relay->terminate();
  const double exit_ms = ms_since(k0);
  const char* name = how == 0 ? "CLIENT PAUSE ALL" : how == 1 ? "SIGSTOP redis-server" : "DEBUG SLEEP";
  std::cout << "  " << name << " " << secs << " s: B cleared after " << b_ms << " ms, A after " << a_ms
            << " ms (allowed " << allowed().count() << "); A's SIGTERM took " << exit_ms << " ms\n";
  EXPECT_TRUE(b_gone) << name << ": B served k, invalidated by A during the pause, past " << allowed().count()
                      << " ms: " << describe(b_);
  EXPECT_TRUE(a_gone && a_ms <= double(allowed().count()) + 2000) << name << ": A never cleared: " << describe(a_);
  EXPECT_LE(exit_ms, double(setup_.io_ms) + 1000) << name << ": a relay's SIGTERM during the pause hung";
  // The pause ends.
  if (how == 0) {
    while (ms_since(t0) < double(secs * 1000) + 200) std::this_thread::sleep_for(50ms);
  } else if (how == 1) {
    while (ms_since(t0) < double(secs * 1000)) std::this_thread::sleep_for(50ms);
    ::kill(redis_->pid(), SIGCONT);
  }
  if (sleeper.joinable()) sleeper.join();
  start_a("2");
  ASSERT_TRUE(settled(15s)) << name << ": not settled after the pause; B: " << describe(b_) << "; A: " << describe(a_);
  for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  const std::uint64_t sb = status(b_).stale_clears, sa = status(a_).stale_clears;
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k2", "t.k2"));
  a_.cache->invalidate("t.k2");
  EXPECT_TRUE(harness::await([&] { return !present(b_, "k2"); }, 3s)) << "not delivered after the pause: " << describe(b_);
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(status(b_).stale_clears, sb) << name << ": B cleared after the pause, Redis fine: " << describe(b_);
  EXPECT_EQ(status(a_).stale_clears, sa) << name << ": A cleared after the pause, Redis fine: " << describe(a_);
}
INSTANTIATE_TEST_SUITE_P(Pause, RedisPaused, ::testing::Values(0, 1, 2), [](const auto& i) {
  return std::string(i.param == 0 ? "ClientPauseAll" : i.param == 1 ? "Sigstop" : "DebugSleep");
});

// ---- 5. Redis replaced by another live Redis, whose nonce is older -------------------------------
//
// A restarted relay knows no nonce (it is not saved in the segment): it
// takes a nonce created after its last id for a loss. A Redis that replaces
// the first one (a failover to a standby that is not a replica, a DNS or
// config change) and that had its own relays, so its nonce is older than
// B's position and its stream runs ahead of it, looks like the same data
// set: B replays from an id of the old stream in the new one, and misses
// everything A published to the old Redis while B's relay was down.
TEST_F(LivenessAttack6, ARedisReplacedByAnotherWithAnOlderNonceIsALoss) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  // The standby: its own data set, its own host C publishing.
  RedisServer r2(dir_.path() + "/r2", harness::free_port());
  ASSERT_EQ(::system(("mkdir -p " + dir_.path() + "/r2").c_str()), 0);
  r2.start();
  Host c;
  open_host(c, "C");
  extra_.push_back(std::make_unique<RelayProcess>(relay_args(c, r2.port()), dir_.path() + "/relay-C.log"));
  extra_.back()->start();
  ASSERT_TRUE(two_hosts::settled(r2.port(), kStream, {&c}, 10s)) << describe(c);
  // B's position moves past the standby's nonce.
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  std::this_thread::sleep_for(20ms);
  a_.cache->invalidate("t.first");
  ASSERT_TRUE(settled());
  b_.relay->kill9();
  a_.cache->invalidate("t.k");  // B misses it: its relay is down
  ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 5s));
  // The standby's stream runs ahead of B's position.
  RedisClient rc2(r2.port());
  const StreamId bpos = pos_of(b_);
  c.cache->invalidate("t.c");
  ASSERT_TRUE(harness::await([&] { return rc2.last_generated(kStream) > bpos; }, 5s));
  Reply n2 = rc2.cmd({"GET", kStream + ":nonce"});
  ASSERT_TRUE(n2 && n2->type == REDIS_REPLY_STRING);
  std::cout << "  standby nonce " << std::string(n2->str, n2->len) << ", B's position " << bpos.str() << "\n";
  // Redis replaced: B's relay restarts against the standby.
  b_.relay = std::make_unique<RelayProcess>(relay_args(b_, r2.port()), dir_.path() + "/relay-B2.log");
  b_.relay->start();
  ASSERT_TRUE(harness::await([&] { return status(b_).connected; }, 10s)) << describe(b_);
  const bool gone = harness::await([&] { return !present(b_, "k"); }, allowed());
  EXPECT_TRUE(gone) << "B's Redis was replaced (another data set, nonce older than B's position, stream ahead of "
                    << "it): B resynced by replay and still serves k, invalidated by A on the old Redis while B "
                    << "was down; B: " << describe(b_);
  extra_.clear();
}

}  // namespace
}  // namespace hostcache::relay
