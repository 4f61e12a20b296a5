// Single-process behaviour of the public API: values, errors, TTL,
// generations, typed access, statistics.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>

#include "clock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using testing::FakeClock;
using testing::ScopedName;

class CacheTest : public ::testing::Test {
 protected:
  ScopedName name_{"cache"};
  Cache cache_ = Cache::open(testing::small_config(name_.name));

  std::string get(std::string_view key) { return cache_.get(key).value_or("<miss>"); }
  Errc set(std::string_view key, std::string_view value, std::vector<std::string_view> tags = {},
           std::chrono::milliseconds ttl = 0ms) {
    SetOptions o;
    o.ttl = ttl;
    o.tags = std::move(tags);
    return cache_.set(key, value, o);
  }
};

TEST_F(CacheTest, SetGetOverwriteErase) {
  EXPECT_EQ(get("a"), "<miss>");
  EXPECT_EQ(set("a", "one"), Errc::ok);
  EXPECT_EQ(get("a"), "one");
  EXPECT_EQ(set("a", "two, longer than before"), Errc::ok);
  EXPECT_EQ(get("a"), "two, longer than before");
  EXPECT_EQ(set("a", ""), Errc::ok);
  EXPECT_EQ(get("a"), "");
  EXPECT_TRUE(cache_.erase("a"));
  EXPECT_FALSE(cache_.erase("a"));
  EXPECT_EQ(get("a"), "<miss>");
}

TEST_F(CacheTest, FullKeyIsCompared) {
  // Keys that share prefixes, lengths and stripes must never answer for each other.
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(set("k" + std::to_string(i), "v" + std::to_string(i)), Errc::ok);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(get("k" + std::to_string(i)), "v" + std::to_string(i));
  EXPECT_EQ(get("k"), "<miss>");
  EXPECT_EQ(get("k2000"), "<miss>");
  EXPECT_EQ(get(std::string("k1\0", 3)), "<miss>");
}

TEST_F(CacheTest, BinaryKeysAndValues) {
  std::string key("\0\1\2key\xff", 7), value(1000, '\0');
  for (std::size_t i = 0; i < value.size(); ++i) value[i] = char(i * 7);
  ASSERT_EQ(set(key, value), Errc::ok);
  EXPECT_EQ(get(key), value);
}

TEST_F(CacheTest, GetReusesTheCallersBuffer) {
  ASSERT_EQ(set("k", std::string(300, 'x')), Errc::ok);
  std::string out;
  out.reserve(4096);
  const char* before = out.data();
  ASSERT_TRUE(cache_.get("k", out));
  EXPECT_EQ(out, std::string(300, 'x'));
  EXPECT_EQ(out.data(), before);  // no allocation when the buffer has room
}

// get_many into the caller's strings: batch after batch over the same
// vectors (strings left from the last batch, of other lengths, hits and
// misses), every answer must be what a get of that key answers, the count
// the number of hits, and a string that already has room is not reallocated.
TEST_F(CacheTest, GetManyIntoReusedStringsAnswersAsPerKeyGets) {
  std::mt19937_64 rng(7);
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) {
    keys.push_back("gm" + std::to_string(i));
    if (i % 5 != 0) {
      const std::size_t n = std::size_t(rng() % 3000);
      ASSERT_EQ(set(keys.back(), std::string(n, char('a' + i % 26))), Errc::ok);
    }
  }
  const std::string too_long(cache_.max_key_bytes() + 1, 'x');
  std::vector<std::string> values;
  std::vector<bool> hits;
  for (int round = 0; round < 200; ++round) {
    std::vector<std::string_view> batch;
    const std::size_t n = rng() % 20;
    for (std::size_t i = 0; i < n; ++i) {
      const unsigned pick = unsigned(rng() % 20);
      batch.push_back(pick == 0 ? std::string_view() : pick == 1 ? std::string_view(too_long)
                                                                 : std::string_view(keys[rng() % keys.size()]));
    }
    if (round % 10 == 0 && !keys.empty()) {  // the cache changes between batches too
      const std::string& k = keys[rng() % keys.size()];
      ASSERT_EQ(set(k, std::string(rng() % 3000, 'z')), Errc::ok);
    }
    const std::size_t got = cache_.get_many(batch, values, hits);
    ASSERT_GE(values.size(), batch.size());  // never shrunk: the strings keep their room
    ASSERT_EQ(hits.size(), batch.size());
    std::size_t expected_hits = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const std::optional<std::string> one = cache_.get(batch[i]);
      ASSERT_EQ(hits[i], one.has_value()) << "round " << round << " key '" << batch[i] << "'";
      if (one) {
        ++expected_hits;
        ASSERT_EQ(values[i], *one) << "round " << round << " key '" << batch[i] << "'";
      }
    }
    EXPECT_EQ(got, expected_hits);
  }
  // The same batch again: every string already has room for its value.
  std::vector<std::string_view> batch(keys.begin(), keys.end());
  cache_.get_many(batch, values, hits);
  std::vector<const char*> before;
  for (const auto& v : values) before.push_back(v.data());
  ASSERT_EQ(cache_.get_many(batch, values, hits), std::size_t(std::count(hits.begin(), hits.end(), true)));
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (hits[i]) EXPECT_EQ(values[i].data(), before[i]) << keys[i] << " was reallocated";
  }
}

