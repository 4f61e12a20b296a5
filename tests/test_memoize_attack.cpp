// memoize against dead, stalled and hostile processes (issues 10 and 11):
//  - a worker killed while naming a method's statistics slot costs nothing,
//    and no call looks the slot up again (finding 3);
//  - one key never has two computing owners, whatever the interleaving of
//    scan and claim (finding 7);
//  - counts scribbled into the live header are never used (finding 8);
//  - a flight the segment says is held forever, by a live pid, holds a
//    caller no longer than its own lease (issue 11, item 3);
//  - distinct memoized calls never share a key, and the hashes in keys are
//    keyed with the segment's secret (issue 11, item 9).
//
// Processes are real (fork). They report through MAP_SHARED memory and exit
// statuses and are synchronised through conditions polled there and pipes
// (Gate), never with sleeps; the only times asserted are generous bounds that
// tell "did not wait a lease / a second per call" from "did".
#include <gtest/gtest.h>
#include <hostcache/memoize.h>
#include <signal.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "flight.h"
#include "layout.h"
#include "memoize_fixture.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using namespace memoize_testing;
using steady = std::chrono::steady_clock;
using testing::Gate;
using testing::spawn;
using testing::wait_for;

// The library reads it once, on first use: before main.
const bool kHooksOn = [] { return ::setenv("HOSTCACHE_TEST_HOOKS", "1", 1) == 0; }();

// ---- helpers ----------------------------------------------------------------------

void store32(std::uint32_t& field, std::uint32_t v) { std::atomic_ref<std::uint32_t>(field).store(v); }
std::uint32_t load32(std::uint32_t& field) { return std::atomic_ref<std::uint32_t>(field).load(); }
std::uint64_t load64(std::uint64_t& field) { return std::atomic_ref<std::uint64_t>(field).load(); }

layout::MethodSlot* method_slots(const Cache& c) { return detail::Access::segment(c).method_slots(); }
std::uint32_t method_count(const Cache& c) {
  return detail::Access::segment(c).geometry().method_slots;
}
// The slot a method's name hashes to first.
layout::MethodSlot& home_method_slot(const Cache& c, std::string_view method) {
  const std::uint64_t h = XXH3_64bits(method.data(), method.size());
  return method_slots(c)[h % method_count(c)];
}
// Every slot named `method` (claimed == 2).
std::vector<layout::MethodSlot*> slots_named(const Cache& c, std::string_view method) {
  std::vector<layout::MethodSlot*> out;
  for (std::uint32_t i = 0; i < method_count(c); ++i) {
    layout::MethodSlot& s = method_slots(c)[i];
    if (load32(s.claimed) == 2 && load32(s.name_len) == method.size() &&
        std::string_view(s.name, method.size()) == method) {
      out.push_back(&s);
    }
  }
  return out;
}
// A pid that was a process of ours and is now reaped.
pid_t dead_pid() {
  pid_t p = spawn([] { return 0; });
  wait_for(p);
  return p;
}
// MethodSlot::claimed of a slot "being named by pid" (memoize.cpp).
std::uint32_t naming_by(pid_t pid) { return (std::uint32_t(pid) << 2) | 1u; }

// Kills and reaps, when the scope ends, the children a failed assertion left
// running (a reaped child is skipped: waitpid says it is not ours any more).
struct Reaper {
  std::vector<pid_t> pids;
  ~Reaper() {
    for (pid_t p : pids) {
      int status = 0;
      if (::waitpid(p, &status, WNOHANG) == 0) {
        ::kill(p, SIGKILL);
        ::waitpid(p, &status, 0);
      }
    }
  }
};
// Yields until `flag` is raised; false after a minute (a hang guard).
bool await_flag(const int& flag) {
  const auto give_up = steady::now() + 60s;
  while (read(flag) == 0) {
    if (steady::now() > give_up) return false;
    sched_yield();
  }
  return true;
}

