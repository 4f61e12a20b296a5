// memoize: get_or_compute's cross-process single flight (one compute, a dead
// or overrun owner taken over, exceptions, colliding flight slots), invariant 3
// across an invalidation, the memoizer's keys, users and tags, per-method TTL
// and statistics, disabled mode, stale-while-revalidate, warming.
//
// Processes are real (fork). Children report through MAP_SHARED memory and
// their exit status; they are synchronised with pipes (Gate) and conditions
// polled in shared memory, never with sleeps.
#include <hostcache/memoize.h>

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <latch>
#include <stdexcept>
#include <thread>

#include "cache_impl.h"
#include "clock.h"
#include "flight.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using testing::FakeClock;
using testing::Gate;
using testing::ScopedName;
using testing::spawn;
using testing::wait_for;

// What children report, in memory shared with them.
struct Shared {
  int computes;        // compute() calls, all processes
  int started;         // the first compute() has begun
  std::int64_t now_ms; // a fake clock every process reads
  char results[32][64];
};

void raise(int& flag) { std::atomic_ref<int>(flag).store(1); }
int bump(int& field) { return std::atomic_ref<int>(field).fetch_add(1); }
int read(const int& field) { return std::atomic_ref<int>(const_cast<int&>(field)).load(); }

// Polls `cond` until it holds; false after a minute (a hang guard, not a timing claim).
bool eventually(const std::function<bool()>& cond) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// The child's exit status (as wait_for), or -2 after killing it if it still
// runs after a minute: a protocol that hangs fails the test instead of hanging it.
int finishes(pid_t pid) {
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() > give_up) {
      ::kill(pid, SIGKILL);
      wait_for(pid);
      return -2;
    }
    std::this_thread::sleep_for(1ms);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

const layout::FlightSlot* flight_slots(const Cache& c) {
  return detail::Access::segment(c).flight_slots();
}
std::uint32_t flight_count(const Cache& c) {
  return detail::Access::segment(c).header()->flight_slots;
}
std::uint32_t sleeping_waiters(const Cache& c) {
  std::uint32_t n = 0;
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    n += std::atomic_ref<std::uint32_t>(const_cast<std::uint32_t&>(flight_slots(c)[i].waiters)).load();
  }
  return n;
}
bool all_flights_free(const Cache& c) {
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    if (!flight::is_free(flight_slots(c)[i])) return false;
  }
  return true;
}
// The pid computing `key` now, 0 if nobody.
std::uint32_t flight_owner(const Cache& c, std::string_view key) {
  const std::uint64_t h = XXH3_64bits(key.data(), key.size());
  for (std::uint32_t i = 0; i < flight_count(c); ++i) {
    flight::Owner o;
    if (flight::busy_owner(flight_slots(c)[i], o) && o.key_hash == h) return o.pid;
  }
  return 0;
}

std::optional<MethodStats> stats_of(const Cache& c, const std::string& method) {
  for (const MethodStats& m : method_stats(c)) {
    if (m.method == method) return m;
  }
  return std::nullopt;
}

class MemoizeTest : public ::testing::Test {
 protected:
  ScopedName name_{"memo"};
  Cache cache_ = Cache::open(testing::small_config(name_.name));
  Shared* shared_ = static_cast<Shared*>(testing::shared_memory(sizeof(Shared)));

  void set_result(int i, const std::string& v) {
    std::strncpy(shared_->results[i], v.c_str(), sizeof shared_->results[i] - 1);
  }
  std::string result(int i) const { return shared_->results[i]; }

  ComputeOptions options(std::string_view method = {}) {
    ComputeOptions o;
    o.method = method;
    return o;
  }
};

// ---- single flight -------------------------------------------------------------

