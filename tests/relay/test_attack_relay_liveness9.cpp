// Adversarial tests of the relay (test_attack_relay_liveness9): review of ec834e2 (the id a
// relay last published, persisted in RelayState as ms << 22 | seq, so that a
// restarted relay still notices a rollback of its unread publish; vanished()
// on the position and on `published`). Real processes: redis-server (SAVE,
// kill -9, restarted from the snapshot), relays (kill -9, restarted, moved to
// another stream), hostile proxies, an operator's XSETID. Fixture:
// liveness_world.h.
//
// The promise (docs/hostcache-relay.md): a rollback is detected by hosts that
// saw or published more than the snapshot holds ("the last id a relay
// published is saved in the segment, so a restarted relay still knows it"),
// and through the rotated nonce by all others; a crash loses nothing; no
// clear with Redis and every link fine.
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
using two_hosts::present;
using two_hosts::ProxyTimes;
using two_hosts::set_on;
using two_hosts::status;
using two_hosts::World;

const std::string kStream = "hc:live9";

StreamId pos_of(Host& h) {
  const auto s = status(h);
  return StreamId{s.last_id_ms, s.last_id_seq};
}
StreamId published_of(Host& h) {
  const auto s = status(h);
  return StreamId{s.published_id_ms, s.published_id_seq};
}
std::string nonce_of(RedisClient& rc, const std::string& stream = kStream) {
  Reply r = rc.cmd({"GET", stream + ":nonce"});
  return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string();
}
StreamId first_of(RedisClient& rc) {
  Reply r = rc.cmd({"XRANGE", kStream, "-", "+", "COUNT", "1"});
  if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return {};
  const redisReply* e = r->element[0];
  if (e->type != REDIS_REPLY_ARRAY || e->elements < 1 || e->element[0]->type != REDIS_REPLY_STRING) return {};
  return StreamId::parse(std::string(e->element[0]->str, e->element[0]->len)).value_or(StreamId{});
}
bool ok(const Reply& r) { return r && r->type != REDIS_REPLY_ERROR; }
std::string text(const Reply& r) { return r ? (r->str ? std::string(r->str, r->len) : std::string("?")) : "no reply"; }

class LivenessAttack9 : public LivenessWorld {
 protected:
  LivenessAttack9() : LivenessWorld(kStream, "live9") {}
  void TearDown() override {
    LivenessWorld::TearDown();
    proxy_a_.reset();
  }
  void start_a_via_proxy(const std::string& suffix = "") {
    if (!proxy_a_) proxy_a_ = std::make_unique<HostileProxy>(redis_->port(), ProxyTimes{.delay = a_delay_});
    if (!a_.cache) open_host(a_, "A");
    a_.relay = std::make_unique<RelayProcess>(relay_args(a_, proxy_a_->port()), dir_.path() + "/relay-A" + suffix + ".log");
    a_.relay->start();
  }
  // A relay's arguments with another --stream.
  std::vector<std::string> args_on(const Host& h, int port, const std::string& stream) {
    auto v = relay_args(h, port);
    for (std::size_t i = 0; i + 1 < v.size(); ++i) {
      if (v[i] == "--stream") v[i + 1] = stream;
    }
    return v;
  }
  // B through proxy_, A through proxy_a_, settled. `setid`: an operator's
  // XSETID of the stream (then B publishes t.pre there, read by both). B
  // caches k (t.k); SAVE. B hears nothing; A publishes E (t.k) and does not
  // read it back; A's relay saves its cursor (and its `published`).
  void open_and_publish_unread(const std::string& setid) {
    ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 20, .block_ms = 200, .io_ms = 400, .with_a = false,
                                   .b_via = World::Via::hostile, .extra_args = args_extra_}));
    start_a_via_proxy();
    ASSERT_TRUE(settled()) << "B: " << describe(b_) << "; A: " << describe(a_);
    RedisClient rc(redis_->port());
    if (!setid.empty()) {
      Reply r = rc.cmd({"XSETID", kStream, setid});
      ASSERT_TRUE(ok(r)) << text(r);
      b_.cache->invalidate("t.pre");
      ASSERT_TRUE(settled()) << "B: " << describe(b_) << "; A: " << describe(a_);
    }
    for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
    ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
    Reply saved = rc.cmd({"SAVE"});
    ASSERT_TRUE(saved && saved->type == REDIS_REPLY_STATUS);
    snap_ = rc.last_generated(kStream);
    ASSERT_EQ(pos_of(b_), snap_);
    proxy_->set_mode(Mode::swallow);
    proxy_a_->set_mode(Mode::sub_partial);
    a_.cache->invalidate("t.k");
    ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > snap_; }, 5s)) << describe(a_);
    lost_ = rc.last_generated(kStream);
    ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 5s));
    const auto hb = status(a_).heartbeat_ms;  // one more whole save() after the one that moved the cursor
    ASSERT_TRUE(harness::await([&] { return status(a_).heartbeat_ms > hb; }, 5s));
    proxy_a_->set_mode(Mode::swallow);
    ASSERT_EQ(pos_of(a_), snap_) << "A read its own E: not this attack";
    ASSERT_EQ(pos_of(b_), snap_) << "B read A's E: not this attack";
    std::cerr << "E = " << lost_.str() << "; A saved published = " << published_of(a_).str() << "\n";
  }
  void rollback() {
    redis_->kill9();
    redis_->start();
    RedisClient rc(redis_->port());
    ASSERT_EQ(rc.last_generated(kStream), snap_) << "the snapshot was not loaded";
  }
  std::unique_ptr<HostileProxy> proxy_a_;
  std::chrono::milliseconds a_delay_{0};
  std::vector<std::string> args_extra_;
  StreamId snap_, lost_;
};

