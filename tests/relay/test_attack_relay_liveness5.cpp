// Adversarial tests of the relay, sixth round: review of 27d54c5, c26286e and
// the relay parts of 3c42d30 and 357e86e (the boot nonce in the epochs hash;
// the state script's probe writes; the trimmed resync's epochs filtered in
// Lua with HSCAN; the start and resume graces, marked by the proof's odd
// millisecond). Real processes: redis-server, hostcache-relay, the hostile
// proxy. The fixture is liveness_world.h's.
//
// The promise (docs/hostcache-relay.md): an invalidation reaches every host
// within milliseconds while Redis is fine; no host serves an entry another
// host invalidated more than S + G (+ one timeout) ago; a relay never clears
// when Redis and its link are fine.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <random>
#include <sstream>

#include "hostile_proxy.h"
#include "relay.h"
#include "relay_harness.h"
#include "liveness_world.h"
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
using two_hosts::Mode;
using two_hosts::present;
using two_hosts::set_on;
using two_hosts::status;
using two_hosts::LivenessWorld;
using two_hosts::ms_since;
using two_hosts::World;
using Clock = std::chrono::steady_clock;

const std::string kStream = "hc:live5";

class LivenessAttack5 : public LivenessWorld {
 protected:
  LivenessAttack5() : LivenessWorld(kStream, "live5") {}

  // Waits until B saves a proof newer than the one it has now: a heartbeat just answered.
  bool fresh_proof(Host& h) {
    const std::int64_t p0 = status(h).proven_ms;
    return harness::await([&] { return status(h).proven_ms > p0 + 50; }, 5s);
  }
};

// ---- 1. a resume that extends nothing still spends the proof's one grace ---------------------
//
// c26286e: "a resume before that [overdue] gives nothing and marks nothing".
// It marks nothing in the segment, but resumed() still sets extended_for =
// last_contact, the in-memory "once per proof". A stray SIGCONT (a
// supervisor's, a `kill -CONT` of every relay, or after_wait's "the wait took
// 100 ms longer than asked": any scheduling stall) while the relay is
// current, then a stop past the bound before the next proof (the heartbeat
// period: up to block-ms), with the links closed meanwhile (an idle NAT, a
// proxy): on resume, no grace (extended_for == last_contact), overdue_since
// = last_contact + S, long past: B clears before it reconnects, Redis fine.
// Param: 0 the control (no hiccup), 1 a bare SIGCONT, 2 a 150 ms stop.
class HiccupThenPause : public LivenessAttack5, public ::testing::WithParamInterface<int> {};

TEST_P(HiccupThenPause, APauseAfterAResumeThatExtendedNothingStillGetsItsGrace) {
  // block 1000, timeout 400: S = 3.2 s, G = 1.8 s.
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .block_ms = 1000, .io_ms = 400, .b_via = World::Via::hostile}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  const std::uint64_t sc0 = status(b_).stale_clears;
  ASSERT_TRUE(fresh_proof(b_)) << describe(b_);
  if (GetParam() == 1) {
    b_.relay->resume();  // SIGCONT to a running relay
  } else if (GetParam() == 2) {
    b_.relay->pause();
    std::this_thread::sleep_for(150ms);
    b_.relay->resume();
  }
  std::this_thread::sleep_for(30ms);
  b_.relay->pause();
  proxy_->set_mode(Mode::fin_all);  // B's links closed while it is stopped; then pass
  a_.cache->invalidate("t.k");
  std::this_thread::sleep_for(S() + G() + 500ms);
  b_.relay->resume();
  ASSERT_TRUE(settled()) << describe(b_);
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(present(b_, "k")) << "A's invalidation during the pause was not replayed: " << describe(b_);
  EXPECT_TRUE(present(b_, "keep") && status(b_).stale_clears == sc0)
      << (GetParam() == 1 ? "a bare SIGCONT" : GetParam() == 2 ? "a 150 ms stop" : "nothing")
      << " while current, then a stop of S + G + 0.5 s in the same heartbeat period with B's links closed, "
         "Redis fine: B cleared on resume (keep present="
      << present(b_, "keep") << ", stale_clears " << sc0 << " -> " << status(b_).stale_clears << "); B: "
      << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Hiccup, HiccupThenPause, ::testing::Values(0, 1, 2));