// Keys whose flights start at the same slot.
std::vector<std::string> colliding_keys(const Cache& c, std::size_t n, const std::string& stem) {
  const std::uint64_t mask = flight_count(c) - 1;
  std::vector<std::string> keys;
  const std::string first = stem + "-0";
  const std::uint64_t home = XXH3_64bits(first.data(), first.size()) & mask;
  for (int i = 0; keys.size() < n; ++i) {
    std::string k = stem + "-" + std::to_string(i);
    if ((XXH3_64bits(k.data(), k.size()) & mask) == home) keys.push_back(k);
  }
  return keys;
}
layout::FlightSlot& home_flight_slot(const Cache& c, std::string_view key) {
  const std::uint64_t h = XXH3_64bits(key.data(), key.size());
  return detail::Access::segment(c).flight_slots()[h & (flight_count(c) - 1)];
}

// ---- finding 3: naming a method's statistics slot --------------------------------

TEST_F(MemoizeTest, AMethodSlotsDeadNamerCostsNothing) {
  // What a worker killed between claiming a method slot and naming it leaves:
  // 1 (today's builds, whose namer wrote no pid) or "being named by <pid>".
  for (bool legacy : {true, false}) {
    const std::string method = legacy ? "named-by-the-dead-legacy" : "named-by-the-dead";
    store32(home_method_slot(cache_, method).claimed, legacy ? 1u : naming_by(dead_pid()));
    pid_t worker = spawn([&] {
      const auto start = steady::now();
      for (int i = 0; i < 8; ++i) {
        get_or_compute<int>(
            cache_, method + "#" + std::to_string(i % 2), [] { return 1; }, options(method));
      }
      // A wait per call (1 s each before the fix) shows as 8 s; a lookup as nothing.
      return steady::now() - start < 4s ? 0 : 1;
    });
    EXPECT_EQ(finishes(worker), 0) << method << ": the calls waited on the dead namer";
    auto s = stats_of(cache_, method);
    ASSERT_TRUE(s) << method;
    EXPECT_EQ(s->requests, 8u) << method;
    EXPECT_EQ(s->misses, 2u) << method;
    EXPECT_EQ(slots_named(cache_, method).size(), 1u) << method;
  }
}

