// hostcache-relay (issue 14), with real processes on loopback: one
// redis-server, three "hosts" (three segments, each with its relay process),
// and a TCP proxy in front of host B's Redis connection.
//
// The oracle: for every tag invalidated on one host, every other host must,
// once healed, have bumped it after its last remote invalidation: an entry
// tagged with it, set on every host before, is gone everywhere after. Spurious
// clears are counted from each segment's global generation (no test calls
// clear() except where it says so): 0 where a replay suffices, 1 where data
// was lost. Every wait is a condition with a deadline, never a fixed sleep;
// the only sleeps are the outages themselves.
#include <gtest/gtest.h>
#include <signal.h>

#include <iostream>

#include "cache_impl.h"  // the stuck-slot test forges a writer that died halfway, as test_outbox does
#include "relay.h"
#include "relay_harness.h"

namespace hostcache::relay {
namespace {

using namespace std::chrono_literals;
using harness::Proxy;
using harness::RedisClient;
using harness::RedisServer;
using harness::RelayProcess;
using harness::Reply;

// ---- pure parts -------------------------------------------------------------

TEST(RelayUnits, StreamIdsParseAndOrder) {
  EXPECT_EQ(StreamId::parse("1700000000000-7")->ms, 1700000000000u);
  EXPECT_EQ(StreamId::parse("1700000000000-7")->seq, 7u);
  EXPECT_FALSE(StreamId::parse("12"));
  EXPECT_FALSE(StreamId::parse("-1"));
  EXPECT_FALSE(StreamId::parse("1-"));
  EXPECT_FALSE(StreamId::parse("1-2x"));
  EXPECT_LT((StreamId{5, 9}), (StreamId{6, 0}));
  EXPECT_LT((StreamId{5, 1}), (StreamId{5, 2}));
  EXPECT_EQ((StreamId{5, 1}).str(), "5-1");
  EXPECT_TRUE(StreamId{}.zero());
}

TEST(RelayUnits, EndpointsParse) {
  std::string h;
  int p = 0;
  ASSERT_TRUE(parse_endpoint("127.0.0.1:6380", h, p));
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, 6380);
  ASSERT_TRUE(parse_endpoint("[::1]:7000", h, p));
  EXPECT_EQ(h, "::1");
  EXPECT_EQ(p, 7000);
  ASSERT_TRUE(parse_endpoint("redis.internal:6379", h, p));
  EXPECT_FALSE(parse_endpoint("localhost", h, p));
  EXPECT_FALSE(parse_endpoint("::1:6379", h, p));
  EXPECT_FALSE(parse_endpoint("h:0", h, p));
  EXPECT_FALSE(parse_endpoint("h:70000", h, p));
  EXPECT_FALSE(parse_endpoint(":6379", h, p));
}

TEST(RelayUnits, TheResyncRule) {
  StreamState s;
  s.nonce = "1000-abc";
  s.last_generated = {5000, 3};
  s.first_entry = StreamId{4000, 0};
  // A fresh segment starts where the stream is.
  EXPECT_EQ(resync_kind({}, {}, "", s), Resync::fresh);
  // Ordinary reconnects replay.
  EXPECT_EQ(resync_kind({4500, 0}, {}, "1000-abc", s), Resync::replay);
  EXPECT_EQ(resync_kind({5000, 3}, {5000, 3}, "", s), Resync::replay);
  EXPECT_EQ(resync_kind({4000, 0}, {}, "", s), Resync::replay);  // our entry is still the first one
  // Trimmed past us.
  EXPECT_EQ(resync_kind({3999, 9}, {}, "1000-abc", s), Resync::trimmed);
  // Lost: the nonce is new, changed, or newer than our last id.
  StreamState created = s;
  created.nonce_created = true;
  EXPECT_EQ(resync_kind({4500, 0}, {}, "1000-abc", created), Resync::lost);
  EXPECT_EQ(resync_kind({4500, 0}, {}, "999-xyz", s), Resync::lost);
  StreamState newer = s;
  newer.nonce = "4600-def";
  EXPECT_EQ(resync_kind({4500, 0}, {}, "", newer), Resync::lost);
  // Rolled back: the stream is behind what we read, or what we published.
  EXPECT_EQ(resync_kind({5000, 4}, {}, "1000-abc", s), Resync::rolled_back);
  EXPECT_EQ(resync_kind({4500, 0}, {6000, 0}, "1000-abc", s), Resync::rolled_back);
  // An emptied stream whose last id is past ours: trimmed, not replay.
  StreamState empty = s;
  empty.first_entry.reset();
  EXPECT_EQ(resync_kind({4500, 0}, {}, "", empty), Resync::trimmed);
  EXPECT_EQ(resync_kind({5000, 3}, {}, "", empty), Resync::replay);
  EXPECT_EQ(nonce_created_ms("1700000000123-ab12"), 1700000000123u);
  EXPECT_EQ(nonce_created_ms("junk"), 0u);
}

// ---- three hosts ------------------------------------------------------------

const std::string kStream = "hc:test";

struct Host {
  std::string name;
  std::optional<Cache> cache;
  std::unique_ptr<RelayProcess> relay;
  std::uint64_t global0 = 0;  // the global generation when the test started
};

struct World {
  std::vector<std::string> redis_args;  // extra redis-server arguments
  double stale_bound_s = 30;
  std::uint64_t maxlen = 100000;
};

class RelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(HOSTCACHE_REDIS_SERVER).empty() || ::access(HOSTCACHE_REDIS_SERVER, X_OK) != 0) {
      GTEST_SKIP() << "redis-server not found (apt-get install redis-server)";
    }
  }

  void TearDown() override {
    for (auto& h : hosts_) {
      if (h.relay) h.relay->terminate();
    }
    if (HasFailure() || std::getenv("HCRELAY_TEST_LOGS")) {
      for (auto& h : hosts_) {
        if (h.relay) std::cerr << "---- relay " << h.name << " log:\n" << harness::read_file(h.relay->log());
      }
      if (redis_) std::cerr << "---- redis log:\n" << harness::read_file(dir_.path() + "/redis.log");
    }
    hosts_.clear();
    proxy_.reset();
    redis_.reset();
    for (const auto& n : names_) Cache::remove(n);
  }

  void start(const World& setup) {
    world_ = setup;
    redis_ = std::make_unique<RedisServer>(dir_.path(), harness::free_port(), setup.redis_args);
    redis_->start();
    proxy_ = std::make_unique<Proxy>(redis_->port());
    hosts_.resize(3);
    const char* labels[] = {"A", "B", "C"};
    for (int i = 0; i < 3; ++i) {
      Host& h = hosts_[i];
      h.name = harness::unique_segment(std::string("relay") + labels[i]);
      names_.push_back(h.name);
      Config c;
      c.name = h.name;
      c.capacity_bytes = 4u << 20;
      h.cache.emplace(Cache::open(c));
      const int port = i == 1 ? proxy_->port() : redis_->port();  // B goes through the proxy
      h.relay = std::make_unique<RelayProcess>(
          std::vector<std::string>{h.name, "--redis", "127.0.0.1:" + std::to_string(port), "--stream", kStream,
                                   "--maxlen", std::to_string(setup.maxlen), "--stale-bound",
                                   std::to_string(setup.stale_bound_s), "--block-ms", "200", "--timeout-ms", "400",
                                   "--reconnect-max-ms", "200"},
          dir_.path() + "/relay-" + labels[i] + ".log");
      h.relay->start();
    }
    ASSERT_TRUE(settled()) << "the relays did not settle after starting";
    for (auto& h : hosts_) h.global0 = global(h);
  }

  Cache& cache(int i) { return *hosts_[i].cache; }
  outbox::RelayStatus status(int i) { return outbox::relay_status(cache(i)); }
  std::uint64_t global(Host& h) { return h.cache->generations({}).global; }
  std::uint64_t clears(int i) { return global(hosts_[i]) - hosts_[i].global0; }
  std::uint64_t tag_gen(int i, const std::string& tag) { return cache(i).generations({tag}).tags[0]; }

  // Every relay connected, its outbox drained, and at the stream's last id.
  bool settled(std::chrono::milliseconds timeout = 10s) {
    RedisClient rc(redis_->port());
    return harness::await(
        [&] {
          const StreamId last = rc.last_generated(kStream);
          for (int i = 0; i < 3; ++i) {
            const auto s = status(i);
            if (!s.connected || s.cursor != outbox::head(cache(i)) || StreamId{s.last_id_ms, s.last_id_seq} != last ||
                last.zero()) {
              return false;
            }
          }
          return true;
        },
        timeout);
  }

  void set_everywhere(const std::string& key, const std::string& tag) {
    for (int i = 0; i < 3; ++i) {
      SetOptions o;
      o.tags = {tag};
      ASSERT_EQ(cache(i).set(key, "v", o), Errc::ok);
    }
  }
  bool present(int i, const std::string& key) { return cache(i).get(key).has_value(); }
  bool gone_everywhere(const std::string& key) { return !present(0, key) && !present(1, key) && !present(2, key); }
  // True once every key is gone from every host (10 s at most).
  bool all_gone(const std::vector<std::string>& keys) {
    return harness::await([&] {
      for (const auto& k : keys) {
        if (!gone_everywhere(k)) return false;
      }
      return true;
    });
  }

  harness::TempDir dir_;
  World world_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<Proxy> proxy_;
  std::vector<Host> hosts_;
  std::vector<std::string> names_;
};

