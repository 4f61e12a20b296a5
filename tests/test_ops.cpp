// The operations a framework's cache backend needs (issue 12): add,
// incr/decr, touch, no expiry and ttl(), namespaces, batches, get_into, and
// compression. The atomic ones are checked with real processes racing: each
// test would fail if the operation were a get followed by a set.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <limits>
#include <random>
#include <set>

#include "arena.h"
#include "cache_impl.h"
#include "stripe.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using testing::FakeClock;
using testing::ScopedName;

Config config_for(const ScopedName& n, std::size_t capacity = 4u << 20) {
  return testing::small_config(n.name, capacity);
}

// ---- add -----------------------------------------------------------------------

// Sixteen processes add one key at once, thirty times: exactly one wins each
// round, and the value is the winner's.
TEST(Add, ExactlyOneWinnerPerKeyWithAGate) {
  ScopedName name("add2");
  Cache cache = Cache::open(config_for(name));
  auto* wins = static_cast<std::atomic<int>*>(testing::shared_memory(64 * sizeof(std::atomic<int>)));
  constexpr int kRounds = 30, kProcs = 16;
  for (int round = 0; round < kRounds; ++round) {
    const std::string key = "key" + std::to_string(round);
    testing::Gate gate;
    std::vector<pid_t> kids;
    for (int p = 0; p < kProcs; ++p) {
      kids.push_back(testing::spawn([&, p] {
        Cache c = Cache::attach(name.name);
        gate.wait();
        const Errc e = c.add(key, "by" + std::to_string(p));
        if (e == Errc::ok) wins[round].fetch_add(1);
        return e == Errc::ok || e == Errc::already_exists ? 0 : 1;
      }));
    }
    gate.open();
    for (pid_t k : kids) ASSERT_EQ(testing::wait_for(k), 0);
    EXPECT_EQ(wins[round].load(), 1) << key;
    const std::string v = cache.get(key).value_or("");
    EXPECT_EQ(v.rfind("by", 0), 0u) << v;
  }
}

TEST(Add, AbsentExpiredStaleAndErasedCountAsAbsent) {
  ScopedName name("add3");
  FakeClock clock;
  Cache cache = Cache::open(config_for(name));
  EXPECT_EQ(cache.add("k", "first"), Errc::ok);
  EXPECT_EQ(cache.add("k", "second"), Errc::already_exists);
  EXPECT_EQ(cache.get("k").value_or(""), "first");
  ASSERT_TRUE(cache.erase("k"));
  EXPECT_EQ(cache.add("k", "after erase"), Errc::ok);
  SetOptions short_ttl;
  short_ttl.ttl = 100ms;
  ASSERT_EQ(cache.set("t", "v", short_ttl), Errc::ok);
  clock.advance(200);
  EXPECT_EQ(cache.add("t", "after expiry"), Errc::ok);
  SetOptions tagged;
  tagged.tags = {"m"};
  ASSERT_EQ(cache.set("s", "v", tagged), Errc::ok);
  cache.invalidate("m");
  EXPECT_EQ(cache.add("s", "after invalidate"), Errc::ok);
  cache.clear();
  EXPECT_EQ(cache.add("k", "after clear"), Errc::ok);
  EXPECT_EQ(cache.get("k").value_or(""), "after clear");
  // Bad input: a specific error, nothing stored.
  EXPECT_EQ(cache.add("", "v"), Errc::empty_key);
  EXPECT_EQ(cache.add(std::string(cache.max_key_bytes() + 1, 'k'), "v"), Errc::key_too_large);
  EXPECT_EQ(cache.add("big", std::string(cache.max_value_bytes() + 1, 'v')), Errc::value_too_large);
  SetOptions negative;
  negative.ttl = -1ms;
  EXPECT_EQ(cache.add("neg", "v", negative), Errc::invalid_ttl);
  EXPECT_FALSE(cache.get("big").has_value());
  EXPECT_FALSE(cache.get("neg").has_value());
}