TEST_F(MemoizeTest, AMethodSlotIsLookedUpOncePerHandle) {
  // After its first call, a process counts into the slot it found without
  // looking at the slot's state again: a slot that a stalled or hostile
  // process makes look "being named" costs no call a wait, nor a new slot.
  const std::string method = "looked-up-once";
  Gate corrupted;
  pid_t worker = spawn([&] {
    auto call = [&] { return get_or_compute<int>(cache_, "once", [] { return 1; }, options(method)); };
    call();
    raise(shared_->started);
    corrupted.wait();
    const auto start = steady::now();
    for (int i = 0; i < 10; ++i) call();
    return steady::now() - start < 4s ? 0 : 1;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  std::vector<layout::MethodSlot*> named = slots_named(cache_, method);
  ASSERT_EQ(named.size(), 1u);
  layout::MethodSlot& slot = *named[0];
  store32(slot.claimed, 1u);  // "being named", as a namer killed there would leave it
  corrupted.open();
  EXPECT_EQ(finishes(worker), 0);
  EXPECT_EQ(load64(slot.requests), 11u);  // every call counted where the first one was
  EXPECT_TRUE(slots_named(cache_, method).empty());  // and no second slot claimed for it
}

TEST_F(MemoizeTest, EveryMethodSlotStuckBeingNamedByALiveProcessCostsNoWaitPerCall) {
  for (std::uint32_t i = 0; i < method_count(cache_); ++i) {
    store32(method_slots(cache_)[i].claimed, naming_by(1));  // init: alive, never finishes
  }
  pid_t worker = spawn([&] {
    Cache fresh = Cache::attach(name_.name);  // a worker starting now
    const auto start = steady::now();
    for (int i = 0; i < 50; ++i) {
      if (get_or_compute<int>(fresh, "stuck", [] { return 5; }, options("stuck")) != 5) return 2;
    }
    return steady::now() - start < 4s ? 0 : 1;
  });
  EXPECT_EQ(finishes(worker), 0);
  EXPECT_FALSE(stats_of(cache_, "stuck"));  // uncounted: the worst it may cost
}

// ---- finding 7: one key, one owner ------------------------------------------------

// What the two callers of one key signal each other, in shared memory.
struct Steps {
  int c1_at_claim;   // c1 has scanned and stopped before its claim
  int c1_go;         // c1 may claim
  int c2_computing;  // c2 owns the flight and computes
  int c2_go;         // c2 may finish
};
Steps* g_steps = nullptr;
int g_hook_fired = 0;
// The hook of the process that stops between its scan and its (first) claim.
void stop_before_first_claim() {
  if (g_hook_fired++ != 0) return;
  raise(g_steps->c1_at_claim);
  await_flag(g_steps->c1_go);
}

TEST_F(MemoizeTest, AKeyNeverHasTwoOwnersWhenALowerSlotFreesBetweenScanAndClaim) {
  ASSERT_TRUE(kHooksOn);
  g_steps = static_cast<Steps*>(testing::shared_memory(sizeof(Steps)));
  struct Unmap {
    ~Unmap() { ::munmap(g_steps, sizeof(Steps)); }
  } unmap;
  int& c1_at_claim = g_steps->c1_at_claim;
  int& c1_go = g_steps->c1_go;
  int& c2_computing = g_steps->c2_computing;
  int& c2_go = g_steps->c2_go;
  const std::vector<std::string> keys = colliding_keys(cache_, 2, "owners");
  const std::string& other = keys[0];  // its flight takes the key's first slot...
  const std::string& key = keys[1];    // ...so the first caller of this one picks the second

  Reaper reaper;
  Gate other_done;
  pid_t other_owner = spawn([&] {
    get_or_compute<std::string>(cache_, other, [&] {
      other_done.wait();
      return std::string("other");
    });
    return 0;
  });
  reaper.pids.push_back(other_owner);
  ASSERT_TRUE(
      eventually([&] { return flight_owner(cache_, other) == std::uint32_t(other_owner); }));

  pid_t c1 = spawn([&] {  // scans (slot 0 busy, slot 1 free), then stops before claiming slot 1
    ::close(other_done.fds[1]);  // only the parent's end may hold the other owner back
    other_done.fds[1] = -1;
    if (!flight::testing::set_before_claim_hook(&stop_before_first_claim)) return 3;
    std::string v = get_or_compute<std::string>(cache_, key, [&] {
      bump(shared_->computes);
      return std::string("c1");
    });
    set_result(10, v);
    return 0;
  });
  reaper.pids.push_back(c1);
  ASSERT_TRUE(eventually([&] { return read(c1_at_claim) == 1; }));

  other_done.open();  // the other key's flight ends: slot 0 is free again
  EXPECT_EQ(finishes(other_owner), 0);
  ASSERT_EQ(flight_owner(cache_, other), 0u);

  pid_t c2 = spawn([&] {  // sees slot 0 free, claims it and computes
    std::string v = get_or_compute<std::string>(cache_, key, [&] {
      bump(shared_->computes);
      raise(c2_computing);
      await_flag(c2_go);
      return std::string("c2");
    });
    set_result(11, v);
    return 0;
  });
  reaper.pids.push_back(c2);
  ASSERT_TRUE(eventually([&] { return read(c2_computing) == 1; }));
  ASSERT_EQ(flight_owner(cache_, key), std::uint32_t(c2));

  raise(c1_go);  // c1 claims slot 1 now: it must find c2's flight and wait on it
  EXPECT_TRUE(eventually([&] { return read(shared_->computes) == 2 || sleeping_waiters(cache_) >= 1; }));
  raise(c2_go);
  EXPECT_EQ(finishes(c1), 0);
  EXPECT_EQ(finishes(c2), 0);
  EXPECT_EQ(read(shared_->computes), 1) << "one key had two computing owners";
  EXPECT_EQ(result(10), "c2");
  EXPECT_EQ(result(11), "c2");
  EXPECT_TRUE(all_flights_free(cache_));
}

TEST_F(MemoizeTest, ManyProcessesManyRoundsComputeEachKeyOnce) {
  // Each round, a fresh key whose first flight slot another key's short
  // flights keep taking and freeing: the interleaving above, left to the
  // scheduler. Every key must be computed exactly once.
  constexpr int kProcs = 6, kRounds = 120;
  struct Board {
    int arrived[kRounds];
    int computes[kRounds];
    int blocker_computes[kRounds];
  };
  auto* board = static_cast<Board*>(testing::shared_memory(sizeof(Board)));
  std::vector<std::vector<std::string>> keys;
  for (int r = 0; r < kRounds; ++r) keys.push_back(colliding_keys(cache_, 2, "round" + std::to_string(r)));
  auto await_round = [&](int r) {
    bump(board->arrived[r]);
    const auto give_up = steady::now() + 60s;  // a hang guard
    while (read(board->arrived[r]) < kProcs + 1 && steady::now() < give_up) sched_yield();
  };
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcs; ++p) {
    pids.push_back(spawn([&, p] {
      std::minstd_rand rng(p + 1);
      for (int r = 0; r < kRounds; ++r) {
        await_round(r);
        for (int spin = int(rng() % 200); spin > 0; --spin) sched_yield();  // arrive scattered
        int v = get_or_compute<int>(cache_, keys[r][1], [&] {
          bump(board->computes[r]);
          for (int spin = 0; spin < 20; ++spin) sched_yield();  // a short computation
          return r;
        });
        if (v != r) return 1;
      }
      return 0;
    }));
  }
  pid_t blocker = spawn([&] {
    for (int r = 0; r < kRounds; ++r) {
      await_round(r);
      get_or_compute<int>(cache_, keys[r][0], [&] {
        bump(board->blocker_computes[r]);
        for (int spin = 0; spin < 50; ++spin) sched_yield();
        return -r;
      });
    }
    return 0;
  });
  for (pid_t p : pids) EXPECT_EQ(finishes(p), 0);
  EXPECT_EQ(finishes(blocker), 0);
  int doubled = 0;
  for (int r = 0; r < kRounds; ++r) {
    if (read(board->computes[r]) != 1) ++doubled;
    EXPECT_EQ(read(board->computes[r]), 1) << "round " << r;
    EXPECT_EQ(read(board->blocker_computes[r]), 1) << "round " << r;
  }
  EXPECT_EQ(doubled, 0);
  EXPECT_TRUE(all_flights_free(cache_));
  ::munmap(board, sizeof(Board));
}

// ---- finding 8: the live header's counts are never used ------------------------------

TEST_F(MemoizeTest, CountsScribbledIntoTheLiveHeaderAreIgnored) {
  constexpr int kWorkers = 4;
  Gate scribbled;
  std::vector<pid_t> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(spawn([&, w] {
      Cache mine = Cache::attach(name_.name);
      bump(shared_->started);
      scribbled.wait();
      auto extract = memoize<std::string>(mine, {.method = "scribbled"},
                                          [](const std::string& app, const std::string& model, int user) {
                                            return app + "." + model + "#" + std::to_string(user);
                                          });
      for (int i = 0; i < 200; ++i) {
        if (extract("shop", "m" + std::to_string(i % 20), w) !=
            "shop.m" + std::to_string(i % 20) + "#" + std::to_string(w)) {
          return 1;
        }
        get_or_compute<int>(mine, "plain-" + std::to_string(i), [&] { return i; },
                            options("scribbled-plain"));
      }
      auto s = stats_of(mine, "scribbled");
      return s && s->requests >= 200 ? 0 : 2;
    }));
  }
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == kWorkers; }));
  pid_t scribbler = spawn([&] {
    Cache c = Cache::attach(name_.name);
    layout::Header* h = detail::Access::segment(c).header();
    std::atomic_ref<std::uint32_t>(h->flight_slots).store(0x40000000u);
    std::atomic_ref<std::uint32_t>(h->method_slots).store(0xffffffffu);
    return 0;
  });
  ASSERT_EQ(finishes(scribbler), 0);
  scribbled.open();
  for (pid_t p : workers) EXPECT_EQ(finishes(p), 0) << "a memoizing process crashed or failed";
  EXPECT_EQ(stats_of(cache_, "scribbled")->requests, 200u * kWorkers);
}