TEST_F(MemoizeTest, SixteenProcessesMissingAtOnceComputeOnce) {
  Gate go;
  std::vector<pid_t> pids;
  for (int i = 0; i < 16; ++i) {
    pids.push_back(spawn([&, i] {
      go.wait();
      std::string v = get_or_compute<std::string>(
          cache_, "report",
          [&] {
            bump(shared_->computes);
            std::this_thread::sleep_for(200ms);  // the expensive extraction
            return "computed by " + std::to_string(getpid());
          },
          options("sf"));
      set_result(i, v);
      return 0;
    }));
  }
  go.open();
  for (pid_t p : pids) EXPECT_EQ(finishes(p), 0);

  EXPECT_EQ(read(shared_->computes), 1);
  ASSERT_NE(result(0).find("computed by "), std::string::npos);
  for (int i = 1; i < 16; ++i) EXPECT_EQ(result(i), result(0)) << i;
  auto s = stats_of(cache_, "sf");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->requests, 16u);
  EXPECT_EQ(s->misses, 1u);
  EXPECT_EQ(s->hits, 15u);
  EXPECT_TRUE(all_flights_free(cache_));
}

TEST_F(MemoizeTest, ThreadsOfOneProcessShareTheFlightToo) {
  std::atomic<int> computes{0};
  std::latch go(8);
  std::vector<std::string> results(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      results[i] = get_or_compute<std::string>(cache_, "threads", [&] {
        ++computes;
        std::this_thread::sleep_for(100ms);  // the expensive extraction
        return std::string("once");
      });
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(computes.load(), 1);
  for (const std::string& r : results) EXPECT_EQ(r, "once");
  EXPECT_TRUE(all_flights_free(cache_));
}

TEST_F(MemoizeTest, OwnerKilledMidComputeIsTakenOver) {
  Gate never;
  ComputeOptions o;
  o.lease = 1h;  // only the owner's death can hand the flight over within the test
  pid_t owner = spawn([&] {
    get_or_compute<std::string>(
        cache_, "k",
        [&]() -> std::string {
          bump(shared_->computes);
          raise(shared_->started);
          never.wait();  // blocks until SIGKILL
          return "owner";
        },
        o);
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  ASSERT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner));

  std::vector<pid_t> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.push_back(spawn([&, i] {
      set_result(i, get_or_compute<std::string>(
                        cache_, "k",
                        [&] {
                          bump(shared_->computes);
                          return std::string("taker");
                        },
                        o));
      return 0;
    }));
  }
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 4; }));
  kill(owner, SIGKILL);
  EXPECT_EQ(wait_for(owner), 128 + SIGKILL);  // reaped: kill(pid, 0) now says ESRCH

  for (pid_t p : waiters) EXPECT_EQ(finishes(p), 0);
  EXPECT_EQ(read(shared_->computes), 2);  // the dead owner's and exactly one taker's
  for (int i = 0; i < 4; ++i) EXPECT_EQ(result(i), "taker");
  EXPECT_TRUE(all_flights_free(cache_));
  EXPECT_EQ(sleeping_waiters(cache_), 0u);
}

TEST_F(MemoizeTest, OwnerPastItsLeaseIsTakenOver) {
  shared_->now_ms = 5'000'000;
  clock::set_fake_for_testing(&shared_->now_ms);  // children inherit it: one clock for all
  struct Restore {
    ~Restore() { clock::set_fake_for_testing(nullptr); }
  } restore;
  Gate finish;
  ComputeOptions o;
  o.lease = 10s;
  pid_t owner = spawn([&] {
    set_result(0, get_or_compute<std::string>(
                      cache_, "k",
                      [&]() -> std::string {
                        bump(shared_->computes);
                        raise(shared_->started);
                        finish.wait();
                        return "slow";
                      },
                      o));
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  std::vector<pid_t> waiters;
  for (int i = 1; i <= 3; ++i) {
    waiters.push_back(spawn([&, i] {
      set_result(i, get_or_compute<std::string>(
                        cache_, "k",
                        [&] {
                          bump(shared_->computes);
                          return std::string("fast");
                        },
                        o));
      return 0;
    }));
  }
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 3; }));
  EXPECT_EQ(read(shared_->computes), 1);  // alive and within its lease: they wait
  std::atomic_ref<std::int64_t>(shared_->now_ms).fetch_add(11'000);

  for (pid_t p : waiters) EXPECT_EQ(finishes(p), 0);
  EXPECT_EQ(read(shared_->computes), 2);
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(result(i), "fast");

  finish.open();  // the overrunning owner finishes; its release must not free the taker's slot
  EXPECT_EQ(finishes(owner), 0);
  EXPECT_EQ(result(0), "slow");
  EXPECT_TRUE(all_flights_free(cache_));
}

