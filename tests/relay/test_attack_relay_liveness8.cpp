// Adversarial tests of the relay, ninth round: review of 70c5d2d (vanished():
// an id read (pos) or published (in memory) that the stream reaches back to
// but no longer holds, above XINFO max-deleted-entry-id, is a rollback).
// Real processes: redis-server (SAVE, kill -9, restarted from the snapshot),
// relays (kill -9 and restart), two hostile proxies, an operator's XDEL /
// XSETID. The fixture is liveness_world.h's.
//
// The promise (docs/hostcache-relay.md): a host that missed invalidations
// (Redis lost data, rolled back, was replaced) clears before it serves
// again; "a rollback is detected by hosts that saw (or published) more than
// the snapshot holds, and through the rotated nonce by all others"; a relay
// never clears with Redis and its link fine.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <thread>

#include "hostile_proxy.h"
#include "liveness_world.h"
#include "relay.h"
#include "relay_harness.h"
#include "two_hosts.h"

namespace hostcache::relay {
namespace {

using namespace std::chrono_literals;
using harness::RedisClient;
using harness::RelayProcess;
using harness::Reply;
using two_hosts::clears;
using two_hosts::Host;
using two_hosts::HostileProxy;
using two_hosts::LivenessWorld;
using two_hosts::Mode;
using two_hosts::ms_since;
using two_hosts::present;
using two_hosts::ProxyTimes;
using two_hosts::set_on;
using two_hosts::status;
using two_hosts::World;
using Clock = std::chrono::steady_clock;

const std::string kStream = "hc:live8";

StreamId pos_of(Host& h) {
  const auto s = status(h);
  return StreamId{s.last_id_ms, s.last_id_seq};
}

std::string nonce_of(RedisClient& rc) {
  Reply r = rc.cmd({"GET", kStream + ":nonce"});
  return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string();
}

// The id of the stream's first entry (zero when empty or missing).
StreamId first_of(RedisClient& rc) {
  Reply r = rc.cmd({"XRANGE", kStream, "-", "+", "COUNT", "1"});
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return {};
  const redisReply* e = r->element[0];
  if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 || e->element[0]->type != REDIS_REPLY_STRING) return {};
  return StreamId::parse(std::string(e->element[0]->str, e->element[0]->len)).value_or(StreamId{});
}

std::string xinfo_field(RedisClient& rc, const std::string& field) {
  Reply r = rc.cmd({"XINFO", "STREAM", kStream});
  if (!r || r->type != REDIS_REPLY_ARRAY) return {};
  for (std::size_t i = 0; i + 1 < r->elements; i += 2) {
    const redisReply* k = r->element[i];
    const redisReply* v = r->element[i + 1];
    if (k->type == REDIS_REPLY_STRING && std::string(k->str, k->len) == field) {
      if (v->type == REDIS_REPLY_STRING) return std::string(v->str, v->len);
      if (v->type == REDIS_REPLY_INTEGER) return std::to_string(v->integer);
    }
  }
  return {};
}

class LivenessAttack8 : public LivenessWorld {
 protected:
  LivenessAttack8() : LivenessWorld(kStream, "live8") {}
  void TearDown() override {
    LivenessWorld::TearDown();  // the relays first, then A's proxy
    proxy_a_.reset();
  }
  // Host A's relay through a hostile proxy of its own (B's is proxy_).
  void start_a_via_proxy(const std::string& suffix = "") {
    if (!proxy_a_) proxy_a_ = std::make_unique<HostileProxy>(redis_->port(), ProxyTimes{});
    if (!a_.cache) open_host(a_, "A");
    a_.relay = std::make_unique<RelayProcess>(relay_args(a_, proxy_a_->port()), dir_.path() + "/relay-A" + suffix + ".log");
    a_.relay->start();
  }
  // The common opening: B through proxy_, A through proxy_a_, both settled;
  // B caches k (tag t.k) and keep; SAVE. Then B hears nothing (swallow), A
  // invalidates t.k (event E, after the snapshot) and publishes it; if
  // `a_reads`, A reads E back (its position is E), else it does not (its
  // XREADs hear nothing: only its publish knows E). Then A hears nothing.
  void open_and_lose_e(bool a_reads) {
    ASSERT_NO_FATAL_FAILURE(start(
        {.stale_bound_s = 20, .block_ms = 200, .io_ms = 400, .with_a = false, .b_via = World::Via::hostile,
         .extra_args = extra_}));
    start_a_via_proxy();
    ASSERT_TRUE(settled()) << "B: " << describe(b_) << "; A: " << describe(a_);
    for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
    ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
    ASSERT_NO_FATAL_FAILURE(set_on(b_, "keep", "t.keep"));
    RedisClient rc(redis_->port());
    Reply saved = rc.cmd({"SAVE"});
    ASSERT_TRUE(saved && saved->type == REDIS_REPLY_STATUS);
    snap_ = rc.last_generated(kStream);
    nonce0_ = nonce_of(rc);
    ASSERT_EQ(pos_of(a_), snap_);
    ASSERT_EQ(pos_of(b_), snap_);
    proxy_->set_mode(Mode::swallow);
    if (!a_reads) proxy_a_->set_mode(Mode::sub_partial);
    a_.cache->invalidate("t.k");
    ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > snap_; }, 5s)) << describe(a_);
    lost_ = rc.last_generated(kStream);
    ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 5s));
    if (a_reads) {
      ASSERT_TRUE(harness::await([&] { return pos_of(a_) == lost_; }, 5s)) << describe(a_);
    }
    proxy_a_->set_mode(Mode::swallow);
    ASSERT_EQ(pos_of(a_), a_reads ? lost_ : snap_);
    ASSERT_EQ(pos_of(b_), snap_) << "B read A's event: not this attack";
  }
  void rollback() {
    redis_->kill9();
    redis_->start();  // loads dump.rdb: the stream ends at the snapshot, the nonce is the same
    RedisClient rc(redis_->port());
    ASSERT_EQ(rc.last_generated(kStream), snap_) << "the snapshot was not loaded";
  }
  void expect_b_dropped_k(const std::string& what) {
    RedisClient rc(redis_->port());
    const bool gone = harness::await([&] { return !present(b_, "k"); }, allowed());
    EXPECT_TRUE(gone) << what << ": Redis rolled back past A's invalidation of t.k (id " << lost_.str()
                      << ", snapshot ends at " << snap_.str() << "); stream now at "
                      << rc.last_generated(kStream).str() << ", first entry " << first_of(rc).str()
                      << ", max-deleted " << xinfo_field(rc, "max-deleted-entry-id")
                      << "; nonce rotated=" << (nonce_of(rc) != nonce0_) << "; B still serves k "
                      << allowed().count() << " ms later. A: " << describe(a_) << "; B: " << describe(b_);
  }
  std::unique_ptr<HostileProxy> proxy_a_;
  std::vector<std::string> extra_;
  StreamId snap_, lost_;
  std::string nonce0_;
};