// ---- issue 11 item 3: waits the segment controls ------------------------------------

TEST_F(MemoizeTest, AFlightHeldForeverByALivePidHoldsACallerOnlyForItsOwnLease) {
  const std::string key = "held-forever";
  layout::FlightSlot& s = home_flight_slot(cache_, key);
  // Busy (confirmed), for our key, by init, until the end of time.
  std::atomic_ref<std::uint64_t>(s.key_hash).store(XXH3_64bits(key.data(), key.size()));
  std::atomic_ref<std::int64_t>(s.lease_until_ms).store(INT64_MAX);
  store32(s.owner_pid, 1);
  store32(s.word, (1u << 3) | 4u | 2u);
  ASSERT_EQ(flight_owner(cache_, key), 1u);
  constexpr auto kLease = 1s;
  pid_t caller = spawn([&] {
    ComputeOptions o;
    o.lease = kLease;
    const auto start = steady::now();
    const int v = get_or_compute<int>(cache_, key, [&] { return bump(shared_->computes), 7; }, o);
    const auto waited = steady::now() - start;
    if (v != 7) return 1;
    if (waited < kLease) return 2;   // it waited for the flight, as long as its lease said
    if (waited > 20s) return 3;      // not for the segment's forever
    return 0;
  });
  EXPECT_EQ(finishes(caller), 0);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_EQ(get_or_compute<int>(cache_, key, [] { return 8; }), 7);  // and stored it
}

