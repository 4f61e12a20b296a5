// inspect::read / check / list: what they report on sound segments, on
// segments with one planted defect each, on garbage, on a stripe whose lock
// another process holds, and on a segment under live write load.
#include <gtest/gtest.h>
#include <hostcache/inspect.h>
#include <hostcache/outbox.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <random>

#include "arena.h"
#include "cache_impl.h"
#include "stripe_lock.h"
#include "index.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::await_progress;

using inspect::EntryState;

struct Fixture {
  explicit Fixture(std::size_t capacity = 1u << 20, unsigned stripes = 2)
      : config(testing::small_config(name.name, capacity, stripes)) {}
  testing::ScopedName name{"inspect"};
  Config config;
  Cache cache = Cache::open(config);

  Segment& segment() { return detail::Access::segment(cache); }
  std::uint32_t stripes() { return segment().geometry().stripe_count; }
  layout::StripeHeader& header(std::uint32_t i) {
    return *reinterpret_cast<layout::StripeHeader*>(segment().stripe_base(i));
  }
  arena::StripeView view(std::uint32_t i) {
    return arena::StripeView::over(segment().stripe_base(i), segment().geometry());
  }
  // Offsets of the live entries of stripe i (this test is the only writer).
  std::vector<std::uint64_t> live_entries(std::uint32_t i) {
    std::vector<std::uint64_t> out;
    arena::walk(
        view(i), header(i).tail, header(i).head,
        [&](std::uint64_t off, const layout::EntryHeader& h) {
          if (h.live) out.push_back(off);
        },
        nullptr, nullptr);
    return out;
  }
  // A stripe with at least one live entry.
  std::uint32_t busy_stripe() {
    for (std::uint32_t i = 0; i < stripes(); ++i) {
      if (!live_entries(i).empty()) return i;
    }
    ADD_FAILURE() << "no stripe has a live entry";
    return 0;
  }
  void fill(int n, const std::string& prefix = "k") {
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(cache.set(prefix + std::to_string(i), "value-" + std::to_string(i)), Errc::ok);
    }
  }
};

bool mentions(const std::vector<inspect::Violation>& vs, const std::string& word) {
  return std::any_of(vs.begin(), vs.end(), [&](const inspect::Violation& v) {
    return v.what.find(word) != std::string::npos || v.where.find(word) != std::string::npos;
  });
}
bool mentions(const std::vector<std::string>& problems, const std::string& word) {
  return std::any_of(problems.begin(), problems.end(),
                     [&](const std::string& p) { return p.find(word) != std::string::npos; });
}
std::string describe(const std::vector<inspect::Violation>& vs) {
  std::string out;
  for (const auto& v : vs) out += v.where + ": " + v.what + "\n";
  return out;
}