// ---- incr / decr -------------------------------------------------------------------

TEST(Incr, SixteenProcessesTimesTenThousandEndAtExactly160000) {
  ScopedName name("incr");
  Cache cache = Cache::open(config_for(name));
  ASSERT_EQ(cache.set("n", "0"), Errc::ok);
  testing::Gate gate;
  std::vector<pid_t> kids;
  for (int p = 0; p < 16; ++p) {
    kids.push_back(testing::spawn([&] {
      Cache c = Cache::attach(name.name);
      gate.wait();
      std::int64_t r = 0;
      for (int i = 0; i < 10000; ++i) {
        if (c.incr("n", 1, r) != Errc::ok) return 1;
      }
      return 0;
    }));
  }
  gate.open();
  for (pid_t k : kids) ASSERT_EQ(testing::wait_for(k), 0);
  EXPECT_EQ(cache.get("n").value_or(""), "160000");
}

TEST(Incr, ErrorsAreSpecificAndLeaveTheEntryIntact) {
  ScopedName name("incr2");
  FakeClock clock;
  Cache cache = Cache::open(config_for(name));
  std::int64_t r = 0;
  EXPECT_EQ(cache.incr("missing", 1, r), Errc::not_found);
  EXPECT_FALSE(cache.get("missing").has_value());
  for (const char* bad : {"abc", "12a", "", "+5", " 5", "5 ", "--1", "-", "99999999999999999999",
                          "123456789012345678901"}) {
    ASSERT_EQ(cache.set("bad", bad), Errc::ok);
    EXPECT_EQ(cache.incr("bad", 1, r), Errc::not_integer) << bad;
    EXPECT_EQ(cache.get("bad").value_or("<miss>"), bad);
  }
  ASSERT_EQ(cache.set("max", std::to_string(std::numeric_limits<std::int64_t>::max())), Errc::ok);
  EXPECT_EQ(cache.incr("max", 1, r), Errc::overflow);
  EXPECT_EQ(cache.get("max").value_or(""), std::to_string(std::numeric_limits<std::int64_t>::max()));
  ASSERT_EQ(cache.set("min", std::to_string(std::numeric_limits<std::int64_t>::min())), Errc::ok);
  EXPECT_EQ(cache.decr("min", 1, r), Errc::overflow);
  EXPECT_EQ(cache.decr("min", std::numeric_limits<std::int64_t>::min(), r), Errc::overflow);
  ASSERT_EQ(cache.set("n", "-5"), Errc::ok);
  ASSERT_EQ(cache.incr("n", 3, r), Errc::ok);
  EXPECT_EQ(r, -2);
  ASSERT_EQ(cache.decr("n", 10, r), Errc::ok);
  EXPECT_EQ(r, -12);
  EXPECT_EQ(cache.get("n").value_or(""), "-12");
}

TEST(Incr, KeepsExpiryTagsAndNamespace) {
  ScopedName name("incr3");
  FakeClock clock;
  Cache cache = Cache::open(config_for(name));
  SetOptions o;
  o.ttl = 1000ms;
  o.tags = {"app.m"};
  o.ns = "ns1";
  std::int64_t r = 0;
  ASSERT_EQ(cache.set("a", "1", o), Errc::ok);
  ASSERT_EQ(cache.set("b", "1", o), Errc::ok);
  ASSERT_EQ(cache.set("c", "1", o), Errc::ok);
  clock.advance(500);
  ASSERT_EQ(cache.incr("a", 1, r), Errc::ok);
  ASSERT_EQ(cache.incr("b", 1, r), Errc::ok);
  ASSERT_EQ(cache.incr("c", 1, r), Errc::ok);
  EXPECT_LE(cache.ttl("a").value_or(0ms), 500ms);  // the expiry was kept, not renewed
  cache.invalidate("app.m");
  EXPECT_FALSE(cache.get("a").has_value()) << "incr dropped the entry's tag";
  ASSERT_EQ(cache.set("b2", "1", o), Errc::ok);
  cache.clear("ns1");
  EXPECT_FALSE(cache.get("b2").has_value());
  ASSERT_EQ(cache.set("d", "1", o), Errc::ok);
  ASSERT_EQ(cache.incr("d", 1, r), Errc::ok);
  clock.advance(1001);
  EXPECT_FALSE(cache.get("d").has_value()) << "incr dropped the entry's expiry";
  EXPECT_EQ(cache.incr("d", 1, r), Errc::not_found);
}