// ---- 2. stopped past the bound, then restarted (systemctl restart: SIGCONT + SIGTERM) ---------
//
// B's relay is stopped past S + G (a freezer, a debugger), Redis fine, its
// links closed meanwhile; then it is restarted. With kill -9 (no SIGCONT) the
// new relay gets its start grace and catches up by replay. With SIGTERM (the
// harness's terminate(), like systemd's, sends SIGCONT first) the dying
// process runs resumed(): overdue, so it marks the proof's grace as given
// and exits at once; the new relay finds the mark, gets no grace, and clears
// before its replay: the same downtime, with Redis fine, clears or not
// depending on the signal. Param: true = SIGTERM, false = kill -9 (control).
class StoppedThenRestarted : public LivenessAttack5, public ::testing::WithParamInterface<bool> {};

TEST_P(StoppedThenRestarted, ARelayStoppedPastTheBoundAndRestartedCatchesUpWithoutClearing) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .block_ms = 200, .io_ms = 400, .b_via = World::Via::hostile}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  const std::uint64_t sc0 = status(b_).stale_clears;
  b_.relay->pause();
  proxy_->set_mode(Mode::fin_all);
  a_.cache->invalidate("t.k");
  std::this_thread::sleep_for(S() + G() + 500ms);
  if (GetParam()) b_.relay->terminate();
  else b_.relay->kill9();
  const bool marked = (status(b_).proven_ms & 1) != 0;
  start_b("2");
  ASSERT_TRUE(settled()) << describe(b_);
  EXPECT_FALSE(present(b_, "k")) << "not replayed: " << describe(b_);
  EXPECT_TRUE(present(b_, "keep") && status(b_).stale_clears == sc0)
      << "stopped " << (S() + G() + 500ms).count() << " ms (links closed), then "
      << (GetParam() ? "SIGCONT + SIGTERM" : "kill -9") << " and restarted at once, Redis fine: the new relay "
      << "cleared before its replay (saved proof marked 'grace given'=" << marked << "; stale_clears " << sc0 << " -> "
      << status(b_).stale_clears << "); B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Signal, StoppedThenRestarted, ::testing::Values(false, true),
                         [](const auto& i) { return std::string(i.param ? "Sigterm" : "Kill9"); });

// ---- 3. the HSCAN of a large epochs hash, with the default timeouts ----------------------------
//
// 27d54c5 filters the trimmed resync's epochs in Lua: the reply is small,
// but the script still visits every field of the hash (HSCAN + string.match
// per field), inside one script: Redis does nothing else meanwhile. Measured
// here: 1.75 s for 1.1 M fields. With more fields than the timeout allows
// (default --timeout-ms 2000; the doc: "a hash of millions of per-user
// tags"), B's state call times out, B drops, reconnects and runs it again,
// for ever: B never resyncs, and every host's commands wait behind the
// scans (Redis blocked most of the time) with Redis otherwise fine.
TEST_F(LivenessAttack5, ATrimmedResyncAgainstMillionsOfTagsWithDefaultTimeouts) {
  const int fields = 2500000;
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1, .block_ms = 1000, .io_ms = 2000}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "ka", "t.ka"));
  b_.relay->kill9();
  const std::string epochs = kStream + ":epochs";
  // The test's own long-timeout connection for the fill and the measurement.
  redisContext* slow = redisConnect("127.0.0.1", redis_->port());
  ASSERT_TRUE(slow && !slow->err);
  const auto eval = [&](const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    return Reply(static_cast<redisReply*>(redisCommandArgv(slow, int(argv.size()), argv.data(), lens.data())));
  };
  for (int done = 0; done < fields; done += 250000) {
    Reply f = eval({"EVAL",
                    "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('HSET', KEYS[1], 't:u' .. i, '1-1') end "
                    "return 1",
                    "1", epochs, std::to_string(done), std::to_string(std::min(fields, done + 250000) - 1)});
    ASSERT_TRUE(f && f->type == REDIS_REPLY_INTEGER);
  }
  const auto s0 = Clock::now();
  Reply sc = eval({"EVAL",
                   "local c, n = '0', 0 repeat local r = redis.call('HSCAN', KEYS[1], c, 'COUNT', 1000) c = r[1] "
                   "for i = 2, #r[2], 2 do if string.match(r[2][i], '^(%d+)-(%d+)$') then n = n + 1 end end "
                   "until c == '0' return n",
                   "1", epochs});
  ASSERT_TRUE(sc && sc->type == REDIS_REPLY_INTEGER && sc->integer == fields);
  redisFree(slow);
  const double scan_ms = ms_since(s0);
  std::cout << "  one HSCAN pass over " << fields << " fields in a script: " << scan_ms << " ms\n";
  // The fill and the measurement held Redis too: A settles again first.
  ASSERT_TRUE(two_hosts::settled(redis_->port(), kStream, {&a_}, 20s)) << describe(a_);
  RedisClient rc(redis_->port());
  const StreamId before = rc.last_generated(kStream);
  a_.cache->invalidate("t.k");
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > before; }, 10s)) << describe(a_);
  const StreamId pub = rc.last_generated(kStream);
  ASSERT_TRUE(harness::await([&] { return StreamId{status(a_).last_id_ms, status(a_).last_id_seq} == pub; }, 5s));
  rc.cmd({"XTRIM", kStream, "MAXLEN", "0"});
  ASSERT_TRUE(harness::await([&] { return status(a_).connected; }, 10s));
  const std::uint64_t ca0 = status(a_).stale_clears;
  const auto t0 = Clock::now();
  start_b("2");
  const bool ok = settled(25s);
  const double after = ms_since(t0);
  std::cout << "  B " << (ok ? "settled" : "did not settle") << " after " << after << " ms; A: " << describe(a_)
            << "; B: " << describe(b_) << "\n";
  EXPECT_TRUE(ok) << "a host trimmed past, against an epochs hash of " << fields << " fields (one scan: " << scan_ms
                  << " ms) with the default --timeout-ms 2000, never resyncs: " << describe(b_);
  EXPECT_FALSE(present(b_, "k")) << "t.k still served on B";
  EXPECT_EQ(status(a_).stale_clears, ca0) << "A, untrimmed, cleared while B's scans held Redis: " << describe(a_);
  EXPECT_TRUE(present(a_, "ka")) << "A cleared: " << describe(a_);
}