const inspect::EntryInfo* find(const inspect::Snapshot& s, const std::string& key) {
  for (const auto& e : s.entries) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

TEST(Inspect, ReadsStatesTagsTtlsAndValues) {
  testing::FakeClock clock;
  Fixture f;
  SetOptions user_tagged{std::chrono::minutes(10), {"model:user"}};
  SetOptions group_tagged{std::chrono::minutes(10), {"model:group", "model:user"}};
  SetOptions short_lived{std::chrono::seconds(1), {}};
  ASSERT_EQ(f.cache.set("user:1", "alice", user_tagged), Errc::ok);
  ASSERT_EQ(f.cache.set("group:1", "admins", group_tagged), Errc::ok);
  ASSERT_EQ(f.cache.set("plain", std::string("\x00\x01zz", 4)), Errc::ok);
  ASSERT_EQ(f.cache.set("brief", "soon gone", short_lived), Errc::ok);
  f.cache.invalidate("model:group");
  clock.advance(2000);

  const inspect::Snapshot s = inspect::read(f.name.name);
  EXPECT_TRUE(s.problems.empty());
  EXPECT_EQ(s.segment.name, f.name.name);
  EXPECT_EQ(s.segment.stripes, 2u);
  EXPECT_EQ(s.segment.capacity_bytes, 1u << 20);
  EXPECT_EQ(s.segment.mode, 0600u);
  EXPECT_EQ(s.segment.creator_pid, std::uint32_t(::getpid()));
  EXPECT_EQ(s.stripes.size(), 2u);
  ASSERT_EQ(s.entries.size(), 4u);

  const inspect::EntryInfo* user = find(s, "user:1");
  ASSERT_NE(user, nullptr);
  EXPECT_EQ(user->value, "alice");
  EXPECT_EQ(user->state, EntryState::valid);
  EXPECT_EQ(user->ttl_left_ms, 10 * 60 * 1000 - 2000);
  ASSERT_EQ(user->tags.size(), 1u);
  EXPECT_EQ(user->tags[0].name, "model:user");
  EXPECT_EQ(user->tags[0].gen_at_write, user->tags[0].gen_now);

  const inspect::EntryInfo* group = find(s, "group:1");
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->state, EntryState::stale);
  ASSERT_EQ(group->tags.size(), 2u);
  EXPECT_NE(group->tags[0].gen_at_write, group->tags[0].gen_now);  // model:group was bumped

  EXPECT_EQ(find(s, "plain")->value, std::string("\x00\x01zz", 4));
  EXPECT_EQ(find(s, "brief")->state, EntryState::expired);
  EXPECT_LE(find(s, "brief")->ttl_left_ms, 0);

  f.cache.clear();
  for (const auto& e : inspect::read(f.name.name).entries) {
    EXPECT_NE(e.state, EntryState::valid) << e.key << " survived clear()";
  }
}

TEST(Inspect, FiltersByPrefixTagStateAndLimit) {
  Fixture f;
  f.fill(20, "a:");
  f.fill(10, "b:");
  SetOptions tagged{std::chrono::minutes(1), {"t"}};
  ASSERT_EQ(f.cache.set("c:1", "x", tagged), Errc::ok);
  ASSERT_EQ(f.cache.set("c:2", "y", tagged), Errc::ok);

  inspect::Filter prefix;
  prefix.prefix = "b:";
  EXPECT_EQ(inspect::read(f.name.name, prefix).entries.size(), 10u);
  inspect::Filter tag;
  tag.tag = "t";
  EXPECT_EQ(inspect::read(f.name.name, tag).entries.size(), 2u);
  inspect::Filter limit;
  limit.limit = 7;
  EXPECT_EQ(inspect::read(f.name.name, limit).entries.size(), 7u);
  f.cache.invalidate("t");
  inspect::Filter stale;
  stale.state = EntryState::stale;
  EXPECT_EQ(inspect::read(f.name.name, stale).entries.size(), 2u);
  inspect::Filter none;
  none.limit = 0;
  const inspect::Snapshot counters = inspect::read(f.name.name, none);
  EXPECT_TRUE(counters.entries.empty());
  std::uint64_t entries = 0;
  for (const auto& st : counters.stripes) entries += st.entries;
  EXPECT_EQ(entries, 32u);  // stripe counters come from the headers alone
}

TEST(Inspect, StatsAndMethods) {
  Fixture f;
  f.fill(5);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(f.cache.get("k" + std::to_string(i)).has_value());
  EXPECT_FALSE(f.cache.get("absent").has_value());
  // A named method slot, as the memoize layer leaves it.
  layout::MethodSlot& m = f.segment().method_slots()[3];
  std::memcpy(m.name, "get_fields", 10);
  m.name_len = 10;
  m.requests = 7, m.hits = 5, m.misses = 2, m.hit_ns = 1000, m.miss_ns = 90'000'000, m.bytes = 640;
  std::atomic_ref<std::uint32_t>(m.claimed).store(2, std::memory_order_release);

  const inspect::Snapshot s = inspect::read(f.name.name);
  EXPECT_EQ(s.stats.hits, 5u);
  EXPECT_EQ(s.stats.misses, 1u);
  EXPECT_EQ(s.stats.sets, 5u);
  EXPECT_EQ(s.stats.entries, 5u);
  ASSERT_EQ(s.methods.size(), 1u);
  EXPECT_EQ(s.methods[0].name, "get_fields");
  EXPECT_EQ(s.methods[0].requests, 7u);
  EXPECT_EQ(s.methods[0].miss_ns, 90'000'000u);
}