TEST_F(RelayTest, AnInvalidationOnOneHostReachesTheOthersAndIsAppliedOnceEverywhere) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("k1", "app.model");
  set_everywhere("other", "app.other");
  const std::uint64_t before[3] = {tag_gen(0, "app.model"), tag_gen(1, "app.model"), tag_gen(2, "app.model")};
  cache(0).invalidate("app.model");
  EXPECT_FALSE(present(0, "k1"));  // linearizable on its own host, as always
  ASSERT_TRUE(all_gone({"k1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(tag_gen(i, "app.model"), before[i] + 1) << "host " << i << " applied it other than once";
    EXPECT_TRUE(present(i, "other")) << "another tag went too on host " << i;
    EXPECT_EQ(clears(i), 0u);
  }
  // Namespaces and clears travel too; remote bumps are not published again.
  SetOptions spaced;
  spaced.ns = "tenant1";
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cache(i).set("n1", "v", spaced), Errc::ok);
  const std::uint64_t published_b = status(1).published;
  cache(2).clear("tenant1");
  ASSERT_TRUE(all_gone({"n1"})) << "still cached somewhere";
  EXPECT_TRUE(present(0, "other"));
  cache(1).clear();
  ASSERT_TRUE(all_gone({"other"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).published, published_b + 1) << "B published what it only applied";
  EXPECT_EQ(status(0).published, 1u);
  EXPECT_EQ(status(2).published, 1u);
  EXPECT_EQ(clears(0), 1u);
  EXPECT_EQ(clears(1), 1u);
  EXPECT_EQ(clears(2), 1u);
  EXPECT_EQ(status(0).applied, 2u);
  RedisClient rc(redis_->port());
  Reply ep = rc.cmd({"HGETALL", kStream + ":epochs"});
  ASSERT_TRUE(ep && ep->type == REDIS_REPLY_ARRAY);
  EXPECT_EQ(ep->elements, 10u) << "epochs: t:app.model, n:tenant1, g, the boot's nonce and the write probe";
}

TEST_F(RelayTest, ARelayKilledAndRestartedReplaysWhatItMissed) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("a1", "t.a1");
  set_everywhere("c1", "t.c1");
  set_everywhere("b1", "t.b1");
  const std::uint64_t replays = status(1).resync_replay;
  cache(1).invalidate("t.b1");   // B's own event, maybe published, maybe still in its outbox
  hosts_[1].relay->kill9();
  cache(0).invalidate("t.a1");
  cache(2).invalidate("t.c1");
  ASSERT_TRUE(harness::await([&] { return !present(2, "a1") && !present(0, "c1"); }));
  EXPECT_TRUE(present(1, "a1"));
  hosts_[1].relay->start();
  ASSERT_TRUE(all_gone({"a1", "c1", "b1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).resync_replay, replays + 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 0u) << "host " << i;
}

TEST_F(RelayTest, ARelayPausedPastTheStaleBoundCatchesUpByReplay) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 1}));
  set_everywhere("p1", "t.p1");
  set_everywhere("p2", "t.p2");
  hosts_[1].relay->pause();
  cache(0).invalidate("t.p1");
  cache(2).invalidate("t.p2");
  ASSERT_TRUE(harness::await([&] { return !present(2, "p1") && !present(0, "p2"); }));
  std::this_thread::sleep_for(1500ms);  // the outage itself
  EXPECT_TRUE(present(1, "p1"));
  hosts_[1].relay->resume();
  ASSERT_TRUE(all_gone({"p1", "p2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).stale_clears, 0u) << "its link never dropped: replay is exact";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 0u) << "host " << i;
}

TEST_F(RelayTest, ABlackholeWithinTheStaleBoundHealsByReplay) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 5}));
  set_everywhere("w1", "t.w1");
  proxy_->set_mode(Proxy::Mode::blackhole);
  cache(0).invalidate("t.w1");
  ASSERT_TRUE(harness::await([&] { return !present(2, "w1"); }));
  // B notices the silence (no heartbeat) and keeps failing to reconnect.
  ASSERT_TRUE(harness::await([&] { return !status(1).connected; }, 5s)) << "the half-open link was not noticed";
  EXPECT_TRUE(present(1, "w1"));
  proxy_->set_mode(Proxy::Mode::pass);
  ASSERT_TRUE(all_gone({"w1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).stale_clears, 0u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 0u) << "host " << i;
}

TEST_F(RelayTest, ABlackholePastTheStaleBoundClearsOnceThenReplays) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 2}));
  set_everywhere("x1", "t.x1");
  proxy_->set_mode(Proxy::Mode::blackhole);
  cache(0).invalidate("t.x1");
  ASSERT_TRUE(harness::await([&] { return status(1).stale_clears == 1; }, 10s)) << "no stale clear";
  EXPECT_FALSE(present(1, "x1"));  // cleared by the bound, before it heard of the invalidation
  // An entry set after the stale clear and invalidated elsewhere meanwhile:
  // the replay after healing must still drop it.
  set_everywhere("x2", "t.x2");
  cache(2).invalidate("t.x2");
  ASSERT_TRUE(harness::await([&] { return !present(0, "x2"); }));
  EXPECT_TRUE(present(1, "x2"));
  proxy_->set_mode(Proxy::Mode::pass);
  ASSERT_TRUE(all_gone({"x2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).stale_clears, 1u);
  EXPECT_EQ(clears(1), 1u);
  EXPECT_EQ(clears(0), 0u);
  EXPECT_EQ(clears(2), 0u);
}

TEST_F(RelayTest, ConnectionsResetAreReconnectedAndReplayed) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 10}));
  set_everywhere("r1", "t.r1");
  const std::uint64_t replays = status(1).resync_replay;
  proxy_->set_mode(Proxy::Mode::reset);
  ASSERT_TRUE(harness::await([&] { return !status(1).connected; }, 5s));
  cache(0).invalidate("t.r1");
  ASSERT_TRUE(harness::await([&] { return !present(2, "r1"); }));
  proxy_->set_mode(Proxy::Mode::pass);
  ASSERT_TRUE(all_gone({"r1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_GE(status(1).resync_replay, replays + 1);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 0u) << "host " << i;
}

TEST_F(RelayTest, TrimmedPastARelayBumpsOnlyTheChangedTags) {
  // Small nodes, so that MAXLEN ~ 8 really trims.
  ASSERT_NO_FATAL_FAILURE(start({.redis_args = {"--stream-node-max-entries", "4"}, .maxlen = 8}));
  for (int t = 0; t < 10; ++t) set_everywhere("u" + std::to_string(t), "t.u" + std::to_string(t));
  for (int t = 0; t < 20; ++t) set_everywhere("c" + std::to_string(t), "t.c" + std::to_string(t));
  const std::uint64_t trims = status(1).resync_trimmed;
  hosts_[1].relay->pause();
  for (int round = 0; round < 2; ++round) {
    for (int t = 0; t < 20; ++t) cache(round == 0 ? 0 : 2).invalidate("t.c" + std::to_string(t));
  }
  ASSERT_TRUE(harness::await([&] {
    const auto a = status(0), c = status(2);
    return a.published == 20 && c.published == 20;
  }));
  RedisClient rc(redis_->port());
  ASSERT_LT(rc.length(kStream), 30u) << "the stream was not trimmed";
  hosts_[1].relay->resume();
  std::vector<std::string> changed;
  for (int t = 0; t < 20; ++t) changed.push_back("c" + std::to_string(t));
  ASSERT_TRUE(all_gone(changed)) << "a changed tag was not bumped on B";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(1).resync_trimmed, trims + 1);
  for (int t = 0; t < 10; ++t) {
    const std::string k = "u" + std::to_string(t);
    // C applied every event one by one; B only the epochs: the same slots.
    EXPECT_EQ(present(1, k), present(2, k)) << k << ": B bumped a tag that did not change";
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 0u) << "host " << i;
}

TEST_F(RelayTest, RedisRestartedWithItsDataReplays) {
  ASSERT_NO_FATAL_FAILURE(start({.redis_args = {"--appendonly", "yes", "--appendfsync", "always"}}));
  set_everywhere("d1", "t.d1");
  set_everywhere("d2", "t.d2");
  const std::uint64_t replays = status(1).resync_replay;
  hosts_[1].relay->kill9();
  cache(0).invalidate("t.d1");  // reaches Redis (and its AOF), not B
  ASSERT_TRUE(harness::await([&] { return !present(2, "d1"); }));
  redis_->kill9();
  cache(2).invalidate("t.d2");  // waits in C's outbox
  redis_->start();
  hosts_[1].relay->start();     // replays t.d1 from the restored stream
  ASSERT_TRUE(all_gone({"d1", "d2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(clears(i), 0u) << "host " << i;
    EXPECT_EQ(status(i).resync_lost, 0u);
  }
  EXPECT_EQ(status(1).resync_replay, replays + 1);
}

TEST_F(RelayTest, RedisRestartedEmptyClearsEveryHostOnce) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("e1", "t.e1");
  redis_->kill9();
  redis_->start();  // --save "": nothing survives, the nonce included
  ASSERT_TRUE(harness::await([&] {
    return status(0).resync_lost == 1 && status(1).resync_lost == 1 && status(2).resync_lost == 1;
  }));
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(clears(i), 1u) << "host " << i;
    EXPECT_FALSE(present(i, "e1"));
  }
  // And it works on afterwards.
  set_everywhere("e2", "t.e2");
  cache(1).invalidate("t.e2");
  ASSERT_TRUE(all_gone({"e2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 1u) << "host " << i;
}

TEST_F(RelayTest, RedisRolledBackToASnapshotClearsEveryHostOnce) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  RedisClient rc(redis_->port());
  set_everywhere("s1", "t.s1");
  cache(0).invalidate("t.s1");
  ASSERT_TRUE(all_gone({"s1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  Reply saved = rc.cmd({"SAVE"});
  ASSERT_TRUE(saved && saved->type == REDIS_REPLY_STATUS);
  set_everywhere("s2", "t.s2");
  // B does not see the event after the snapshot (its relay is down, and
  // restarts knowing no nonce): its last id is the snapshot's, so only the
  // nonce, rotated by A or C (who saw more than the snapshot holds), can tell
  // it what was lost.
  hosts_[1].relay->kill9();
  cache(2).invalidate("t.s2");  // after the snapshot: lost in the rollback
  ASSERT_TRUE(harness::await([&] { return !present(0, "s2") && !present(2, "s2"); }));
  redis_->kill9();
  redis_->start();  // loads dump.rdb: the stream is back before t.s2
  ASSERT_TRUE(harness::await([&] { return status(0).resync_lost == 1 && status(2).resync_lost == 1; }));
  hosts_[1].relay->start();  // after the rotation: it sees a nonce newer than its last id
  ASSERT_TRUE(harness::await([&] {
    return status(0).resync_lost == 1 && status(1).resync_lost == 1 && status(2).resync_lost == 1;
  }));
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 1u) << "host " << i;
  EXPECT_FALSE(present(1, "s2"));
  set_everywhere("s3", "t.s3");
  cache(1).invalidate("t.s3");
  ASSERT_TRUE(all_gone({"s3"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 1u) << "host " << i;
}

TEST_F(RelayTest, RedisEmptiedUnderLiveConnectionsClearsEveryHostOnce) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("f1", "t.f1");
  RedisClient rc(redis_->port());
  Reply r = rc.cmd({"FLUSHALL"});  // no disconnect: only the heartbeat's nonce check can tell
  ASSERT_TRUE(r && r->type == REDIS_REPLY_STATUS);
  ASSERT_TRUE(harness::await([&] {
    return status(0).resync_lost == 1 && status(1).resync_lost == 1 && status(2).resync_lost == 1;
  }));
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 1u) << "host " << i;
  set_everywhere("f2", "t.f2");
  cache(2).invalidate("t.f2");
  ASSERT_TRUE(all_gone({"f2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  for (int i = 0; i < 3; ++i) EXPECT_EQ(clears(i), 1u) << "host " << i;
}

TEST_F(RelayTest, AnOutboxOverflowWhileTheRelayIsStoppedIsOneGlobalClear) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("o1", "t.o1");
  set_everywhere("keep", "t.keep");
  hosts_[0].relay->pause();
  for (int i = 0; i < 200; ++i) cache(0).invalidate("t.o" + std::to_string(i));  // more than the ring holds
  hosts_[0].relay->resume();
  ASSERT_TRUE(all_gone({"o1"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(0).overflow_clears, 1u);
  EXPECT_EQ(clears(0), 0u) << "A's own clear came back to it";
  EXPECT_EQ(clears(1), 1u);
  EXPECT_EQ(clears(2), 1u);
  EXPECT_TRUE(present(0, "keep"));
  EXPECT_FALSE(present(1, "keep"));
  // Then events flow one by one again.
  set_everywhere("o2", "t.o2");
  cache(0).invalidate("t.o2");
  ASSERT_TRUE(all_gone({"o2"})) << "still cached somewhere";
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(0).overflow_clears, 1u);
  EXPECT_EQ(clears(1), 1u);
}

TEST_F(RelayTest, AnOutboxSlotWhoseWriterDiedBecomesOneGlobalClear) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  set_everywhere("w1", "t.w1");
  set_everywhere("w2", "t.w2");
  // Claim a sequence number and never complete it, as a worker killed inside
  // invalidate() would; then a complete event behind it.
  Segment& seg = detail::Access::segment(cache(0));
  const std::uint64_t seq = std::atomic_ref<std::uint64_t>(seg.outbox()->head).fetch_add(1);
  std::atomic_ref<std::uint64_t>(seg.outbox_slots()[seq % seg.geometry().outbox_slots].stamp).store(2 * seq + 1);
  cache(0).invalidate("t.w2");
  ASSERT_TRUE(all_gone({"w2"})) << "the stuck slot blocked the outbox";
  EXPECT_TRUE(present(0, "w1"));  // the dead writer's own host bumped whatever it was itself (or never did)
  EXPECT_FALSE(present(1, "w1"));
  EXPECT_FALSE(present(2, "w1"));
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(status(0).overflow_clears, 1u);
  EXPECT_EQ(clears(0), 0u);
  EXPECT_EQ(clears(1), 1u);
  EXPECT_EQ(clears(2), 1u);
}

TEST_F(RelayTest, AStaleBoundOfZeroClearsAsSoonAsTheConnectionDrops) {
  ASSERT_NO_FATAL_FAILURE(start({.stale_bound_s = 0}));
  set_everywhere("z1", "t.z1");
  proxy_->set_mode(Proxy::Mode::reset);
  ASSERT_TRUE(harness::await([&] { return status(1).stale_clears >= 1; }, 2s));
  EXPECT_FALSE(present(1, "z1"));
  EXPECT_TRUE(present(0, "z1"));
  proxy_->set_mode(Proxy::Mode::pass);
  ASSERT_TRUE(settled()) << "the relays did not settle";
  EXPECT_EQ(clears(1), status(1).stale_clears);
  EXPECT_EQ(clears(0), 0u);
}

TEST_F(RelayTest, TheToolRefusesASecondRelayAndExplainsItsOptions) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  harness::TempDir d;
  RelayProcess second({hosts_[0].name, "--redis", "127.0.0.1:" + std::to_string(redis_->port())}, d.path() + "/log");
  second.start();
  int status = second.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 4) << harness::read_file(second.log());
  RelayProcess help({"--help"}, d.path() + "/help");
  help.start();
  status = help.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const std::string text = harness::read_file(help.log());
  for (const char* opt : {"--redis", "--stream", "--maxlen", "--stale-bound"}) {
    EXPECT_NE(text.find(opt), std::string::npos) << opt;
  }
  RelayProcess bad({hosts_[0].name, "--redis", "nohostport"}, d.path() + "/bad");
  bad.start();
  status = bad.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2);
}

}  // namespace
}  // namespace hostcache::relay