// A get grows the caller's string without zeroing it first (string_grow.h):
// whatever the string held (empty, short inline, long, with spare capacity
// or none), it must end exactly the value's length, byte for byte, and
// get_many's fresh strings likewise. Lengths around the inline buffer (15)
// and around doublings of a capacity catch a length taken from the capacity.
TEST_F(CacheTest, AGetLeavesExactlyTheValueWhateverTheStringHeldBefore) {
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n <= 70; ++n) lengths.push_back(n);
  for (std::size_t n : {100, 127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097, 9000}) lengths.push_back(n);
  auto value_of = [](std::size_t n, char salt) {
    std::string v(n, '\0');
    for (std::size_t i = 0; i < n; ++i) v[i] = char('a' + (i * 7 + std::size_t(salt)) % 26);
    return v;
  };
  std::vector<std::string> keys;
  for (std::size_t n : lengths) {
    keys.push_back("len" + std::to_string(n));
    ASSERT_EQ(set(keys.back(), value_of(n, 1)), Errc::ok);
  }
  std::vector<std::string> before_shapes;
  for (std::size_t prior : {0, 3, 15, 16, 31, 64, 200, 5000}) before_shapes.push_back(value_of(prior, 9));
  for (std::size_t k = 0; k < lengths.size(); ++k) {
    for (const std::string& shape : before_shapes) {
      for (bool spare : {false, true}) {
        std::string out = shape;
        if (spare) out.reserve(out.size() * 2 + 1);
        ASSERT_TRUE(cache_.get(keys[k], out));
        ASSERT_EQ(out.size(), lengths[k]) << "from a string of " << shape.size() << " bytes (spare " << spare << ")";
        ASSERT_EQ(out, value_of(lengths[k], 1));
      }
    }
  }
  std::vector<std::string_view> views(keys.begin(), keys.end());
  const std::vector<std::optional<std::string>> many = cache_.get_many(views);
  ASSERT_EQ(many.size(), keys.size());
  for (std::size_t k = 0; k < keys.size(); ++k) {
    ASSERT_TRUE(many[k].has_value()) << keys[k];
    EXPECT_EQ(*many[k], value_of(lengths[k], 1)) << keys[k];
  }
}