TEST(Inspect, CheckFindsNothingOnASoundSegment) {
  Fixture f(1u << 20, 4);
  // Enough overwrites to wrap every ring several times: pads, moves, evictions.
  for (int round = 0; round < 40; ++round) {
    for (int i = 0; i < 400; ++i) {
      const std::string key = "k" + std::to_string(i);
      ASSERT_EQ(f.cache.set(key, std::string(40 + (i * 7 + round) % 200, 'v')), Errc::ok);
    }
  }
  for (int i = 0; i < 400; i += 3) f.cache.erase("k" + std::to_string(i));
  for (int i = 0; i < 3000; ++i) {  // more live data than fits: evictions
    ASSERT_EQ(f.cache.set("big" + std::to_string(i), std::string(1000, 'b')), Errc::ok);
  }
  Stats st = f.cache.stats();
  EXPECT_GT(st.evictions, 0u) << "the test meant to reach eviction";
  SetOptions tagged{std::chrono::minutes(1), {"m:a", "m:b"}};
  for (int i = 0; i < 50; ++i)
    ASSERT_EQ(f.cache.set("t" + std::to_string(i), "v", tagged), Errc::ok);
  const auto violations = inspect::check(f.name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
  EXPECT_TRUE(inspect::read(f.name.name).problems.empty());
}

// One planted defect per case; check() must name it and read() must survive it.
TEST(Inspect, CheckNamesEachPlantedDefect) {
  Fixture f;
  f.fill(100);
  const std::uint32_t s = f.busy_stripe();
  layout::StripeHeader& h = f.header(s);
  auto expect_violation = [&](const std::string& word) {
    const auto vs = inspect::check(f.name.name);
    EXPECT_TRUE(mentions(vs, word)) << "expected '" << word << "' in:\n" << describe(vs);
    inspect::read(f.name.name);  // must not throw or crash
  };

  h.entries += 1;
  expect_violation("entries is");
  h.entries -= 1;
  h.used += 8;
  expect_violation("used is");
  h.used -= 8;
  h.dead_bytes += 8;
  expect_violation("dead_bytes is");
  h.dead_bytes -= 8;
  h.move_size = 104;
  expect_violation("move journal");
  h.move_size = 0;

  pid_t dead = testing::spawn([] { return 0; });
  ASSERT_EQ(testing::wait_for(dead), 0);
  // A dead holder: the lock word names the dead process's thread, and its pid.
  h.owner_pid = std::uint32_t(dead);
  h.lock = std::uint64_t(std::uint32_t(dead));
  expect_violation("dead pid");
  h.lock = 0;
  // owner_pid alone, the lock free, is no holder (a child forked as its
  // parent locked may leave its parent's pid there late): not reported.
  const auto free_lock = inspect::check(f.name.name);
  EXPECT_FALSE(mentions(free_lock, "dead pid")) << describe(free_lock);
  h.owner_pid = 0;

  h.seq += 1;  // a writer that died mid-mutation
  expect_violation("stayed odd");
  const inspect::Snapshot busy = inspect::read(f.name.name);
  EXPECT_FALSE(busy.stripes[s].consistent);
  EXPECT_TRUE(mentions(busy.problems, "stayed odd"));
  h.seq += 1;

  // A second bucket naming a live entry.
  const arena::StripeView v = f.view(s);
  const std::uint64_t off = f.live_entries(s).front();
  layout::Bucket* empty = nullptr;
  for (std::uint64_t b = 0; b < std::uint64_t(v.groups) * layout::kGroupSlots && !empty; ++b) {
    if (v.buckets[b] == 0) empty = &v.buckets[b];
  }
  ASSERT_NE(empty, nullptr);
  *empty = index::encode(off, 0);
  expect_violation("referenced by 2");
  *empty = index::encode(off + 8, 0);  // inside an entry, not at its start
  expect_violation("not the start");
  *empty = 0;

  EXPECT_TRUE(inspect::check(f.name.name).empty()) << "the defects were not all undone";
}

TEST(Inspect, BadChecksumIsReportedAndTheEntryNotShown) {
  Fixture f;
  f.fill(50);
  const std::uint32_t s = f.busy_stripe();
  const arena::StripeView v = f.view(s);
  const std::uint64_t off = f.live_entries(s).front();
  v.arena[off + layout::kHeaderBytes] ^= 0x55;  // first key byte
  EXPECT_TRUE(mentions(inspect::check(f.name.name), "checksum"));
  const inspect::Snapshot snap = inspect::read(f.name.name);
  EXPECT_TRUE(mentions(snap.problems, "checksum"));
  EXPECT_EQ(snap.entries.size(), 49u);
}

TEST(Inspect, BrokenRingIsReported) {
  Fixture f;
  f.fill(50);
  const std::uint32_t s = f.busy_stripe();
  f.header(s).head += 8;  // no longer the end of an entry
  EXPECT_TRUE(mentions(inspect::check(f.name.name), "ring does not walk"));
  EXPECT_TRUE(mentions(inspect::read(f.name.name).problems, "ring does not walk"));
  f.header(s).head = f.segment().geometry().arena_bytes + 4096;  // out of bounds
  EXPECT_TRUE(mentions(inspect::check(f.name.name), "out of bounds"));
}

// Random damage to a populated stripe: a near-valid structure is the hard
// case for a parser. Nothing may crash; a damaged stripe is reported.
TEST(Inspect, SurvivesRandomDamage) {
  Fixture f(1u << 20, 2);
  SetOptions tagged{std::chrono::minutes(5), {"x", "y"}};
  for (int i = 0; i < 300; ++i)
    ASSERT_EQ(f.cache.set("k" + std::to_string(i), "v", tagged), Errc::ok);
  const Geometry& g = f.segment().geometry();
  std::uint8_t* base = f.segment().stripe_base(0);
  const std::vector<std::uint8_t> pristine(base, base + g.stripe_bytes);
  std::mt19937_64 rng(12345);
  const std::size_t skip =
      sizeof(layout::StripeHeader::lock);  // keep the mutex: remove() is fine either way
  for (int round = 0; round < 300; ++round) {
    std::memcpy(base, pristine.data(), pristine.size());
    const int flips = 1 + int(rng() % 16);
    for (int k = 0; k < flips; ++k) {
      const std::size_t at = skip + rng() % (pristine.size() - skip);
      base[at] = std::uint8_t(rng());
    }
    if (round % 3 == 0) {  // garbage in the header words too (seq kept even)
      auto& h = f.header(0);
      h.tail = rng() % (g.arena_bytes * 2);
      h.seq &= ~1ull;
    }
    inspect::read(f.name.name);
    inspect::check(f.name.name);
  }
  // Whole stripe of garbage (sequence even, so it is parsed rather than skipped).
  for (int round = 0; round < 20; ++round) {
    for (std::size_t i = skip; i < pristine.size(); ++i) base[i] = std::uint8_t(rng());
    f.header(0).seq &= ~1ull;
    EXPECT_FALSE(inspect::check(f.name.name).empty());
    inspect::read(f.name.name);
  }
}

TEST(Inspect, HeaderDamageIsAnError) {
  Fixture f;
  f.segment().header()->magic[0] = 'X';
  try {
    inspect::read(f.name.name);
    FAIL() << "read accepted a bad magic";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::corrupt);
  }
  EXPECT_THROW(inspect::check(f.name.name), Error);
  f.segment().header()->magic[0] = 'H';
  try {
    inspect::read("inspect-no-such-segment");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::not_found);
  }
}

