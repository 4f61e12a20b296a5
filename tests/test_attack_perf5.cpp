// Adversarial review of 43770e1 (Cache::get_many(keys, values, hits): the
// batch lookup into strings the caller keeps, sharing lookup_many with the
// allocating get_many; Dest/grow_for_overwrite) and of 8a2c251 (incr/touch
// refuse a forked child). Real processes: writers, erasers and clearers in
// other processes racing get_many into reused strings, a forger scribbling a
// compressed frame. Each failing test names the contract it breaks.
//
// The model for get_many(keys, values, hits): for each i, hits[i] and (on a
// hit) values[i] are what `get(keys[i])` answers at some moment inside the
// call, where keys[i] is the key the caller passed (its bytes at the call).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "arena.h"
#include "atomic_words.h"
#include "entry_probe.h"
#include "fork_probe.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

Config one_stripe(const std::string& name, std::size_t capacity = 4u << 20) {
  Config c = small_config(name, capacity, 1);
  return c;
}

// =====================================================================================
// 1. Keys that point into `values` (a second batch keyed by the first's answers)
// =====================================================================================
//
// An index lookup: batch 1 fetches "pointer" entries whose values are other
// keys; batch 2 looks those keys up with the same vectors (no allocation: the
// reason this overload exists), keys[i] = values[j] of batch 1. A per-key
// get of each such key hits; get_many must answer the same.
//
// What happens: lookup_many hashes every key up front, then writes key i's
// value into values[i] before it looks key i+1 up. keys[1] views values[0],
// which key 0's value has just overwritten: key 1 is compared as other bytes
// under key 1's hash, and is a miss (or, if values[0] had to reallocate, the
// view dangles: heap-use-after-free under ASan). Deterministic, no race.
// Each scene runs in a child so that an ASan report fails only its scene.

int alias_scene(const std::string& name, std::size_t key_len, std::size_t value_len, bool grow_vector) {
  Cache cache = Cache::attach(name);
  // Two pointer keys whose values are the target keys, and the targets.
  const std::string ka(key_len, 'a'), kb(key_len, 'b');
  const std::string pa = "ptr-a", pb = "ptr-b";
  if (cache.set(pa, ka) != Errc::ok || cache.set(pb, kb) != Errc::ok) return 10;
  const std::string va(value_len, 'A'), vb(value_len, 'B');
  if (cache.set(ka, va) != Errc::ok || cache.set(kb, vb) != Errc::ok) return 11;
  std::vector<std::string> values;
  std::vector<bool> hits;
  if (grow_vector) values.shrink_to_fit();
  // Batch 1: the pointers, in the order b, a: values = {kb, ka}.
  std::vector<std::string_view> batch1 = {pb, pa};
  if (cache.get_many(batch1, values, hits) != 2) return 12;
  if (grow_vector) values.shrink_to_fit();  // capacity 2: batch 2 of 3 reallocates the vector
  // Batch 2: keyed by batch 1's answers, crossed: keys[0] = values[1] (ka),
  // keys[1] = values[0] (kb) -- key 1 views the string key 0's value goes into.
  std::vector<std::string_view> batch2 = {values[1], values[0]};
  if (grow_vector) batch2.push_back(pa);
  const std::vector<std::string> expect_keys = grow_vector ? std::vector<std::string>{ka, kb, pa}
                                                           : std::vector<std::string>{ka, kb};
  const std::size_t n = cache.get_many(batch2, values, hits);
  int rc = 0;
  for (std::size_t i = 0; i < expect_keys.size(); ++i) {
    const std::optional<std::string> one = cache.get(expect_keys[i]);
    if (!one || !hits[i]) {
      std::fprintf(stderr, "alias scene key_len=%zu value_len=%zu grow=%d: key %zu ('%s') get %s, get_many %s\n",
                   key_len, value_len, int(grow_vector), i, expect_keys[i].substr(0, 8).c_str(),
                   one ? "hit" : "miss", hits[i] ? "hit" : "miss");
      rc = 1;
    } else if (values[i] != *one) {
      std::fprintf(stderr, "alias scene: key %zu value differs\n", i);
      rc = 2;
    }
  }
  if (rc == 0 && n != expect_keys.size()) rc = 3;
  return rc;
}

