// The memoizer: keys, users, tags, per-method TTL and statistics, disabled
// mode, warming and startup.
#include <gtest/gtest.h>
#include <hostcache/memoize.h>
#include <signal.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "clock.h"
#include "memoize_fixture.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using namespace memoize_testing;
using testing::FakeClock;
using testing::Gate;
using testing::ScopedName;
using testing::spawn;
using testing::wait_for;

// ---- the memoizer --------------------------------------------------------------------

struct Metadata {
  std::string model;
  std::string user;
  std::vector<std::string> fields;
  MSGPACK_DEFINE(model, user, fields)
  bool operator==(const Metadata&) const = default;
};

struct Filter {
  int min = 0;
  std::string op;
  MSGPACK_DEFINE(min, op)
};

// A key of (app, model, user-or-any, params...) as Memoized builds it.
std::string key_of(const Cache& c, std::string_view method, const detail::KeyArg& app,
                   const detail::KeyArg& model, const detail::KeyArg* user,
                   const std::vector<detail::KeyArg>& params) {
  return detail::build_key(c, {"metadata", method, &app, &model, user, &params});
}
detail::KeyArg text(std::string s) { return detail::key_arg(s); }

TEST_F(MemoizeTest, KeysReadableForStringsAndIntegersHashedOtherwise) {
  const std::vector<detail::KeyArg> params{detail::key_arg("created_at"), detail::key_arg(42),
                                           detail::key_arg(Filter{3, ">"})};
  const detail::KeyArg alice = text("alice");
  const std::string user = detail::user_token(cache_, alice);
  const std::string key =
      key_of(cache_, "extract_model_metadata", text("shop"), text("order"), &alice, params);
  const std::string head = "metadata_extract%5Fmodel%5Fmetadata_shop_order_" + user +
                           "_created%5Fat_i:42_h:";
  EXPECT_EQ(key.substr(0, head.size()), head);
  EXPECT_EQ(key.size(), head.size() + 32);  // the keyed 128-bit hash of Filter's msgpack bytes
  EXPECT_NE(key, key_of(cache_, "extract_model_metadata", text("shop"), text("order"), &alice,
                        {params[0], params[1], detail::key_arg(Filter{4, ">"})}));
  EXPECT_EQ(detail::render(42), "42");  // tags keep the plain forms
  EXPECT_EQ(detail::render(std::string("x y")), "x y");
  EXPECT_EQ(detail::render(Filter{3, ">"}).size(), 17u);
  EXPECT_EQ(user.size(), 33u);
  EXPECT_EQ(user[0], 'u');
  EXPECT_EQ(key.find("alice"), std::string::npos);  // the user appears only as a hash
}

TEST_F(MemoizeTest, KeysSplitOneWayOnly) {
  auto key = [&](std::string_view app, std::string_view model) {
    return key_of(cache_, "m", text(std::string(app)), text(std::string(model)), nullptr, {});
  };
  EXPECT_NE(key("a_b", "c"), key("a", "b_c"));
  EXPECT_NE(key("a%5Fb", "c"), key("a_b", "c"));
  EXPECT_NE(key("i:1", "c"), key_of(cache_, "m", detail::key_arg(1), text("c"), nullptr, {}));
  EXPECT_NE(key_of(cache_, "m", text("a"), text("b"), nullptr, {}),
            key_of(cache_, "m", text("a"), text("b"), nullptr, {text("")}));
}

TEST_F(MemoizeTest, LongKeysEndInAHashAndStayDistinct) {
  const std::size_t max = cache_.max_key_bytes();
  const std::vector<detail::KeyArg> p1{text(std::string(max + 100, 'x'))};
  const std::vector<detail::KeyArg> p2{text(std::string(max + 100, 'x') + "y")};
  const std::string k1 = key_of(cache_, "m", text("a"), text("b"), nullptr, p1);
  const std::string k2 = key_of(cache_, "m", text("a"), text("b"), nullptr, p2);
  EXPECT_LE(k1.size(), max);
  EXPECT_NE(k1, k2);
  EXPECT_EQ(k1.rfind("metadata_m_a_b_any_%h", 0), 0u);
  EXPECT_EQ(model_tag("shop", "order"), "shop.order");
  EXPECT_LE(model_tag(std::string(300, 'a'), "b").size(), kMaxTagBytes);
}