// ---- 1. `published` that does not fit ms << 22 | seq is saved as unknown -----------------------
//
// liveness8's ARollbackOfAnUnreadPublishIsLostWithThePublishersRestart, with
// ids that an operator's XSETID made: a sequence of 2^22 or more (ms ahead of
// the clock: XADD * then counts seq up within that ms), or ms at or past 2^42.
// set_relay_status stores 0 (unknown) for such an id (src/outbox.cpp:182-184);
// the restarted A has no `published`, its position is held: replay; B's too.
class UnreadPublish : public LivenessAttack9, public ::testing::WithParamInterface<std::string> {};

TEST_P(UnreadPublish, ARestartedPublisherStillDetectsTheRollbackOfItsUnreadPublish) {
  std::string setid;
  const std::int64_t wall = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count();
  if (GetParam() == "SeqPast22Bits") setid = std::to_string(wall + 3600 * 1000) + "-4194304";
  if (GetParam() == "MsPast42Bits") setid = std::to_string(std::uint64_t{1} << 42) + "-0";
  ASSERT_NO_FATAL_FAILURE(open_and_publish_unread(setid));
  a_.relay->kill9();
  ASSERT_NO_FATAL_FAILURE(rollback());
  proxy_->set_mode(Mode::pass);
  proxy_a_->set_mode(Mode::pass);
  start_a_via_proxy("2");
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  RedisClient rc(redis_->port());
  const bool gone = harness::await([&] { return !present(b_, "k"); }, allowed());
  EXPECT_TRUE(gone) << "Redis rolled back past A's unread publish of t.k (E " << lost_.str() << ", snapshot "
                    << snap_.str() << "), A restarted; A's saved published was " << published_of(a_).str()
                    << "; stream now " << rc.last_generated(kStream).str() << "; B still serves k. A: "
                    << describe(a_) << "; B: " << describe(b_);
}
INSTANTIATE_TEST_SUITE_P(Ids, UnreadPublish, ::testing::Values("Control"), [](const auto& info) { return info.param; });
// Failed on 456edc9 (3 runs of 3), when the published id was saved in one
// word of ms << 22 | seq: an id that did not fit was saved as unknown, and
// the rollback of that publish was missed after a restart. Only an
// operator's XSETID makes such ids. Now saved in two words (layout 3).
INSTANTIATE_TEST_SUITE_P(OperatorsIds, UnreadPublish, ::testing::Values("SeqPast22Bits", "MsPast42Bits"),
                         [](const auto& info) { return info.param; });

// Control, no rollback: A's unread publish E is trimmed away (MAXLEN ~ 10,
// every host's) by B's burst while A is down; A restarts with `published`
// below the first entry. Nothing was lost: B applies E, nobody clears.
TEST_F(LivenessAttack9, APublishTrimmedAwayWhileItsPublisherWasDownIsNoRollback) {
  args_extra_ = {"--maxlen", "10"};
  ASSERT_NO_FATAL_FAILURE(open_and_publish_unread(""));
  a_.relay->kill9();
  proxy_->set_mode(Mode::pass);
  ASSERT_TRUE(harness::await([&] { return !present(b_, "k"); }, 10s)) << "B never applied E: " << describe(b_);
  RedisClient rc(redis_->port());
  for (int burst = 0; burst < 15 && !(first_of(rc) > lost_); ++burst) {
    for (int i = 0; i < 20; ++i) b_.cache->invalidate("t.f" + std::to_string(burst * 20 + i));
    ASSERT_TRUE(harness::await([&] { return status(b_).cursor == outbox::head(*b_.cache); }, 5s)) << describe(b_);
  }
  ASSERT_TRUE(first_of(rc) > lost_) << "not trimmed past E";
  ASSERT_EQ(published_of(a_), lost_);
  proxy_a_->set_mode(Mode::pass);
  start_a_via_proxy("2");
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  const bool cleared = harness::await([&] { return clears(a_) + clears(b_) > 0; }, 2s);
  EXPECT_FALSE(cleared) << "A: " << describe(a_) << "; B: " << describe(b_);
}