TEST_F(CacheTest, EveryBadInputHasItsCodeAndChangesNothing) {
  ASSERT_EQ(set("keep", "safe", {"t"}), Errc::ok);
  const Stats before = cache_.stats();
  EXPECT_EQ(set("", "v"), Errc::empty_key);
  EXPECT_EQ(set(std::string(cache_.max_key_bytes() + 1, 'k'), "v"), Errc::key_too_large);
  EXPECT_EQ(set("keep", std::string(cache_.max_value_bytes() + 1, 'v')), Errc::value_too_large);
  EXPECT_EQ(set("keep", "v", {}, -1ms), Errc::invalid_ttl);
  EXPECT_EQ(set("keep", "v", {"a", "b", "c", "d", "e"}), Errc::too_many_tags);
  EXPECT_EQ(set("keep", "v", {""}), Errc::tag_too_large);
  EXPECT_EQ(set("keep", "v", {std::string(256, 't')}), Errc::tag_too_large);
  EXPECT_EQ(get("keep"), "safe");
  EXPECT_EQ(cache_.stats().sets, before.sets);
  EXPECT_EQ(cache_.stats().entries, before.entries);
  // The limits themselves are accepted.
  EXPECT_EQ(set(std::string(cache_.max_key_bytes(), 'k'), "v"), Errc::ok);
  EXPECT_EQ(set("big", std::string(cache_.max_value_bytes(), 'v')), Errc::ok);
  EXPECT_EQ(get("big").size(), cache_.max_value_bytes());
  EXPECT_EQ(set("tags", "v", {"a", "b", "c", std::string(255, 'd')}), Errc::ok);
}

TEST_F(CacheTest, ClearHidesEverythingWrittenBefore) {
  ASSERT_EQ(set("a", "1"), Errc::ok);
  ASSERT_EQ(set("b", "2", {"t"}), Errc::ok);
  cache_.clear();
  EXPECT_EQ(get("a"), "<miss>");
  EXPECT_EQ(get("b"), "<miss>");
  ASSERT_EQ(set("a", "3"), Errc::ok);
  EXPECT_EQ(get("a"), "3");
}

TEST_F(CacheTest, InvalidateHidesExactlyTheTaggedEntries) {
  ASSERT_EQ(set("model", "m", {"shop.product"}), Errc::ok);
  ASSERT_EQ(set("fields", "f", {"shop.product"}), Errc::ok);
  ASSERT_EQ(set("relation", "r", {"shop.product", "shop.order"}), Errc::ok);
  ASSERT_EQ(set("order", "o", {"shop.order"}), Errc::ok);
  ASSERT_EQ(set("plain", "p"), Errc::ok);
  cache_.invalidate("shop.order");
  EXPECT_EQ(get("model"), "m");
  EXPECT_EQ(get("fields"), "f");
  EXPECT_EQ(get("relation"), "<miss>");  // either of its tags drops it
  EXPECT_EQ(get("order"), "<miss>");
  EXPECT_EQ(get("plain"), "p");
  cache_.invalidate("shop.product");
  EXPECT_EQ(get("model"), "<miss>");
  EXPECT_EQ(get("fields"), "<miss>");
  EXPECT_EQ(get("plain"), "p");
  ASSERT_EQ(set("model", "m2", {"shop.product"}), Errc::ok);
  EXPECT_EQ(get("model"), "m2");
}

TEST_F(CacheTest, StampedSetAcrossAnInvalidationIsNeverServed) {
  SetOptions o;
  o.tags = {"app.model"};
  const GenerationStamp stamp = cache_.generations(o.tags);
  cache_.invalidate("app.model");  // happens while "computing"
  ASSERT_EQ(cache_.set("k", "computed before the invalidation", o, stamp), Errc::ok);
  EXPECT_EQ(get("k"), "<miss>");
  const GenerationStamp fresh = cache_.generations(o.tags);
  ASSERT_EQ(cache_.set("k", "fresh", o, fresh), Errc::ok);
  EXPECT_EQ(get("k"), "fresh");
  const GenerationStamp before_clear = cache_.generations({});
  cache_.clear();
  ASSERT_EQ(cache_.set("g", "v", {}, before_clear), Errc::ok);
  EXPECT_EQ(get("g"), "<miss>");
}