// Another process holds a stripe's lock (and keeps it): inspection takes no
// lock, so it neither blocks nor sees anything wrong.
TEST(Inspect, IgnoresAHeldStripeLock) {
  Fixture f;
  f.fill(100);
  testing::Gate locked, release;
  pid_t child = testing::spawn([&] {
    auto seg = Segment::attach(f.name.name, false, Segment::Access::read_write);
    auto& h = *reinterpret_cast<layout::StripeHeader*>(seg->stripe_base(0));
    // The stripe lock word (stripe_lock.h), taken as a writer would.
    if (!stripe_lock::lock(h, std::chrono::steady_clock::now() + std::chrono::seconds(5)).acquired) {
      return 1;
    }
    locked.open();
    release.wait();
    stripe_lock::unlock(h);
    return 0;
  });
  locked.wait();
  const inspect::Snapshot s = inspect::read(f.name.name);
  EXPECT_TRUE(s.problems.empty());
  EXPECT_EQ(s.entries.size(), 100u);
  EXPECT_TRUE(inspect::check(f.name.name).empty());
  release.open();
  EXPECT_EQ(testing::wait_for(child), 0);
}

// Writers in other processes never stop while we read: every read completes,
// and what is shown was read consistently (check finds no broken invariant;
// a stripe it could not catch at rest is reported as busy, nothing else).
TEST(Inspect, ReadsUnderLiveWriteLoad) {
  Fixture f(1u << 20, 4);
  struct Shared {
    std::atomic<int> stop;
    std::atomic<std::uint64_t> sets[2];
  };
  auto* shared = new (testing::shared_memory(sizeof(Shared))) Shared{};
  std::vector<pid_t> writers;
  for (int w = 0; w < 2; ++w) {
    writers.push_back(testing::spawn([&, w] {
      Cache c = Cache::attach(f.name.name);
      std::mt19937 rng(w);
      while (!shared->stop.load(std::memory_order_relaxed)) {
        const std::string key = "w" + std::to_string(rng() % 3000);
        if (c.set(key, std::string(rng() % 200, 'x')) != Errc::ok) return 1;
        shared->sets[w].fetch_add(1, std::memory_order_relaxed);
      }
      return 0;
    }));
  }
  ASSERT_TRUE(await_progress(shared->sets, writers, 2000)) << "a writer exited early";
  for (int round = 0; round < 5; ++round) {
    const inspect::Snapshot s = inspect::read(f.name.name);
    EXPECT_EQ(s.stripes.size(), 4u);
    for (const auto& p : s.problems) EXPECT_NE(p.find("busy"), std::string::npos) << p;
    for (const auto& v : inspect::check(f.name.name)) {
      EXPECT_NE(v.what.find("busy"), std::string::npos) << v.where << ": " << v.what;
    }
  }
  shared->stop.store(1);
  for (pid_t p : writers) EXPECT_EQ(testing::wait_for(p), 0);
  EXPECT_TRUE(inspect::check(f.name.name).empty());
}