// ---- 2. a position that is the stream's last-generated id but no entry --------------------------
//
// An operator's XSETID into the future (liveness8 SteadyState: it must clear
// nobody). A fresh host C joins afterwards: its position is the stream's
// last-generated id, which no entry has; max-deleted is below it. Its next
// state check takes that for a rollback (vanished), rotates the nonce, and
// every host clears.
// A needless clear of every host: failed on 456edc9 (3 of 3 runs). A resync
// now resumes at the stream's last entry (relay.h, resume_point).
TEST_F(LivenessAttack9, AHostJoiningAfterAnXsetidIntoTheFutureClearsNobody) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .block_ms = 200, .io_ms = 400}));
  b_.cache->invalidate("t.x1");
  ASSERT_TRUE(settled());
  for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  RedisClient rc(redis_->port());
  const std::string nonce0 = nonce_of(rc);
  const StreamId last = rc.last_generated(kStream);
  Reply r = rc.cmd({"XSETID", kStream, StreamId{last.ms + 3600 * 1000, 0}.str()});
  ASSERT_TRUE(ok(r)) << text(r);
  Host c;
  open_host(c, "C");
  c.global0 = c.cache->generations({}).global;
  extra_.push_back(std::make_unique<RelayProcess>(relay_args(c, redis_->port()), dir_.path() + "/relay-C.log"));
  extra_.back()->start();
  ASSERT_TRUE(harness::await([&] { return status(c).connected; }, 10s)) << describe(c);
  // Ten heartbeats, each with a state check: a needless rotation shows at once.
  const bool cleared = harness::await([&] { return clears(a_) + clears(b_) > 0; }, 2s);
  EXPECT_FALSE(cleared) << "an XSETID into the future, then a fresh host joined: nonce rotated="
                        << (nonce_of(rc) != nonce0) << "; C position " << pos_of(c).str() << "; A: " << describe(a_)
                        << "; B: " << describe(b_) << "; C: " << describe(c);
  extra_.back()->terminate();
}

// ---- 3. a host moved to another stream rotates that stream's nonce ------------------------------
//
// A rolling move of the hosts from one stream key to another (the doc's
// `{hc}:inv` for Redis Cluster). A moves first (its own clear is fair: it
// starts a new world). B keeps publishing on the old stream, then moves: its
// saved position and `published` (old stream, newer than the new stream's
// last id) read as a rollback of the new stream: the nonce rotates and A,
// on the new stream all along with nothing wrong, clears.
// Failed on 456edc9 (3 of 3 runs): the saved RelayState did not record its
// stream. Now it does, and a host whose ids are of another stream starts
// afresh there and clears itself once (it missed what the stream carried).
TEST_F(LivenessAttack9, AHostMovedToAnotherStreamDoesNotClearTheHostsAlreadyThere) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .block_ms = 200, .io_ms = 400}));
  const std::string y = kStream + ":moved";
  RedisClient rc(redis_->port());
  a_.relay->terminate();
  a_.relay = std::make_unique<RelayProcess>(args_on(a_, redis_->port(), y), dir_.path() + "/relay-A-y.log");
  a_.relay->start();
  ASSERT_TRUE(harness::await([&] { return status(a_).connected && !rc.last_generated(y).zero(); }, 10s))
      << describe(a_);
  const StreamId y_boot = rc.last_generated(y);
  // B's publish must get a newer ms than y's boot (Redis stamps XADD with
  // its clock): made in the same millisecond, it was not, and the await
  // below never held (a fresh-clone CI run here).
  ASSERT_TRUE(harness::await([&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
               .count() > std::int64_t(y_boot.ms) + 1;
  }, 5s));
  b_.cache->invalidate("t.old");  // on the old stream, after the new one's boot
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream).ms > y_boot.ms && pos_of(b_) == rc.last_generated(kStream); }, 10s))
      << describe(b_);
  ASSERT_TRUE(harness::await([&] { return pos_of(a_) == rc.last_generated(y); }, 10s)) << describe(a_);
  const std::uint64_t a_before = clears(a_);
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "kb", "t.kb"));
  a_.cache->invalidate("t.kb");  // on y: B, still on the old stream, never hears it
  ASSERT_TRUE(harness::await([&] { return status(a_).cursor == outbox::head(*a_.cache); }, 5s)) << describe(a_);
  const std::string nonce_y = nonce_of(rc, y);
  b_.relay->terminate();
  b_.relay = std::make_unique<RelayProcess>(args_on(b_, redis_->port(), y), dir_.path() + "/relay-B-y.log");
  b_.relay->start();
  ASSERT_TRUE(harness::await([&] { return status(b_).connected && pos_of(b_) == rc.last_generated(y); }, 10s))
      << describe(b_);
  // B missed what y carried before it came: it must not serve kb.
  EXPECT_FALSE(present(b_, "kb")) << "B moved to " << y << " and serves what A invalidated there before. B: "
                                  << describe(b_);
  const bool cleared = harness::await([&] { return clears(a_) > a_before; }, 2s);
  EXPECT_FALSE(cleared) << "B moved to " << y << ": its nonce rotated=" << (nonce_of(rc, y) != nonce_y)
                        << "; A (on " << y << " all along) cleared. A: " << describe(a_) << "; B: " << describe(b_);
}