// ---- 1. the publisher restarted: `published` is in memory only ----------------------------------
//
// A publishes E (invalidate t.k) and nobody reads it (A's XREADs and all of
// B hear nothing for a moment). Redis dies and comes back from a snapshot
// taken before E; A's relay dies too (the same power cut, an OOM kill, a
// deploy) and restarts. Its saved position is the snapshot's end (held), its
// cursor is past E (never published again), `published` is gone with the
// process: replay. B's position is held too: replay. Nobody rotates, nobody
// clears, B serves k for ever.
TEST_F(LivenessAttack8, ARollbackOfAnUnreadPublishIsLostWithThePublishersRestart) {
  ASSERT_NO_FATAL_FAILURE(open_and_lose_e(false));
  a_.relay->kill9();
  ASSERT_NO_FATAL_FAILURE(rollback());
  proxy_->set_mode(Mode::pass);
  proxy_a_->set_mode(Mode::pass);
  start_a_via_proxy("2");
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  ASSERT_NO_FATAL_FAILURE(expect_b_dropped_k("publisher A restarted with the rollback"));
}

// Control: the same, A's relay kept running: its `published` (E) is above
// the stream's last id: rolled back, the nonce rotates, B clears.
TEST_F(LivenessAttack8, ControlARollbackOfAnUnreadPublishWithThePublisherRunning) {
  ASSERT_NO_FATAL_FAILURE(open_and_lose_e(false));
  ASSERT_NO_FATAL_FAILURE(rollback());
  proxy_->set_mode(Mode::pass);
  proxy_a_->set_mode(Mode::pass);
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  ASSERT_NO_FATAL_FAILURE(expect_b_dropped_k("publisher A running"));
}

// ---- 2. the witness's lost id trimmed below the first entry -------------------------------------
//
// vanished() needs `first entry <= id`. A read E (its position); Redis rolls
// back to before E; before A is back, B (its position held: replay) publishes
// a burst that MAXLEN ~ trims (every host's --maxlen 10: the snapshot's node
// goes). A comes back: its position is below the first entry: "trimmed", the
// epochs path, whose hash rolled back with the stream (its mark kept: the
// same boot). No rotation: B never learns of E.
// A documented limit (docs/hostcache-relay.md, "Redis rolled back"): the
// witness must come back before new entries trim the stream past what it saw.
TEST_F(LivenessAttack8, DISABLED_KnownLimit_ARollbackHiddenFromItsWitnessByATrimOfTheNewEntries) {
  extra_ = {"--maxlen", "10"};
  ASSERT_NO_FATAL_FAILURE(open_and_lose_e(true));
  ASSERT_NO_FATAL_FAILURE(rollback());
  proxy_->set_mode(Mode::pass);
  RedisClient rc(redis_->port());
  // In bursts the outbox holds (a lapped outbox publishes one clear instead).
  for (int burst = 0; burst < 15 && !(first_of(rc) > lost_); ++burst) {
    for (int i = 0; i < 20; ++i) b_.cache->invalidate("t.f" + std::to_string(burst * 20 + i));
    ASSERT_TRUE(harness::await([&] { return status(b_).cursor == outbox::head(*b_.cache); }, 5s)) << describe(b_);
  }
  ASSERT_TRUE(harness::await([&] { return first_of(rc) > lost_; }, 10s))
      << "not trimmed past E: first " << first_of(rc).str() << "; B: " << describe(b_);
  proxy_a_->set_mode(Mode::pass);
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  ASSERT_NO_FATAL_FAILURE(expect_b_dropped_k("the new entries trimmed past the witness's lost id"));
}