// ---- 4. the HSCAN filter's boundary and odd tag names (a regression test) --------------------
//
// B's position is set to the id of A's event for tag "eq" (B applied it);
// A's later events, in one batch (one ms, consecutive seqs), carry tags
// named like the hash's own fields ("nonce", "probe", "g"), a binary one,
// and a 255-byte one. The stream is trimmed past B: B must bump every one
// of them (epoch newer than its position, in the same ms too).
TEST_F(LivenessAttack5, ATrimmedResyncBumpsTagsNamedLikeTheHashsFieldsAndTheSameMillisecond) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  const std::vector<std::string> tags{"nonce", "probe", "g", std::string("bin\0\r\n:x", 9), std::string(255, 'z'),
                                      "t:nonce"};
  for (std::size_t i = 0; i < tags.size(); ++i) ASSERT_NO_FATAL_FAILURE(set_on(b_, "k" + std::to_string(i), tags[i]));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "eq", "eq"));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  RedisClient rc(redis_->port());
  a_.cache->invalidate("eq");
  ASSERT_TRUE(harness::await([&] { return !present(b_, "eq"); }, 5s));
  ASSERT_TRUE(settled());
  b_.relay->kill9();
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "eq", "eq"));  // set after B applied "eq": must stay
  const StreamId eq_id = rc.last_generated(kStream);
  auto st = status(b_);
  ASSERT_EQ((StreamId{st.last_id_ms, st.last_id_seq}), eq_id);
  for (const auto& t : tags) a_.cache->invalidate(t);
  ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 5s));
  Reply r = rc.cmd({"XRANGE", kStream, "(" + eq_id.str(), "+"});
  ASSERT_TRUE(r && r->type == REDIS_REPLY_ARRAY);
  std::cout << "  " << r->elements << " events after B's position:";
  for (std::size_t i = 0; i < r->elements; ++i) std::cout << " " << std::string(r->element[i]->element[0]->str);
  std::cout << "\n";
  rc.cmd({"XTRIM", kStream, "MAXLEN", "0"});
  start_b("2");
  ASSERT_TRUE(settled()) << describe(b_);
  EXPECT_EQ(status(b_).resync_trimmed, st.resync_trimmed + 1) << describe(b_);
  for (std::size_t i = 0; i < tags.size(); ++i) {
    EXPECT_FALSE(present(b_, "k" + std::to_string(i))) << "tag #" << i << " (size " << tags[i].size()
                                                       << ") not bumped by the trimmed resync: " << describe(b_);
  }
  EXPECT_TRUE(present(b_, "keep")) << "B cleared: " << describe(b_);
  std::cout << "  'eq' (epoch == B's position) " << (present(b_, "eq") ? "kept" : "bumped (a spurious miss)") << "\n";
}