// A moved relay killed after a save but before its resync cleared: that
// save held no position (it starts afresh) and the old stream's hash. Its
// restart must still clear once, and only itself.
TEST_F(LivenessAttack9, AMovedRelayKilledBeforeItClearedClearsAfterItsRestart) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5, .block_ms = 200, .io_ms = 400}));
  const std::uint64_t a_before = clears(a_);
  b_.relay->terminate();
  outbox::RelayStatus saved = status(b_);
  saved.last_id_ms = saved.last_id_seq = saved.published_id_ms = saved.published_id_seq = 0;
  saved.stream_hash = outbox::hash_stream_key(kStream + ":before");
  outbox::set_relay_status(*b_.cache, saved);
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "kb", "t.kb"));
  const std::uint64_t b_before = clears(b_);
  start_b("2");
  RedisClient rc(redis_->port());
  ASSERT_TRUE(harness::await([&] { return status(b_).connected && pos_of(b_) == rc.last_generated(kStream); }, 10s))
      << describe(b_);
  EXPECT_EQ(clears(b_), b_before + 1) << describe(b_);
  EXPECT_FALSE(present(b_, "kb"));
  EXPECT_EQ(status(b_).stream_hash, outbox::hash_stream_key(kStream));
  const bool cleared = harness::await([&] { return clears(a_) > a_before; }, 2s);
  EXPECT_FALSE(cleared) << "A: " << describe(a_) << "; B: " << describe(b_);
}

// ---- 4. kill -9 between the publish's XADD and save() ------------------------------------------
//
// A's command connection holds replies 300 ms (a slow link, within the
// timeout): the publish of E runs in Redis, A is killed before its reply
// comes, so before save(): neither its cursor nor `published` moved. Redis
// rolls back past E (or not). The restarted A publishes E again: B drops k;
// without a rollback nobody clears.
class KillBeforeSave : public LivenessAttack9, public ::testing::WithParamInterface<bool> {};

TEST_P(KillBeforeSave, NothingIsLost) {
  const bool roll = GetParam();
  a_delay_ = 300ms;
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 20, .block_ms = 200, .io_ms = 400, .with_a = false,
                                 .b_via = World::Via::hostile}));
  start_a_via_proxy();
  ASSERT_TRUE(settled()) << "B: " << describe(b_) << "; A: " << describe(a_);
  for (Host* h : hosts()) h->global0 = h->cache->generations({}).global;
  ASSERT_NO_FATAL_FAILURE(set_on(b_, "k", "t.k"));
  RedisClient rc(redis_->port());
  Reply saved = rc.cmd({"SAVE"});
  ASSERT_TRUE(saved && saved->type == REDIS_REPLY_STATUS);
  snap_ = rc.last_generated(kStream);
  proxy_->set_mode(Mode::swallow);
  proxy_a_->set_mode(Mode::delay);
  const std::uint64_t cursor0 = status(a_).cursor;
  a_.cache->invalidate("t.k");
  ASSERT_TRUE(harness::await([&] { return rc.last_generated(kStream) > snap_; }, 5s)) << describe(a_);
  a_.relay->kill9();
  ASSERT_EQ(status(a_).cursor, cursor0) << "A saved its publish before the kill: not this attack (rerun)";
  if (roll) {
    ASSERT_NO_FATAL_FAILURE(rollback());
  }
  proxy_->set_mode(Mode::pass);
  proxy_a_->set_mode(Mode::pass);
  start_a_via_proxy("2");
  ASSERT_TRUE(settled(15s)) << "B: " << describe(b_) << "; A: " << describe(a_);
  EXPECT_TRUE(harness::await([&] { return !present(b_, "k"); }, allowed()))
      << "A killed between XADD and save(), rollback=" << roll << "; B still serves k. A: " << describe(a_)
      << "; B: " << describe(b_);
  if (!roll) {
    EXPECT_EQ(clears(a_) + clears(b_), 0u) << "A: " << describe(a_) << "; B: " << describe(b_);
  }
}
INSTANTIATE_TEST_SUITE_P(Rollback, KillBeforeSave, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "RolledBack" : "NotRolledBack"; });

}  // namespace
}  // namespace hostcache::relay