TEST_F(MemoizeTest, MemoizerReadsLikeTheSeedsDecorator) {
  int calls = 0;
  auto extract = memoize<Metadata>(
      cache_, {.method = "extract_model_metadata", .ttl = 30min, .user_specific = true},
      [&](const std::string& app, const std::string& model, const std::string& user) {
        ++calls;
        return Metadata{app + "." + model, user, {"id", "total"}};
      });
  Metadata m = extract(std::string("shop"), std::string("order"), std::string("alice"));
  EXPECT_EQ(m, (Metadata{"shop.order", "alice", {"id", "total"}}));
  EXPECT_EQ(extract(std::string("shop"), std::string("order"), std::string("alice")), m);
  EXPECT_EQ(calls, 1);
  // The key is the documented one, readable by anyone holding the cache.
  const detail::KeyArg alice = text("alice");
  const std::string key =
      key_of(cache_, "extract_model_metadata", text("shop"), text("order"), &alice, {});
  EXPECT_EQ(key.rfind("metadata_extract%5Fmodel%5Fmetadata_shop_order_u", 0), 0u);
  EXPECT_EQ(cache_.get_as<Metadata>(key), m);
}

TEST_F(MemoizeTest, UsersNeverSeeEachOthersValues) {
  auto fn = [&](const std::string& app, const std::string& model, int user_id) {
    bump(shared_->computes);
    return app + "." + model + " for user " + std::to_string(user_id);
  };
  auto per_user = memoize<std::string>(cache_, {.method = "per_user"}, fn);
  EXPECT_EQ(per_user("shop", "order", 1), "shop.order for user 1");
  pid_t other =
      spawn([&] { return per_user("shop", "order", 2) == "shop.order for user 2" ? 0 : 1; });
  EXPECT_EQ(finishes(other), 0);
  EXPECT_EQ(per_user("shop", "order", 1), "shop.order for user 1");
  EXPECT_EQ(per_user("shop", "order", 2), "shop.order for user 2");
  EXPECT_EQ(read(shared_->computes), 2);

  auto shared = memoize<std::string>(cache_, {.method = "shared", .user_specific = false}, fn);
  EXPECT_EQ(shared("shop", "order", 1), "shop.order for user 1");
  EXPECT_EQ(shared("shop", "order", 2), "shop.order for user 1");  // one entry serves everyone
  EXPECT_EQ(read(shared_->computes), 3);
}

TEST_F(MemoizeTest, InvalidatingAModelDropsEveryMethodsEntriesForIt) {
  int calls = 0;
  auto fn = [&](const std::string& app, const std::string& model, int, auto&&...) {
    ++calls;
    return app + "." + model + "#" + std::to_string(calls);
  };
  auto fields = memoize<std::string>(cache_, {.method = "fields"}, fn);
  auto filters = memoize<std::string>(cache_, {.method = "filters"}, fn);
  auto relation = memoize<std::string>(
      cache_,
      {.method = "relation",
       .extra_tags =
           [](const std::vector<std::string>& p) { return std::vector{model_tag(p[0], p[1])}; }},
      [&](const std::string& app, const std::string& model, int user, const std::string&,
          const std::string&) { return fn(app, model, user); });
  const std::string order = fields("shop", "order", 1), order_filters = filters("shop", "order", 1);
  const std::string customer = fields("shop", "customer", 1);
  const std::string rel = relation("shop", "order", 1, std::string("crm"), std::string("contact"));
  EXPECT_EQ(calls, 4);

  cache_.invalidate(model_tag("shop", "order"));
  EXPECT_NE(fields("shop", "order", 1), order);
  EXPECT_NE(filters("shop", "order", 1), order_filters);
  EXPECT_EQ(fields("shop", "customer", 1), customer);
  const std::string rel2 = relation("shop", "order", 1, std::string("crm"), std::string("contact"));
  EXPECT_NE(rel2, rel);
  EXPECT_EQ(calls, 7);

  cache_.invalidate("crm.contact");  // the related model's tag drops the relationship too
  EXPECT_NE(relation("shop", "order", 1, std::string("crm"), std::string("contact")), rel2);
  EXPECT_EQ(calls, 8);
}

TEST_F(MemoizeTest, EachMethodHasItsOwnTtl) {
  FakeClock clock;
  int long_calls = 0, short_calls = 0;
  auto long_lived = memoize<int>(cache_, {.method = "fields", .ttl = 30min},
                                 [&](const char*, const char*, int) { return ++long_calls; });
  auto short_lived = memoize<int>(cache_, {.method = "filters", .ttl = 10min},
                                  [&](const char*, const char*, int) { return ++short_calls; });
  auto both = [&] {
    return std::pair(long_lived("shop", "order", 1), short_lived("shop", "order", 1));
  };
  EXPECT_EQ(both(), std::pair(1, 1));
  clock.advance((10min - 1ms).count());
  EXPECT_EQ(both(), std::pair(1, 1));
  clock.advance(1);
  EXPECT_EQ(both(), std::pair(1, 2));
  clock.advance((20min - 1ms).count());  // the short one, rewritten at 10 min, is gone again
  EXPECT_EQ(both(), std::pair(1, 3));
  clock.advance(1);
  EXPECT_EQ(both(), std::pair(2, 3));
}