TEST(Inspect, ListsSegmentsWithTheirAttachedProcesses) {
  Fixture f;
  testing::Gate attached, release;
  pid_t child = testing::spawn([&] {
    Cache c = Cache::attach(f.name.name);
    attached.open();
    release.wait();
    return 0;
  });
  attached.wait();
  const auto all = inspect::list();
  auto it = std::find_if(all.begin(), all.end(),
                         [&](const inspect::Listing& l) { return l.name == f.name.name; });
  ASSERT_NE(it, all.end());
  EXPECT_EQ(it->bytes, 1u << 20);
  EXPECT_EQ(it->mode, 0600u);
  EXPECT_EQ(it->owner_uid, ::geteuid());
  EXPECT_GE(it->attached_processes, 2);  // this process (the creator) and the child
  release.open();
  EXPECT_EQ(testing::wait_for(child), 0);
}

// Issue 12/14: namespaces, compression, no expiry and the relay, read
// without a Cache and without writing.
TEST(Inspect, ReadsNamespacesCompressionNoExpiryAndTheRelay) {
  testing::ScopedName name{"inspect"};
  Config config = testing::small_config(name.name, 1u << 20, 2);
  config.compress_min_bytes = 128;
  Cache cache = Cache::open(config);
  std::string big;
  while (big.size() < 3000) big += "field_" + std::to_string(big.size() % 5) + ",";
  ASSERT_EQ(cache.set("big", big, SetOptions{std::chrono::minutes(1), {}, "ns1"}), Errc::ok);
  ASSERT_EQ(cache.set("small", "s", SetOptions{kNoExpiry, {}, "ns2"}), Errc::ok);
  ASSERT_EQ(cache.set("bare", "b"), Errc::ok);

  inspect::Filter all;
  all.namespaces = true;
  inspect::Snapshot snap = inspect::read(name.name, all);
  std::map<std::string, inspect::EntryInfo> by_key;
  for (auto& e : snap.entries) by_key[e.key] = e;
  ASSERT_EQ(by_key.size(), 3u);
  const inspect::EntryInfo& b = by_key["big"];
  EXPECT_TRUE(b.has_namespace);
  EXPECT_EQ(b.ns, "ns1");
  EXPECT_TRUE(b.compressed);
  EXPECT_TRUE(b.decompressed);
  EXPECT_EQ(b.value, big);
  EXPECT_EQ(b.orig_bytes, big.size());
  EXPECT_LT(b.stored_bytes, big.size());
  EXPECT_FALSE(b.no_expiry);
  EXPECT_TRUE(by_key["small"].no_expiry);
  EXPECT_EQ(by_key["small"].ttl_left_ms, std::numeric_limits<std::int64_t>::max());
  EXPECT_FALSE(by_key["bare"].has_namespace);
  EXPECT_FALSE(by_key["bare"].compressed);
  EXPECT_EQ(by_key["bare"].stored_bytes, 1u);
  ASSERT_EQ(snap.namespaces.size(), 2u);
  EXPECT_EQ(snap.namespaces[0].name, "ns1");
  EXPECT_EQ(snap.namespaces[0].entries, 1u);
  EXPECT_EQ(snap.namespaces[1].name, "ns2");
  EXPECT_TRUE(snap.problems.empty());
  EXPECT_EQ(snap.stats.compressed_in, big.size());

  inspect::Filter only;
  only.ns = "ns2";
  snap = inspect::read(name.name, only);
  ASSERT_EQ(snap.entries.size(), 1u);
  EXPECT_EQ(snap.entries[0].key, "small");
  EXPECT_TRUE(snap.namespaces.empty());  // not asked for
  only.ns = "";
  snap = inspect::read(name.name, only);
  ASSERT_EQ(snap.entries.size(), 1u);
  EXPECT_EQ(snap.entries[0].key, "bare");

  EXPECT_FALSE(inspect::read(name.name).relay.ever_ran);
  cache.invalidate("t");
  outbox::RelayStatus st;
  st.pid = std::uint32_t(::getpid());
  st.connected = true;
  st.heartbeat_ms = outbox::now_ms() - 100;
  st.cursor = 0;
  st.published = 2;
  outbox::set_relay_status(cache, st);
  const inspect::RelayInfo r = inspect::read(name.name).relay;
  EXPECT_TRUE(r.ever_ran);
  EXPECT_TRUE(r.alive);
  EXPECT_TRUE(r.connected);
  EXPECT_EQ(r.head, outbox::head(cache));
  EXPECT_EQ(r.pending, outbox::head(cache));
  EXPECT_GE(r.heartbeat_age_ms, 100);
  EXPECT_EQ(r.published, 2u);
  EXPECT_EQ(r.host_id, outbox::host_id(cache));
  EXPECT_TRUE(inspect::check(name.name).empty());
}

TEST(Inspect, EntryStateNames) {
  EXPECT_STREQ(inspect::to_string(EntryState::valid), "valid");
  EXPECT_STREQ(inspect::to_string(EntryState::stale), "stale");
  EXPECT_STREQ(inspect::to_string(EntryState::expired), "expired");
}

}  // namespace
}  // namespace hostcache