// ---- issue 11 item 9: keys --------------------------------------------------------------

TEST_F(MemoizeTest, AStringUserAndAnIntegerUserNeverShareAKey) {
  auto per_user = memoize<std::string>(cache_, {.method = "typed-user"},
                                       [&](const std::string& app, const std::string& model, const auto& user) {
                                         bump(shared_->computes);
                                         if constexpr (std::is_integral_v<std::decay_t<decltype(user)>>) {
                                           return app + "." + model + " for integer " + std::to_string(user);
                                         } else {
                                           return app + "." + model + " for string " + std::string(user);
                                         }
                                       });
  EXPECT_EQ(per_user("shop", "order", std::string("42")), "shop.order for string 42");
  pid_t other = spawn([&] {
    return per_user("shop", "order", 42) == "shop.order for integer 42" ? 0 : 1;
  });
  EXPECT_EQ(finishes(other), 0);
  EXPECT_EQ(read(shared_->computes), 2);
}

TEST_F(MemoizeTest, AnEmptyKeyPrefixKeepsItsSeparator) {
  // Two methods whose parts, joined without the empty prefix's separator,
  // spell the same key: "m_a_b_any_any".
  auto first = memoize<std::string>(
      cache_, {.method = "a", .user_specific = false, .key_prefix = "m"},
      [&](const std::string&, const std::string&, int) { return std::string("method a"); });
  auto second = memoize<std::string>(
      cache_, {.method = "m", .user_specific = false, .key_prefix = ""},
      [&](const std::string&, const std::string&, int, const std::string&) {
        return std::string("method m");
      });
  EXPECT_EQ(first("b", "any", 1), "method a");
  EXPECT_EQ(second("a", "b", 1, std::string("any")), "method m");
}

TEST_F(MemoizeTest, IntegerAndStringParamsNeverShareAKey) {
  auto fn = memoize<std::string>(cache_, {.method = "typed-param", .user_specific = false},
                                 [](const std::string&, const std::string&, int, const auto& p) {
                                   if constexpr (std::is_integral_v<std::decay_t<decltype(p)>>) {
                                     return "integer " + std::to_string(p);
                                   } else {
                                     return "string " + std::string(p);
                                   }
                                 });
  EXPECT_EQ(fn("a", "b", 0, std::string("7")), "string 7");
  EXPECT_EQ(fn("a", "b", 0, 7), "integer 7");
}

struct Point {
  int x = 0, y = 0;
  MSGPACK_DEFINE(x, y)
};