TEST_F(MemoizeTest, DisabledCacheCallsStraightThrough) {
  Config config = testing::small_config(name_.name + "-off");
  config.enabled = false;
  struct Remove {
    std::string n;
    ~Remove() { Cache::remove(n); }
  } remove{config.name};
  Cache off = Cache::open(config);
  ASSERT_FALSE(off.enabled());
  int calls = 0;
  auto extract = memoize<int>(off, {.method = "disabled"},
                              [&](const char*, const char*, int) { return ++calls; });
  EXPECT_EQ(extract("a", "m", 1), 1);
  EXPECT_EQ(extract("a", "m", 1), 2);
  EXPECT_EQ(get_or_compute<int>(off, "k", [&] { return ++calls; }), 3);
  EXPECT_EQ(get_or_compute<int>(off, "k", [&] { return ++calls; }), 4);
  EXPECT_FALSE(off.get("k"));
  EXPECT_TRUE(method_stats(off).empty());

  ::setenv("HOSTCACHE_DISABLED", "1", 1);
  Cache env_off = Cache::attach(name_.name);
  ::unsetenv("HOSTCACHE_DISABLED");
  EXPECT_FALSE(env_off.enabled());
  EXPECT_EQ(get_or_compute<int>(env_off, "k", [&] { return ++calls; }), 5);
  EXPECT_EQ(get_or_compute<int>(env_off, "k", [&] { return ++calls; }), 6);
}

// ---- statistics, warming, startup ----------------------------------------------------

TEST_F(MemoizeTest, MethodStatisticsAreHostTotals) {
  auto extract = memoize<std::string>(cache_, {.method = "extract"},
                                      [](const char* app, const char* model, int) {
                                        std::this_thread::sleep_for(20ms);
                                        return std::string(app) + "." + model;
                                      });
  extract("shop", "order", 1);
  pid_t child = spawn([&] {
    extract("shop", "order", 1);
    extract("shop", "customer", 1);
    return 0;
  });
  EXPECT_EQ(finishes(child), 0);
  extract("shop", "customer", 1);
  extract("shop", "order", 2);

  auto s = stats_of(cache_, "extract");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->requests, 5u);
  EXPECT_EQ(s->hits, 2u);
  EXPECT_EQ(s->misses, 3u);
  EXPECT_DOUBLE_EQ(s->hit_ratio(), 0.4);
  EXPECT_GE(s->mean_miss_ms(), 20.0);  // each miss slept 20 ms
  EXPECT_GT(s->bytes, 0u);
  EXPECT_GT(s->hit_ns, 0u);
  EXPECT_DOUBLE_EQ(s->improvement_percent(), 100.0 * (1.0 - s->mean_hit_ms() / s->mean_miss_ms()));
  EXPECT_DOUBLE_EQ(s->mean_call_ms(), double(s->hit_ns + s->miss_ns) / 5 / 1e6);
  EXPECT_FALSE(stats_of(cache_, "never called"));
}

TEST_F(MemoizeTest, WarmFillsKeysAndCountsFailures) {
  int loads = 0;
  auto loader = [&](const std::string& key) -> std::string {
    ++loads;
    if (key == "bad") throw std::runtime_error("cannot load");
    return "loaded " + key;
  };
  WarmResult r = warm<std::string>(cache_, {"a", "b", "bad", "c"}, loader);
  EXPECT_EQ(r.computed, 3u);
  EXPECT_EQ(r.failed, 1u);
  EXPECT_EQ(r.hits, 0u);
  EXPECT_EQ(cache_.get_as<std::string>("b"), "loaded b");
  r = warm<std::string>(cache_, {"a", "b", "c"}, loader);
  EXPECT_EQ(r.hits, 3u);
  EXPECT_EQ(r.computed, 0u);
  EXPECT_EQ(loads, 4);
}

TEST_F(MemoizeTest, StartupClearsThenWarms) {
  ASSERT_EQ(cache_.set("left over", "from the last deployment"), Errc::ok);
  StartupOptions o;
  o.warmers.push_back(
      warm_task<std::string>({"x", "y"}, [](const std::string& k) { return "w" + k; }));
  WarmResult r = on_startup(cache_, o);
  EXPECT_FALSE(cache_.get("left over"));
  EXPECT_EQ(r.computed, 2u);
  EXPECT_EQ(cache_.get_as<std::string>("y"), "wy");

  ASSERT_EQ(cache_.set("kept", "1"), Errc::ok);
  o.invalidate_on_startup = false;
  o.auto_warm = false;
  r = on_startup(cache_, o);
  EXPECT_EQ(cache_.get("kept"), "1");
  EXPECT_EQ(r.computed + r.hits, 0u);
}

}  // namespace
}  // namespace hostcache