// ---- touch, no expiry, ttl() --------------------------------------------------------

TEST(Touch, RenewsTheTtlWithoutRewritingTheValue) {
  ScopedName name("touch");
  FakeClock clock;
  Cache cache = Cache::open(config_for(name));
  SetOptions o;
  o.ttl = 1000ms;
  ASSERT_EQ(cache.set("k", "value", o), Errc::ok);
  const std::uint64_t sets = cache.stats().sets;
  clock.advance(900);
  EXPECT_TRUE(cache.touch("k", 5000ms));
  EXPECT_EQ(cache.stats().sets, sets) << "touch rewrote the entry";
  clock.advance(4000);
  EXPECT_EQ(cache.get("k").value_or(""), "value");
  EXPECT_EQ(cache.ttl("k").value_or(0ms), 1000ms);
  clock.advance(1000);
  EXPECT_FALSE(cache.get("k").has_value());
  EXPECT_FALSE(cache.touch("k", 1000ms)) << "touched an expired entry";
  EXPECT_FALSE(cache.touch("never-set", 1000ms));
  EXPECT_THROW(cache.touch("k", -1ms), Error);
  // The rewritten header still verifies: a repair keeps the entry.
  ASSERT_EQ(cache.set("r", "v", o), Errc::ok);
  ASSERT_TRUE(cache.touch("r", hostcache::kNoExpiry));
  Segment& seg = detail::Access::segment(cache);
  for (std::uint32_t s = 0; s < seg.geometry().stripe_count; ++s) {
    arena::StripeView v = arena::StripeView::over(seg.stripe_base(s), seg.geometry());
    std::uint64_t kept = 0, dropped = 0;
    stripe::Locked locked(seg, s);
    locked.begin();
    ASSERT_TRUE(arena::repair(v, nullptr, &kept, &dropped));
    locked.end();
    EXPECT_EQ(dropped, 0u);
  }
  EXPECT_EQ(cache.get("r").value_or(""), "v");
}

TEST(NoExpiry, LivesUntilClearedAndReportsIt) {
  ScopedName name("noexp");
  FakeClock clock;
  Cache cache = Cache::open(config_for(name));
  SetOptions forever;
  forever.ttl = kNoExpiry;
  forever.tags = {"t"};
  ASSERT_EQ(cache.set("f", "v", forever), Errc::ok);
  ASSERT_EQ(cache.set("g", "v", forever), Errc::ok);
  clock.advance(std::int64_t(10) * 365 * 24 * 3600 * 1000);  // ten years
  EXPECT_EQ(cache.get("f").value_or(""), "v");
  EXPECT_EQ(cache.ttl("f"), std::optional<std::chrono::milliseconds>(kNoExpiry));
  EXPECT_FALSE(cache.ttl("nothing").has_value());
  cache.invalidate("t");
  EXPECT_FALSE(cache.get("f").has_value());
  ASSERT_EQ(cache.set("h", "v", forever), Errc::ok);
  cache.clear();
  EXPECT_FALSE(cache.get("h").has_value());
  SetOptions finite;
  finite.ttl = 60s;
  ASSERT_EQ(cache.set("x", "v", finite), Errc::ok);
  clock.advance(10000);
  EXPECT_EQ(cache.ttl("x").value_or(0ms), 50s);
}

// ---- namespaces ------------------------------------------------------------------------