// ---- 5. a crash loop with Redis fine (a regression test) --------------------------------------
//
// B's relay dies every 150-600 ms (kill -9 or SIGTERM, alternately) and is
// restarted at once, 20 times, while A invalidates a fresh tag each round:
// B must apply every one of them, and neither host may clear.
TEST_F(LivenessAttack5, ACrashLoopWithRedisFineNeverClearsAndLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
  ASSERT_NO_FATAL_FAILURE(set_on(a_, "keepa", "t.keepa"));
  std::mt19937 rng(61);
  const std::uint64_t sa0 = status(a_).stale_clears;
  for (int i = 0; i < 20; ++i) {
    ASSERT_NO_FATAL_FAILURE(set_on(b_, "r" + std::to_string(i), "t.r" + std::to_string(i)));
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 450));
    a_.cache->invalidate("t.r" + std::to_string(i));
    if (i % 2) b_.relay->kill9();
    else b_.relay->terminate();
    start_b(std::to_string(i));
  }
  ASSERT_TRUE(settled()) << describe(b_);
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(present(b_, "r" + std::to_string(i))) << "round " << i << " lost";
  EXPECT_TRUE(present(b_, "keep")) << "B cleared in a crash loop with Redis fine: " << describe(b_);
  EXPECT_TRUE(present(a_, "keepa") && status(a_).stale_clears == sa0) << "A cleared: " << describe(a_);
  EXPECT_EQ(status(b_).resync_lost, 0u) << describe(b_);
}

// ---- 6. two fresh relays booting at once on an empty Redis, a third joining ------------------
//
// Both see no nonce: one script creates it, the other must not rotate it
// (which would make the first clear, and a third see "lost"). Then
// invalidations flow both ways, no host clears.
TEST_F(LivenessAttack5, TwoRelaysBootingAtOnceOnAnEmptyRedisAgreeOnOneNonce) {
  setup_ = {.stale_bound_s = 1};
  redis_ = std::make_unique<RedisServer>(dir_.path(), harness::free_port());
  redis_->start();
  open_host(a_, "A");
  open_host(b_, "B");
  a_.relay = std::make_unique<RelayProcess>(relay_args(a_, redis_->port()), dir_.path() + "/relay-A.log");
  b_.relay = std::make_unique<RelayProcess>(relay_args(b_, redis_->port()), dir_.path() + "/relay-B.log");
  a_.relay->start();
  b_.relay->start();
  ASSERT_TRUE(settled()) << "A: " << describe(a_) << "; B: " << describe(b_);
  for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  for (int i = 0; i < 5; ++i) {
    ASSERT_NO_FATAL_FAILURE(set_on(b_, "b" + std::to_string(i), "t.b" + std::to_string(i)));
    ASSERT_NO_FATAL_FAILURE(set_on(a_, "a" + std::to_string(i), "t.a" + std::to_string(i)));
    a_.cache->invalidate("t.b" + std::to_string(i));
    b_.cache->invalidate("t.a" + std::to_string(i));
    EXPECT_TRUE(harness::await([&] { return !present(b_, "b" + std::to_string(i)); }, 3s)) << describe(b_);
    EXPECT_TRUE(harness::await([&] { return !present(a_, "a" + std::to_string(i)); }, 3s)) << describe(a_);
  }
  RedisClient rc(redis_->port());
  Reply m = rc.cmd({"HGET", kStream + ":epochs", "nonce"});
  Reply n = rc.cmd({"GET", kStream + ":nonce"});
  EXPECT_TRUE(m && n && m->type == REDIS_REPLY_STRING && n->type == REDIS_REPLY_STRING &&
              std::string(m->str, m->len) == std::string(n->str, n->len));
  EXPECT_EQ(clears(a_) + clears(b_), 0u) << "A: " << describe(a_) << "; B: " << describe(b_);
  EXPECT_EQ(status(a_).resync_lost + status(b_).resync_lost, 0u);
}

}  // namespace
}  // namespace hostcache::relay