TEST_F(MemoizeTest, HashesInKeysAreKeyedWithTheSegmentsSecret) {
  // Another segment, another secret: the same call renders another key
  // wherever the key holds a hash (the user, a non-string argument, a long
  // key's tail), and the same key in every process of one segment.
  testing::ScopedName other_name{"memo-other"};
  Cache other = Cache::open(testing::small_config(other_name.name));
  const detail::KeyArg app = detail::key_arg("shop"), model = detail::key_arg("order");
  const detail::KeyArg user = detail::key_arg("alice");
  const std::vector<detail::KeyArg> point{detail::key_arg(Point{1, 2})};
  const std::vector<detail::KeyArg> plain{detail::key_arg("x")};
  const std::vector<detail::KeyArg> longp{detail::key_arg(std::string(cache_.max_key_bytes(), 'x'))};
  auto key = [&](const Cache& c, const detail::KeyArg* u, const std::vector<detail::KeyArg>& p) {
    return detail::build_key(c, {"metadata", "m", &app, &model, u, &p});
  };
  EXPECT_NE(detail::user_token(cache_, user), detail::user_token(other, user));
  EXPECT_NE(key(cache_, nullptr, point), key(other, nullptr, point));
  EXPECT_NE(key(cache_, nullptr, longp), key(other, nullptr, longp));
  EXPECT_EQ(key(cache_, nullptr, plain), key(other, nullptr, plain));  // nothing hashed: the same

  const std::string mine = key(cache_, &user, point) + "|" + key(cache_, nullptr, longp);
  pid_t child = spawn([&] {
    Cache again = Cache::attach(name_.name);
    return key(again, &user, point) + "|" + key(again, nullptr, longp) == mine ? 0 : 1;
  });
  EXPECT_EQ(finishes(child), 0);
}

TEST_F(MemoizeTest, TheLongKeyFallbackKeepsTheUserInSight) {
  const std::size_t max = cache_.max_key_bytes();
  const detail::KeyArg app = detail::key_arg(std::string(max, 'a'));  // the head alone is too long
  const detail::KeyArg model = detail::key_arg("b");
  const detail::KeyArg alice = detail::key_arg("alice"), bob = detail::key_arg("bob");
  const std::vector<detail::KeyArg> none;
  const std::string ka = detail::build_key(cache_, {"metadata", "m", &app, &model, &alice, &none});
  const std::string kb = detail::build_key(cache_, {"metadata", "m", &app, &model, &bob, &none});
  EXPECT_LE(ka.size(), max);
  EXPECT_NE(ka, kb);
  EXPECT_EQ(ka.rfind("metadata_" + detail::user_token(cache_, alice) + "_%h", 0), 0u) << ka;
  EXPECT_EQ(kb.rfind("metadata_" + detail::user_token(cache_, bob) + "_%h", 0), 0u) << kb;
}