TEST_F(MemoizeTest, ExceptionReachesItsCallerAndIsNotCached) {
  EXPECT_THROW(get_or_compute<int>(cache_, "k", []() -> int { throw std::runtime_error("boom"); }),
               std::runtime_error);
  EXPECT_FALSE(cache_.get("k"));
  EXPECT_TRUE(all_flights_free(cache_));
  int calls = 0;
  EXPECT_EQ(get_or_compute<int>(cache_, "k", [&] { return ++calls, 42; }), 42);
  EXPECT_EQ(get_or_compute<int>(cache_, "k", [&] { return ++calls, 43; }), 42);
  EXPECT_EQ(calls, 1);
}

TEST_F(MemoizeTest, ExceptionReleasesTheWaitersAndOneOfThemComputes) {
  // The thrower stays alive (and its lease long) until the waiters are done:
  // only the release on the exception path can let them go on.
  ComputeOptions o;
  o.lease = 1h;
  Gate done;
  pid_t owner = spawn([&] {
    int rc = 0;
    try {
      get_or_compute<std::string>(
          cache_, "k",
          [&]() -> std::string {
            bump(shared_->computes);
            raise(shared_->started);
            if (!eventually([&] { return sleeping_waiters(cache_) == 3; })) return "no waiters";
            throw std::runtime_error("extraction failed");
          },
          o);
    } catch (const std::runtime_error& e) {
      rc = std::string(e.what()) == "extraction failed" ? 7 : 8;
    }
    done.wait();
    return rc;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  std::vector<pid_t> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.push_back(spawn([&, i] {
      set_result(i, get_or_compute<std::string>(
                        cache_, "k",
                        [&] {
                          bump(shared_->computes);
                          return std::string("second try");
                        },
                        o));
      return 0;
    }));
  }
  for (pid_t p : waiters) EXPECT_EQ(finishes(p), 0);
  done.open();
  EXPECT_EQ(finishes(owner), 7);
  EXPECT_EQ(read(shared_->computes), 2);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(result(i), "second try");
  EXPECT_TRUE(all_flights_free(cache_));
}

// Keys whose flights start at the same slot.
std::vector<std::string> colliding_keys(const Cache& c, std::size_t n) {
  const std::uint64_t mask = flight_count(c) - 1;
  std::vector<std::string> keys;
  const std::string first = "collide-0";
  const std::uint64_t home = XXH3_64bits(first.data(), first.size()) & mask;
  for (int i = 0; keys.size() < n; ++i) {
    std::string k = "collide-" + std::to_string(i);
    if ((XXH3_64bits(k.data(), k.size()) & mask) == home) keys.push_back(k);
  }
  return keys;
}

TEST_F(MemoizeTest, KeysSharingAFlightSlotDoNotWaitForEachOther) {
  // Four slow computations of other keys fill every slot a fifth key may use:
  // it computes at once, unshared, and none of them is disturbed.
  std::vector<std::string> keys = colliding_keys(cache_, 5);
  Gate finish;
  std::vector<pid_t> owners;
  for (int i = 0; i < 4; ++i) {
    owners.push_back(spawn([&, i] {
      get_or_compute<std::string>(cache_, keys[i], [&] {
        bump(shared_->started);
        finish.wait();
        return keys[i];
      });
      return 0;
    }));
    ASSERT_TRUE(eventually([&] { return flight_owner(cache_, keys[i]) == std::uint32_t(owners[i]); }));
  }
  pid_t fifth = spawn([&] {
    return get_or_compute<std::string>(cache_, keys[4], [] { return std::string("fifth"); }) == "fifth" ? 0 : 1;
  });
  EXPECT_EQ(finishes(fifth), 0);
  EXPECT_EQ(get_or_compute<std::string>(cache_, keys[4], [] { return std::string("again"); }), "fifth");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(flight_owner(cache_, keys[i]), std::uint32_t(owners[i]));
  finish.open();
  for (pid_t p : owners) EXPECT_EQ(finishes(p), 0);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(cache_.get_as<std::string>(keys[i]), keys[i]);
  EXPECT_TRUE(all_flights_free(cache_));
}

// ---- invariant 3 -----------------------------------------------------------------

TEST_F(MemoizeTest, ResultComputedAcrossAnInvalidationIsNeverServed) {
  for (bool whole_cache : {false, true}) {
    const std::string key = whole_cache ? "across-clear" : "across-invalidate";
    ComputeOptions o;
    o.set.tags = {"shop.order"};
    int calls = 0;
    auto compute = [&] {
      ++calls;
      if (calls == 1) {  // another process invalidates while we compute
        pid_t p = spawn([&] {
          whole_cache ? cache_.clear() : cache_.invalidate("shop.order");
          return 0;
        });
        if (wait_for(p) != 0) throw std::runtime_error("invalidator failed");
      }
      return "v" + std::to_string(calls);
    };
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o), "v1");  // the caller gets its result
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o), "v2") << key;  // but it is not served
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o), "v2");
    EXPECT_EQ(calls, 2);
  }
}