class AliasTest : public ::testing::Test {
 protected:
  ScopedName name_{"p5alias"};
  Cache cache_ = Cache::open(small_config(name_.name));
};

// SSO keys (8 bytes), short values (12 bytes, SSO too): no reallocation, key 1's
// bytes are overwritten by key 0's value. FAILS now: key 1 is a miss.
TEST_F(AliasTest, KeysViewingEarlierValuesOfTheSameCallAnswerAsPerKeyGets) {
  EXPECT_EQ(wait_for(spawn([&] { return alias_scene(name_.name, 8, 12, false); })), 0);
}

// Long keys (40 bytes, heap), long values (3000 bytes): values[0] reallocates
// while keys[1] still views its old buffer. FAILS now (a miss, or, under
// ASan, heap-use-after-free in hash/compare of keys[1]).
TEST_F(AliasTest, KeysViewingAValueThatReallocatesAnswerAsPerKeyGets) {
  EXPECT_EQ(wait_for(spawn([&] { return alias_scene(name_.name, 40, 3000, false); })), 0);
}

// values.resize(keys.size()) grows the vector: SSO strings move and the views
// into them dangle before anything is hashed. FAILS now.
TEST_F(AliasTest, KeysViewingValuesWhenTheBatchGrowsAnswerAsPerKeyGets) {
  EXPECT_EQ(wait_for(spawn([&] { return alias_scene(name_.name, 8, 12, true); })), 0);
}

// Self-aliasing, keys[0] = values[0] (the string holds the key, the call
// overwrites it with the value), under a writer in another process that only
// rewrites *another* key of the one stripe: the optimistic read's first copy
// overwrites the key's bytes, the sequence changed, the retry (and the locked
// fallback) compare the overwritten bytes: a miss for a key present
// throughout. The single get(values[0], values[0]) shares this. FAILS now
// whenever a retry happens (bounded: a few seconds of rounds).
void self_alias_scene(bool batch_call) {
  ScopedName name("p5self");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string key = "self-aliased-key-0123456789";  // 27 bytes: heap string
  const std::string value(200, 'v');                      // longer than the key, different bytes
  ASSERT_EQ(cache.set(key, value), Errc::ok);
  auto* shared = static_cast<std::atomic<std::uint64_t>*>(shared_memory(4096));
  std::atomic<std::uint64_t>* sets = shared;
  std::atomic<std::uint64_t>* quit = shared + 1;
  const pid_t writer = spawn_rewriter(name.name, "other", sets, quit);
  ASSERT_TRUE(await_progress(sets, {writer}, 100));
  std::vector<std::string> values(1);
  std::vector<bool> hits;
  std::uint64_t misses = 0, wrong = 0, rounds = 0;
  const std::int64_t until = mono_ms() + 3000;
  while (mono_ms() < until && misses == 0) {
    for (int k = 0; k < 2000; ++k, ++rounds) {
      values[0].assign(key);
      std::vector<std::string_view> batch = {values[0]};
      bool hit;
      if (batch_call) {
        cache.get_many(batch, values, hits);
        hit = hits[0];
      } else {
        hit = cache.get(values[0], values[0]);  // the same aliasing in the one-key form (before 43770e1)
      }
      if (!hit) ++misses;
      else if (values[0] != value) ++wrong;
    }
  }
  quit->store(1);
  EXPECT_EQ(wait_for(writer), 0);
  EXPECT_EQ(misses, 0u) << "a key present throughout was a miss in " << misses << " of " << rounds << " rounds";
  EXPECT_EQ(wrong, 0u);
}

TEST(AliasRace, SelfAliasedKeyUnderAWriterOfAnotherKeyIsAlwaysAHit) { self_alias_scene(true); }
TEST(AliasRace, SelfAliasedKeyOfOneGetUnderAWriterOfAnotherKeyIsAlwaysAHit) { self_alias_scene(false); }