// Distinct (prefix, method, app, model, user, params) never share a key: a
// property test over generated calls from an alphabet rich in separators,
// escapes, type tags and look-alikes, with empty parts, integer/string
// twins and keys long enough to take the hashed fallback.
TEST_F(MemoizeTest, DistinctCallsNeverShareAKey) {
  std::mt19937_64 rng(20240611);
  const std::vector<std::string> atoms{"", "_", "%", "%5F", "a", "a_b", "i:1", "1", ":", "%h",
                                       "u", "any", "h:", "x y", "\x01", "\xff", "42", "-1", "b:true"};
  auto pick_text = [&] {
    std::string s;
    for (int n = int(rng() % 3); n > 0; --n) s += atoms[rng() % atoms.size()];
    return s;
  };
  auto pick_arg = [&]() -> detail::KeyArg {
    switch (rng() % 6) {
      case 0: return detail::key_arg(std::int64_t(rng() % 5) - 2);
      case 1: return detail::key_arg(bool(rng() % 2));
      case 2: return detail::key_arg(Point{int(rng() % 3), int(rng() % 3)});
      case 3: return detail::key_arg(std::string(cache_.max_key_bytes() / 2 + rng() % 3, 'L'));
      default: return detail::key_arg(pick_text());
    }
  };
  using Call = std::tuple<std::string, std::string, std::pair<char, std::string>,
                          std::pair<char, std::string>, std::pair<char, std::string>,
                          std::vector<std::pair<char, std::string>>>;
  auto flat = [](const detail::KeyArg& a) { return std::pair(char(a.kind), a.bytes); };
  std::map<std::string, Call> seen;
  int collisions = 0, fallbacks = 0;
  for (int i = 0; i < 60000; ++i) {
    const std::string prefix = rng() % 4 == 0 ? pick_text() : "metadata";
    const std::string method = pick_text();
    const detail::KeyArg app = pick_arg(), model = pick_arg();
    const bool user_specific = rng() % 2 == 0;
    const detail::KeyArg user = pick_arg();
    std::vector<detail::KeyArg> params;
    for (int n = int(rng() % 4); n > 0; --n) params.push_back(pick_arg());
    const std::string key = detail::build_key(
        cache_, {prefix, method, &app, &model, user_specific ? &user : nullptr, &params});
    ASSERT_LE(key.size(), cache_.max_key_bytes());
    if (key.find("_%h") != std::string::npos) ++fallbacks;
    std::vector<std::pair<char, std::string>> flat_params;
    for (const auto& p : params) flat_params.push_back(flat(p));
    Call call{prefix, method, flat(app), flat(model),
              user_specific ? flat(user) : std::pair<char, std::string>('-', ""), flat_params};
    auto [it, inserted] = seen.emplace(key, call);
    if (!inserted && it->second != call) {
      ++collisions;
      ADD_FAILURE() << "two calls share the key " << key;
      if (collisions > 5) break;
    }
  }
  EXPECT_EQ(collisions, 0);
  EXPECT_GT(fallbacks, 1000);  // the hashed fallback was exercised too
  EXPECT_GT(seen.size(), 20000u);
}

// A child forked inside the owner's compute (a library that forks a helper
// and whose child returns, here by throwing, into the caller's stack) runs
// the rest of its parent's get_or_compute: its copy of the flight's guard
// releases on the way out. The flight is the parent's, still computing; a
// waiter that then found the slot free would compute the key a second time
// (the single flight broken), and its value could overwrite the owner's.
struct ChildOfTheCompute {};

TEST_F(MemoizeTest, AChildForkedInsideTheComputeNeverReleasesItsParentsFlight) {
  Gate finish;
  ComputeOptions o;
  o.lease = 1h;  // nothing but a release can hand the flight over within the test
  const pid_t owner = spawn([&] {
    const pid_t me = ::getpid();
    try {
      set_result(0, get_or_compute<std::string>(
                        cache_, "k",
                        [&]() -> std::string {
                          bump(shared_->computes);
                          const pid_t c = ::fork();
                          if (c == 0) throw ChildOfTheCompute{};  // the child's copy unwinds the parent's call
                          if (wait_for(c) != 0) return "child failed";
                          raise(shared_->started);
                          finish.wait();
                          return "owner";
                        },
                        o));
    } catch (const ChildOfTheCompute&) {
      if (::getpid() != me) ::_exit(0);
      return 3;
    }
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return read(shared_->started) == 1; }));
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner)) << "the child's unwinding released its parent's flight";
  const pid_t waiter = spawn([&] {
    ::close(finish.fds[1]);  // this process's copy of the gate's write end: the gate opens when the test's closes
    set_result(1, get_or_compute<std::string>(
                      cache_, "k",
                      [&] {
                        bump(shared_->computes);
                        return std::string("waiter");
                      },
                      o));
    return 0;
  });
  // The waiter either sleeps on the owner's flight or (the flight released
  // under the owner) computes the key itself.
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 1 || read(shared_->computes) == 2; }));
  finish.open();
  EXPECT_EQ(finishes(owner), 0);
  EXPECT_EQ(finishes(waiter), 0);
  EXPECT_EQ(read(shared_->computes), 1) << "the key was computed twice: the owner's flight was released by the "
                                           "child forked inside its compute";
  EXPECT_EQ(result(0), "owner");
  EXPECT_EQ(result(1), "owner");
  EXPECT_TRUE(all_flights_free(cache_));
}

}  // namespace
}  // namespace hostcache