TEST(Namespace, ClearDropsOnlyItsOwnEntriesInEveryProcess) {
  ScopedName name("ns");
  Cache cache = Cache::open(config_for(name));
  SetOptions a, b;
  a.ns = "alias_a";
  b.ns = "alias_b";
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(cache.set("a" + std::to_string(i), "va", a), Errc::ok);
    ASSERT_EQ(cache.set("b" + std::to_string(i), "vb", b), Errc::ok);
    ASSERT_EQ(cache.set("n" + std::to_string(i), "vn"), Errc::ok);
  }
  const int status = testing::wait_for(testing::spawn([&] {
    Cache::attach(name.name).clear("alias_a");
    return 0;
  }));
  ASSERT_EQ(status, 0);
  const auto seen = testing::run_children(3, [&](int) {
    Cache c = Cache::attach(name.name);
    int bad = 0;
    for (int i = 0; i < 200; ++i) {
      bad += c.get("a" + std::to_string(i)).has_value();
      bad += c.get("b" + std::to_string(i)).value_or("") != "vb";
      bad += c.get("n" + std::to_string(i)).value_or("") != "vn";
    }
    return bad == 0 ? 0 : 1;
  });
  for (int s : seen) EXPECT_EQ(s, 0);
  cache.clear();  // clear() still clears everything
  EXPECT_FALSE(cache.get("b1").has_value());
  EXPECT_FALSE(cache.get("n1").has_value());
  SetOptions bad;
  bad.ns = std::string_view("0123456789012345678901234567890123456789012345678901234567890123456789");
  EXPECT_EQ(cache.set("k", "v", bad), Errc::invalid_namespace);
  EXPECT_THROW(cache.clear(std::string_view("")), Error);
  // A memoized computation stamped before clear(ns) is stale on arrival.
  const GenerationStamp before = cache.generations({}, "alias_b");
  cache.clear("alias_b");
  ASSERT_EQ(cache.set("late", "v", b, before), Errc::ok);
  EXPECT_FALSE(cache.get("late").has_value());
}

// ---- batches and get_into ----------------------------------------------------------------

TEST(Batch, GetManyAndSetManyMatchSingleCalls) {
  ScopedName name("batch");
  Cache cache = Cache::open(config_for(name));
  std::vector<std::string> keys, values;
  for (int i = 0; i < 100; ++i) {
    keys.push_back("k" + std::to_string(i));
    values.push_back(std::string(i * 7, char('a' + i % 26)));
  }
  std::vector<std::pair<std::string_view, std::string_view>> items;
  for (int i = 0; i < 100; i += 2) items.emplace_back(keys[i], values[i]);
  for (Errc e : cache.set_many(items)) EXPECT_EQ(e, Errc::ok);
  std::vector<std::string_view> ask(keys.begin(), keys.end());
  ask.push_back("");
  ask.push_back(std::string_view("never"));
  const auto got = cache.get_many(ask);
  ASSERT_EQ(got.size(), ask.size());
  for (int i = 0; i < 100; ++i) {
    if (i % 2 == 0) {
      EXPECT_EQ(got[i].value_or("<miss>"), values[i]) << i;
    } else {
      EXPECT_FALSE(got[i].has_value()) << i;
    }
  }
  EXPECT_FALSE(got[100].has_value());
  EXPECT_FALSE(got[101].has_value());
}

struct Sink {
  std::vector<char> buf;
  int calls = 0;
  static char* grow(void* ctx, std::size_t n) {
    auto* s = static_cast<Sink*>(ctx);
    ++s->calls;
    s->buf.assign(n, '\0');
    return s->buf.data();
  }
};

TEST(Batch, GetIntoCopiesIntoTheCallersBufferOfTheRightSize) {
  ScopedName name("into");
  Cache cache = Cache::open(config_for(name));
  const std::string big(5000, 'x');
  ASSERT_EQ(cache.set("k", big), Errc::ok);
  Sink s;
  ASSERT_TRUE(cache.get_into("k", &Sink::grow, &s));
  EXPECT_GE(s.calls, 1);
  EXPECT_EQ(std::string(s.buf.begin(), s.buf.end()), big);
  Sink none;
  EXPECT_FALSE(cache.get_into("absent", &Sink::grow, &none));
  EXPECT_EQ(none.calls, 0);
}