// =====================================================================================
// 2. get_many into reused strings against writers, erasers and a clearer (passing probe)
// =====================================================================================
//
// Invariant 1 (every hit is bytes some set wrote for exactly that key: the
// value embeds its key and a checksum), invariant 2 (no hit written before a
// clear() that returned before the call started), exact sizes whatever the
// strings held (SSO, long, moved-from, shrunk, swapped between calls), the
// count equal to the hits, and stats counted once per key (hits and misses
// of this reader's process add up to what it was told).
TEST(GetManyRace, ReusedStringsUnderWritersErasersAndClearsServeOnlyWhatWasWritten) {
  ScopedName name("p5race");
  Config cfg = small_config(name.name, 4u << 20, 4);
  cfg.compress_min_bytes = 1024;  // the large values go through the compressed path
  Cache cache = Cache::open(cfg);
  constexpr int kKeys = 48, kWriters = 2, kRounds = 120;
  struct Shared {
    std::atomic<std::uint64_t> sets[kWriters];
    std::atomic<std::uint64_t> done[kKeys];          // last version whose set returned
    std::atomic<std::uint64_t> snap[kRounds][kKeys];  // done[] read before clear number r
    std::atomic<std::uint64_t> clears_returned;       // clears whose call returned
    std::atomic<int> quit;
  };
  auto* sh = static_cast<Shared*>(shared_memory(sizeof(Shared)));
  auto key_of = [](int k) { return "race-key-" + std::to_string(k); };
  auto version_of = [](const std::string& v) -> std::uint64_t {
    // make_value embeds the version after the key; parse it via the prefix format.
    return std::strtoull(v.c_str() + v.find('|') + 1, nullptr, 10);
  };
  std::vector<pid_t> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.push_back(spawn([&, w] {
      Cache c = Cache::open(cfg);
      std::mt19937_64 rng(w + 1);
      std::uint64_t version = 0;
      while (sh->quit.load() == 0) {
        const int k = int(rng() % (kKeys / kWriters)) * kWriters + w;  // each key has one writer
        ++version;
        const std::size_t size = (rng() % 4 == 0) ? 5000 + rng() % 3000 : 30 + rng() % 200;
        const std::string v = make_value(key_of(k), (version << 8) | std::uint64_t(k), size);
        if (rng() % 8 == 0) {
          c.erase(key_of(k));
        } else if (c.set(key_of(k), v) != Errc::ok) {
          return 1;
        } else {
          sh->done[k].store((version << 8) | std::uint64_t(k));
        }
        sh->sets[w].fetch_add(1);
      }
      return 0;
    }));
  }
  const pid_t clearer = spawn([&] {
    Cache c = Cache::attach(name.name);
    for (int r = 0; r < kRounds && sh->quit.load() == 0; ++r) {
      for (int k = 0; k < kKeys; ++k) sh->snap[r][k].store(sh->done[k].load());
      c.clear();
      sh->clears_returned.store(std::uint64_t(r + 1));
      // Let writers refill a little between clears (progress, not a sleep).
      const std::uint64_t s0 = sh->sets[0].load();
      while (sh->sets[0].load() < s0 + 50 && sh->quit.load() == 0) sched_yield();
    }
    return 0;
  });
  std::vector<std::uint64_t> seen;
  seen.resize(4);
  ASSERT_TRUE(await_progress(sh->sets, writers, 200));
  // The probe itself runs in a child: its stats slot is its own.
  const pid_t reader = spawn([&] {
    Cache c = Cache::attach(name.name);
    const Stats before = c.stats();
    std::mt19937_64 rng(99);
    std::vector<std::string> values, other;
    std::vector<bool> hits;
    std::uint64_t told_hits = 0, told_keys = 0;
    const std::string too_long(c.max_key_bytes() + 1, 'x');
    std::vector<std::string> keys;
    for (int k = 0; k < kKeys; ++k) keys.push_back(key_of(k));
    const std::int64_t until = mono_ms() + 4000;
    while (mono_ms() < until && sh->clears_returned.load() < std::uint64_t(kRounds)) {
      // Leave the strings in odd states first.
      for (auto& v : values) {
        switch (rng() % 5) {
          case 0: v.clear(); break;
          case 1: v.assign(3, 'q'); break;                  // SSO
          case 2: v.assign(9000, 'L'); break;               // long, larger than any value
          case 3: { std::string t = std::move(v); (void)t; break; }  // moved-from
          default: v.shrink_to_fit(); break;
        }
      }
      if (rng() % 7 == 0) values.swap(other);
      std::vector<std::string_view> batch;
      const std::size_t n = rng() % 24;
      std::vector<int> which;
      for (std::size_t i = 0; i < n; ++i) {
        const unsigned pick = unsigned(rng() % 30);
        if (pick == 0) { batch.emplace_back(); which.push_back(-1); }
        else if (pick == 1) { batch.emplace_back(too_long); which.push_back(-1); }
        else { const int k = int(rng() % kKeys); batch.emplace_back(keys[k]); which.push_back(k); }
      }
      const std::uint64_t cleared = sh->clears_returned.load();
      const std::size_t got = c.get_many(batch, values, hits);
      if (values.size() < n || hits.size() != n) return 20;
      std::size_t count = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (!hits[i]) continue;
        ++count;
        if (which[i] < 0) return 21;  // an empty or oversized key hit
        if (!verify_value(keys[which[i]], values[i])) {
          std::fprintf(stderr, "torn or foreign value for %s (%zu bytes)\n", keys[which[i]].c_str(), values[i].size());
          return 22;
        }
        if (cleared > 0) {
          const std::uint64_t ver = version_of(values[i]);
          if (ver <= sh->snap[cleared - 1][which[i]].load()) {
            std::fprintf(stderr, "stale hit after clear %llu: %s version %llu\n", (unsigned long long)cleared,
                         keys[which[i]].c_str(), (unsigned long long)ver);
            return 23;
          }
        }
      }
      if (got != count) return 24;
      told_hits += got;
      told_keys += n;
    }
    if (told_hits < 100) return 27;  // the probe must have probed something
    const Stats after = c.stats();
    // Stats are summed over processes; only this reader gets.
    if (after.hits - before.hits != told_hits) {
      std::fprintf(stderr, "hits counted %llu, told %llu\n", (unsigned long long)(after.hits - before.hits),
                   (unsigned long long)told_hits);
      return 25;
    }
    if (after.gets - before.gets != told_keys) return 26;
    return 0;
  });
  EXPECT_EQ(wait_for(reader), 0);
  EXPECT_GT(cache.stats().compressed_in, 0u);  // compressed values were in the race
  EXPECT_GT(sh->clears_returned.load(), 10u);
  sh->quit.store(1);
  EXPECT_EQ(wait_for(clearer), 0);
  for (pid_t w : writers) EXPECT_EQ(wait_for(w), 0);
}