// ---- the memoizer --------------------------------------------------------------------

struct Metadata {
  std::string model;
  std::string user;
  std::vector<std::string> fields;
  MSGPACK_DEFINE(model, user, fields);
  bool operator==(const Metadata&) const = default;
};

struct Filter {
  int min = 0;
  std::string op;
  MSGPACK_DEFINE(min, op);
};

TEST(MemoizeKeys, ReadableForStringsAndIntegersHashedOtherwise) {
  std::vector<std::string> params{"created_at", "42", detail::render(Filter{3, ">"})};
  std::string user = detail::user_token("alice");
  std::string key = detail::build_key(
      {"metadata", "extract_model_metadata", "shop", "order", user, &params}, 1024);
  EXPECT_EQ(key, "metadata_extract%5Fmodel%5Fmetadata_shop_order_" + user + "_created%5Fat_42_" + params[2]);
  EXPECT_EQ(detail::render(42), "42");
  EXPECT_EQ(detail::render(std::string("x y")), "x y");
  EXPECT_EQ(params[2].size(), 17u);
  EXPECT_EQ(params[2][0], 'h');
  EXPECT_NE(detail::render(Filter{3, ">"}), detail::render(Filter{4, ">"}));
  EXPECT_EQ(user.size(), 33u);
  EXPECT_EQ(key.find("alice"), std::string::npos);  // the user appears only as a hash
}

TEST(MemoizeKeys, SplitOneWayOnly) {
  std::vector<std::string> none;
  auto key = [&](std::string_view app, std::string_view model) {
    return detail::build_key({"metadata", "m", app, model, "any", &none}, 1024);
  };
  EXPECT_NE(key("a_b", "c"), key("a", "b_c"));
  EXPECT_NE(key("a%5Fb", "c"), key("a_b", "c"));
  std::vector<std::string> one{""};
  EXPECT_NE(detail::build_key({"metadata", "m", "a", "b", "any", &none}, 1024),
            detail::build_key({"metadata", "m", "a", "b", "any", &one}, 1024));
}