// ---- compression -------------------------------------------------------------------------

std::string metadata_json(int n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s = "{\"model\":\"app.Model" + std::to_string(seed % 97) + "\",\"fields\":[";
  for (int i = 0; i < n; ++i) {
    s += "{\"name\":\"field_" + std::to_string(i) + "\",\"type\":\"CharField\",\"null\":" +
         (rng() % 2 ? "true" : "false") + ",\"max_length\":" + std::to_string(rng() % 255) +
         ",\"help_text\":\"\",\"verbose_name\":\"field " + std::to_string(i) + "\"},";
  }
  s += "{}]}";
  return s;
}

TEST(Compression, CompressibleValuesRoundTripAndAreCounted) {
  ScopedName name("zstd");
  Config c = config_for(name);
  c.compress_min_bytes = 512;
  Cache cache = Cache::open(c);
  std::vector<std::string> vals;
  for (int i = 0; i < 50; ++i) vals.push_back(metadata_json(10 + i * 3, std::uint64_t(i)));
  for (int i = 0; i < 50; ++i) ASSERT_EQ(cache.set("m" + std::to_string(i), vals[i]), Errc::ok);
  std::mt19937_64 rng(1);
  std::string noise(4096, '\0');
  for (char& ch : noise) ch = char(rng());
  ASSERT_EQ(cache.set("noise", noise), Errc::ok);
  ASSERT_EQ(cache.set("small", "tiny"), Errc::ok);
  const Stats st = cache.stats();
  EXPECT_GT(st.compressed_in, 0u);
  EXPECT_LT(st.compressed_out * 2, st.compressed_in) << "metadata JSON should at least halve";
  // Every process reads them, whatever its own compression setting.
  const auto statuses = testing::run_children(2, [&](int) {
    Config plain = config_for(name);
    plain.compress_min_bytes = 0;
    Cache r = Cache::open(plain);
    for (int i = 0; i < 50; ++i) {
      if (r.get("m" + std::to_string(i)).value_or("") != vals[i]) return 1;
      Sink s;
      if (!r.get_into("m" + std::to_string(i), &Sink::grow, &s)) return 2;
      if (std::string(s.buf.begin(), s.buf.end()) != vals[i]) return 3;
    }
    if (r.get("noise").value_or("") != noise) return 4;
    if (r.get("small").value_or("") != "tiny") return 5;
    return 0;
  });
  for (int s : statuses) EXPECT_EQ(s, 0);
}

TEST(Compression, AForgedFrameIsAMissNeverGarbage) {
  ScopedName name("zstd2");
  Config c = config_for(name, 1u << 20);
  c.stripes = 1;
  c.compress_min_bytes = 256;
  Cache cache = Cache::open(c);
  const std::string v = metadata_json(40, 3);
  ASSERT_EQ(cache.set("m", v), Errc::ok);
  // Scribble over the stored frame (as a writer of the segment could).
  Segment& seg = detail::Access::segment(cache);
  arena::StripeView view = arena::StripeView::over(seg.stripe_base(0), seg.geometry());
  bool hit = false;
  arena::walk(view, view.hdr->tail, view.hdr->head,
              [&](std::uint64_t off, const layout::EntryHeader& h) {
                if ((h.flags & layout::kFlagCompressed) == 0) return;
                hit = true;
                for (std::uint64_t i = 8; i < h.value_len; ++i) view.arena[arena::value_off(off, h) + i] ^= 0x5a;
              },
              nullptr, nullptr);
  ASSERT_TRUE(hit);
  const auto got = cache.get("m");
  EXPECT_TRUE(!got.has_value() || *got == v) << "a forged frame decoded to other bytes";
}

}  // namespace
}  // namespace hostcache