// =====================================================================================
// 3. Compressed values and forged frames (passing probe)
// =====================================================================================
//
// A compressed value read into a reused string is exactly the original
// (sizes exact whether the string was longer or shorter); a frame scribbled
// in the segment (invariant 8: no crash; invariant 1: not served) is a miss
// in get_many exactly as in get, counted once, and the batch's other keys
// are unaffected.
TEST(GetManyCompressed, ForgedFramesAreMissesLikeGetsAndCountedOnce) {
  ScopedName name("p5zstd");
  Config cfg = one_stripe(name.name);
  cfg.compress_min_bytes = 1024;
  Cache cache = Cache::open(cfg);
  std::string big;
  for (int i = 0; i < 2000; ++i) big += "compressible-" + std::to_string(i % 17);
  std::string big2 = big;
  std::reverse(big2.begin(), big2.end());
  ASSERT_EQ(cache.set("z1", big), Errc::ok);
  ASSERT_EQ(cache.set("z2", big2), Errc::ok);
  ASSERT_EQ(cache.set("plain", "p"), Errc::ok);
  ASSERT_GT(cache.stats().compressed_in, 0u) << "the values were not stored compressed";
  std::vector<std::string> values = {std::string(100000, 'x'), "s"};
  std::vector<bool> hits;
  std::vector<std::string_view> batch = {"z1", "z2", "plain"};
  ASSERT_EQ(cache.get_many(batch, values, hits), 3u);
  EXPECT_EQ(values[0], big);
  EXPECT_EQ(values[1], big2);
  EXPECT_EQ(values[2], "p");
  // Scribble z1's frame (a run of bytes in its middle), then its header's orig_len.
  const arena::StripeView v = view_of(cache, 0);
  const std::uint64_t off = entry_offset(cache, 0, "z1");
  ASSERT_NE(off, ~std::uint64_t{0});
  layout::EntryHeader h;
  ASSERT_TRUE(arena::read_live_header(v, off, h));
  ASSERT_NE(h.flags & layout::kFlagCompressed, 0);
  const std::uint64_t voff = arena::value_off(off, h);
  for (std::uint64_t i = h.value_len / 3; i < h.value_len / 3 + 24 && i < h.value_len; ++i) {
    v.arena[voff + i] ^= 0x5a;
  }
  const Stats s0 = cache.stats();
  const bool one_hit = cache.get("z1").has_value();
  EXPECT_FALSE(one_hit) << "a scribbled frame decoded (invariant 1)";
  ASSERT_EQ(cache.get_many(batch, values, hits), one_hit ? 3u : 2u);
  EXPECT_EQ(hits[0], one_hit);
  if (one_hit) EXPECT_EQ(values[0].size(), big.size());
  EXPECT_TRUE(hits[1]);
  EXPECT_EQ(values[1], big2);
  EXPECT_EQ(values[2], "p");
  const Stats s1 = cache.stats();
  EXPECT_EQ(s1.gets - s0.gets, 4u);  // one get and three keys
}