TEST(CacheTtl, HitBeforeExpiryMissAtAndAfter) {
  FakeClock clock;
  ScopedName name("ttl");
  Config c = testing::small_config(name.name);
  c.default_ttl = 10s;
  Cache cache = Cache::open(c);
  SetOptions o;
  o.ttl = 100ms;
  ASSERT_EQ(cache.set("short", "s", o), Errc::ok);
  ASSERT_EQ(cache.set("default", "d"), Errc::ok);
  clock.advance(99);
  EXPECT_TRUE(cache.get("short"));
  clock.advance(1);  // exactly at expiry: never served late
  EXPECT_FALSE(cache.get("short"));
  EXPECT_TRUE(cache.get("default"));
  clock.advance(10'000 - 100 - 1);
  EXPECT_TRUE(cache.get("default"));
  clock.advance(1);
  EXPECT_FALSE(cache.get("default"));
}

// The real clock: the get path judges expiry with the coarse clock and reads
// the precise one only near an entry's expiry; never is a value served late.
TEST(CacheTtl, RealClockNeverServesLate) {
  ScopedName name("ttlreal");
  Cache cache = Cache::open(testing::small_config(name.name));
  SetOptions o;
  o.ttl = 20ms;
  for (int round = 0; round < 20; ++round) {
    ASSERT_EQ(cache.set("k", "v", o), Errc::ok);
    const std::int64_t after_set = clock::now_ms();
    bool seen_before_expiry = false;
    while (clock::now_ms() < after_set + 19) seen_before_expiry |= cache.get("k").has_value();
    while (clock::now_ms() < after_set + 20) {
    }
    EXPECT_FALSE(cache.get("k").has_value()) << "served at or after its expiry, round " << round;
    EXPECT_TRUE(seen_before_expiry || round > 0);
  }
}

struct Metadata {
  std::string model;
  std::vector<std::string> fields;
  int version = 0;
  MSGPACK_DEFINE(model, fields, version);
  bool operator==(const Metadata&) const = default;
};

TEST_F(CacheTest, TypedGetAndPut) {
  Metadata m{"product", {"id", "name", "price"}, 3};
  ASSERT_EQ(cache_.put("meta", m), Errc::ok);
  auto back = cache_.get_as<Metadata>("meta");
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, m);
  ASSERT_EQ(cache_.put("map", std::map<std::string, int>{{"a", 1}}), Errc::ok);
  using Map = std::map<std::string, int>;
  EXPECT_EQ(cache_.get_as<Map>("map")->at("a"), 1);
  EXPECT_FALSE(cache_.get_as<Metadata>("missing").has_value());
  ASSERT_EQ(set("raw", "\xc1 not msgpack"), Errc::ok);
  EXPECT_FALSE(cache_.get_as<Metadata>("raw").has_value());
}

TEST_F(CacheTest, StatsCountWhatHappened) {
  const Stats s0 = cache_.stats();
  ASSERT_EQ(set("a", "1"), Errc::ok);
  ASSERT_EQ(set("b", "2"), Errc::ok);
  EXPECT_TRUE(cache_.get("a"));
  EXPECT_FALSE(cache_.get("zz"));
  EXPECT_TRUE(cache_.erase("b"));
  const Stats s = cache_.stats();
  EXPECT_EQ(s.sets - s0.sets, 2u);
  EXPECT_EQ(s.hits - s0.hits, 1u);
  EXPECT_EQ(s.misses - s0.misses, 1u);
  EXPECT_EQ(s.gets - s0.gets, 2u);
  EXPECT_EQ(s.erases - s0.erases, 1u);
  EXPECT_EQ(s.entries, 1u);
  EXPECT_GT(s.bytes_used, 0u);
  EXPECT_LE(s.bytes_used, s.capacity_bytes);
  EXPECT_EQ(s.capacity_bytes, 4u << 20);
  EXPECT_DOUBLE_EQ(s.hit_ratio(), double(s.hits) / double(s.gets));
}

TEST_F(CacheTest, MovedHandleKeepsWorking) {
  ASSERT_EQ(set("a", "1"), Errc::ok);
  Cache other = std::move(cache_);
  EXPECT_EQ(other.get("a").value_or(""), "1");
  cache_ = std::move(other);
  EXPECT_EQ(get("a"), "1");
}

}  // namespace
}  // namespace hostcache