TEST(MemoizeKeys, LongKeysEndInAHashAndStayDistinct) {
  std::vector<std::string> p1{std::string(2000, 'x')}, p2{std::string(2000, 'x') + "y"};
  std::string k1 = detail::build_key({"metadata", "m", "a", "b", "any", &p1}, 256);
  std::string k2 = detail::build_key({"metadata", "m", "a", "b", "any", &p2}, 256);
  EXPECT_LE(k1.size(), 256u);
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
  std::vector<std::string> none;
  std::string key = detail::build_key({"metadata", "extract_model_metadata", "shop", "order",
                                       detail::user_token("alice"), &none},
                                      cache_.max_key_bytes());
  EXPECT_EQ(cache_.get_as<Metadata>(key), m);
}

TEST_F(MemoizeTest, UsersNeverSeeEachOthersValues) {
  auto fn = [&](const std::string& app, const std::string& model, int user_id) {
    bump(shared_->computes);
    return app + "." + model + " for user " + std::to_string(user_id);
  };
  auto per_user = memoize<std::string>(cache_, {.method = "per_user"}, fn);
  EXPECT_EQ(per_user("shop", "order", 1), "shop.order for user 1");
  pid_t other = spawn([&] { return per_user("shop", "order", 2) == "shop.order for user 2" ? 0 : 1; });
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
       .extra_tags = [](const std::vector<std::string>& p) { return std::vector{model_tag(p[0], p[1])}; }},
      [&](const std::string& app, const std::string& model, int user, const std::string&, const std::string&) {
        return fn(app, model, user);
      });
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
  auto both = [&] { return std::pair(long_lived("shop", "order", 1), short_lived("shop", "order", 1)); };
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
  auto extract = memoize<int>(off, {.method = "disabled"}, [&](const char*, const char*, int) { return ++calls; });
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

TEST_F(MemoizeTest, StaleWhileRevalidateServesTheOldValueWhileOneRecomputes) {
  shared_->now_ms = 1'000'000;
  clock::set_fake_for_testing(&shared_->now_ms);
  struct Restore {
    ~Restore() { clock::set_fake_for_testing(nullptr); }
  } restore;
  auto advance = [&](std::chrono::milliseconds d) {
    std::atomic_ref<std::int64_t>(shared_->now_ms).fetch_add(d.count());
  };
  ComputeOptions o;
  o.set.ttl = 10s;
  o.stale_while_revalidate = 60s;
  Gate finish;
  auto compute = [&](bool block) {
    return [&, block] {
      int n = bump(shared_->computes) + 1;
      if (block) {
        raise(shared_->started);
        finish.wait();
      }
      return "v" + std::to_string(n);
    };
  };
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", compute(false), o), "v1");
  advance(10s);  // past the ttl, inside the window
  pid_t refresher = spawn([&] {
    return get_or_compute<std::string>(cache_, "k", compute(true), o) == "v2" ? 0 : 1;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  for (int i = 0; i < 3; ++i) {  // everyone else gets the old value at once
    EXPECT_EQ(get_or_compute<std::string>(cache_, "k", compute(false), o), "v1");
  }
  EXPECT_EQ(read(shared_->computes), 2);
  finish.open();
  EXPECT_EQ(finishes(refresher), 0);
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", compute(false), o), "v2");
  advance(70s);  // past ttl + window: gone, a plain miss
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", compute(false), o), "v3");
  EXPECT_EQ(read(shared_->computes), 3);
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
  o.warmers.push_back(warm_task<std::string>({"x", "y"}, [](const std::string& k) { return "w" + k; }));
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

TEST_F(MemoizeTest, BadOptionsAreAnError) {
  ComputeOptions o;
  o.lease = 0ms;
  EXPECT_THROW(get_or_compute<int>(cache_, "k", [] { return 1; }, o), Error);
  o.lease = 1s;
  o.set.ttl = -1ms;
  EXPECT_THROW(get_or_compute<int>(cache_, "k", [] { return 1; }, o), Error);
  EXPECT_FALSE(cache_.get("k"));
}

}  // namespace
}  // namespace hostcache