// =====================================================================================
// 4. incr/touch in a parent after children refused (passing probe, 8a2c251)
// =====================================================================================
//
// refuse_if_forked reads this process's fork word: a prefork master that
// opened the cache, then forked workers the ordinary way (outside any
// section), must get every answer of incr and touch in both, and the
// not-found / not-integer / overflow answers are the model's.
TEST(IncrTouchAfterFork, OrdinaryForksGetEveryAnswer) {
  ScopedName name("p5incr");
  Cache cache = Cache::open(one_stripe(name.name));
  ASSERT_EQ(cache.set("n", "5"), Errc::ok);
  ASSERT_EQ(cache.set("txt", "abc"), Errc::ok);
  ASSERT_EQ(cache.set("max", std::to_string(std::numeric_limits<std::int64_t>::max())), Errc::ok);
  auto check = [&](Cache& c) -> int {
    std::int64_t r = 0;
    if (c.incr("missing", 1, r) != Errc::not_found) return 1;
    if (c.incr("txt", 1, r) != Errc::not_integer) return 2;
    if (c.incr("max", 1, r) != Errc::overflow) return 3;
    if (c.incr("n", 1, r) != Errc::ok) return 4;
    if (c.touch("missing", 1000ms)) return 5;
    if (!c.touch("n", 1000ms)) return 6;
    return 0;
  };
  ASSERT_EQ(check(cache), 0);
  const std::vector<int> rcs = run_children(4, [&](int) {
    const int rc = check(cache);
    if (rc != 0) return rc;
    // A grandchild too.
    return wait_for(spawn([&] { return check(cache); }));
  });
  for (int rc : rcs) EXPECT_EQ(rc, 0);
  EXPECT_EQ(check(cache), 0);
  std::int64_t r = 0;
  ASSERT_EQ(cache.incr("n", 0, r), Errc::ok);
  EXPECT_EQ(r, 5 + 1 + 4 * 2 + 1);  // every ok counted exactly once
}

}  // namespace
}  // namespace hostcache
