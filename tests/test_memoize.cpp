// get_or_compute across processes: the single flight (one compute, a dead or
// overrun owner taken over, exceptions, colliding flight slots), invariant 3
// across an invalidation, stale-while-revalidate.
//
// Processes are real (fork). Children report through MAP_SHARED memory and
// their exit status; they are synchronised with pipes (Gate) and conditions
// polled in shared memory, never with sleeps.
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
    ASSERT_TRUE(
        eventually([&] { return flight_owner(cache_, keys[i]) == std::uint32_t(owners[i]); }));
  }
  pid_t fifth = spawn([&] {
    return get_or_compute<std::string>(cache_, keys[4], [] { return std::string("fifth"); }) ==
                   "fifth"
               ? 0
               : 1;
  });
  EXPECT_EQ(finishes(fifth), 0);
  EXPECT_EQ(get_or_compute<std::string>(cache_, keys[4], [] { return std::string("again"); }),
            "fifth");
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
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o),
              "v1");  // the caller gets its result
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o), "v2")
        << key;  // but it is not served
    EXPECT_EQ(get_or_compute<std::string>(cache_, key, compute, o), "v2");
    EXPECT_EQ(calls, 2);
  }
}

// ---- stale-while-revalidate ----------------------------------------------------------

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
  pid_t refresher = spawn(
      [&] { return get_or_compute<std::string>(cache_, "k", compute(true), o) == "v2" ? 0 : 1; });
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

// The stale path holds the flight while it looks again: an accept() that
// throws there (a decoder's error that is no std::exception, a binding's
// KeyboardInterrupt, the cache refusing a forked child) must release the
// flight, or every other process would serve the stale value uncomputed for
// the whole lease.
TEST_F(MemoizeTest, AnAcceptThatThrowsWhileHoldingTheFlightReleasesIt) {
  FakeClock fake;
  ComputeOptions o;
  o.set.ttl = 10s;
  o.stale_while_revalidate = 60s;
  o.lease = 1h;
  struct Counts {
    int accepts = 0, computes = 0, throw_at = 0;
  };
  auto hooks_of = [](Counts& n) {
    return detail::ComputeHooks{
        &n,
        [](void* c, std::string_view) {
          auto& k = *static_cast<Counts*>(c);
          if (++k.accepts == k.throw_at) throw 42;  // not a std::exception
          return true;
        },
        [](void* c, std::string& out) {
          ++static_cast<Counts*>(c)->computes;
          out = "fresh";
        }};
  };
  Counts first;
  detail::get_or_compute(cache_, "k", o, hooks_of(first));
  ASSERT_EQ(first.computes, 1);
  fake.advance(10'000);  // past the ttl, inside the window: stale
  Counts thrower;
  thrower.throw_at = 2;  // the look again, made holding the flight
  EXPECT_THROW(detail::get_or_compute(cache_, "k", o, hooks_of(thrower)), int);
  EXPECT_EQ(thrower.accepts, 2);
  EXPECT_EQ(thrower.computes, 0);
  // Another process finds the value stale and the flight free: it refreshes.
  EXPECT_EQ(wait_for(spawn([&] {
              Counts next;
              detail::get_or_compute(cache_, "k", o, hooks_of(next));
              return next.computes == 1 ? 0 : 1;
            })),
            0)
      << "the flight was left held: the stale value was served without a refresh";
}

TEST_F(MemoizeTest, BadOptionsAreAnError) {
  ComputeOptions o;
  o.lease = 0ms;
  EXPECT_THROW(get_or_compute<int>(
                   cache_, "k", [] { return 1; }, o),
               Error);
  o.lease = 1s;
  o.set.ttl = -1ms;
  EXPECT_THROW(get_or_compute<int>(
                   cache_, "k", [] { return 1; }, o),
               Error);
  EXPECT_FALSE(cache_.get("k"));
  int calls = 0;
  auto count = [&] { return ++calls; };
  try {
    get_or_compute<int>(cache_, std::string(cache_.max_key_bytes() + 1, 'k'), count);
    ADD_FAILURE() << "an oversized key was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::key_too_large);
  }
  EXPECT_THROW(get_or_compute<int>(cache_, "", count), Error);
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace hostcache