// ---- 3. an operator's XDEL / XSETID after the rollback raises max-deleted -----------------------
//
// vanished() needs `max-deleted-entry-id < id`. After the rollback B
// publishes F (above E: the clock); an operator removes it (XDEL of a bogus
// entry) or sets max-deleted with XSETID. A (its position E, not held) is
// back after that: E is at or below max-deleted, "maybe an XDEL": replay.
class AfterRollback : public LivenessAttack8, public ::testing::WithParamInterface<std::string> {};

TEST_P(AfterRollback, AnOperatorsDeleteMustNotHideIt) {
  ASSERT_NO_FATAL_FAILURE(open_and_lose_e(true));
  ASSERT_NO_FATAL_FAILURE(rollback());
  b_.cache->invalidate("t.f");
  proxy_->set_mode(Mode::pass);
  RedisClient rc(redis_->port());
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > lost_; }, 10s)) << describe(b_);
  const StreamId f = rc.last_generated(kStream);
  Reply r = GetParam() == "Xdel" ? rc.cmd({"XDEL", kStream, f.str()})
                                 : rc.cmd({"XSETID", kStream, f.str(), "MAXDELETEDID", f.str()});
  ASSERT_TRUE(r && r->type != REDIS_REPLY_ERROR) << (r ? std::string(r->str, r->len) : "no reply");
  ASSERT_EQ(xinfo_field(rc, "max-deleted-entry-id"), f.str());
  proxy_a_->set_mode(Mode::pass);
  ASSERT_TRUE(harness::await([&] { return status(a_).connected; }, 10s)) << describe(a_);
  b_.cache->invalidate("t.g");  // an entry after F, for every position to reach the stream's end
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  ASSERT_NO_FATAL_FAILURE(expect_b_dropped_k("an operator's " + GetParam() + " of a newer entry after the rollback"));
}
// A documented limit: an operator's XDEL or XSETID of an entry newer than the
// lost ones, before the witness is back, hides the rollback.
INSTANTIATE_TEST_SUITE_P(DISABLED_KnownLimit, AfterRollback, ::testing::Values("Xdel", "Xsetid"),
                         [](const auto& info) { return info.param; });

// ---- 4. steady state: an operator's XSETID / XDEL with Redis fine clears nobody ---------------
TEST_F(LivenessAttack8, SteadyStateOperatorXsetidAndXdelClearNobody) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .block_ms = 200, .io_ms = 400}));
  b_.cache->invalidate("t.x1");
  a_.cache->invalidate("t.x2");
  ASSERT_TRUE(settled()) << "B: " << describe(b_) << "; A: " << describe(a_);
  for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  RedisClient rc(redis_->port());
  const std::string nonce0 = nonce_of(rc);
  // XSETID: last id and max-deleted raised to the last entry, then into the future.
  StreamId last = rc.last_generated(kStream);
  Reply r = rc.cmd({"XSETID", kStream, last.str(), "MAXDELETEDID", last.str()});
  ASSERT_TRUE(r && r->type != REDIS_REPLY_ERROR);
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(settled());
  const StreamId future{last.ms + 3600 * 1000, 0};
  r = rc.cmd({"XSETID", kStream, future.str()});
  ASSERT_TRUE(r && r->type != REDIS_REPLY_ERROR);
  a_.cache->invalidate("t.x3");  // published at future-1 and so on
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(settled());
  // XDEL of the entry a host just published (and read), then of an older one.
  b_.cache->invalidate("t.x4");
  ASSERT_TRUE(settled());
  last = rc.last_generated(kStream);
  r = rc.cmd({"XDEL", kStream, last.str()});
  ASSERT_TRUE(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1);
  std::this_thread::sleep_for(1s);
  a_.cache->invalidate("t.x5");
  ASSERT_TRUE(settled());
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(clears(a_) + clears(b_), 0u) << "nonce rotated=" << (nonce_of(rc) != nonce0) << "; A: " << describe(a_)
                                         << "; B: " << describe(b_);
}

}  // namespace
}  // namespace hostcache::relay
