// Adversarial review of 30ec776: thread_scratch() (per-thread buffers that
// stay usable at thread exit), decompress_into's frame taken out around the
// caller's sink, get(key, value)'s alias range up to capacity, get_many's
// never-shrunk values, memoize's ReleaseGuard around the look again.
//
// Real processes: children forked from threads and from thread-exit
// destructors, a caller SIGKILLed inside accept() while holding the flight,
// a stripe left with an odd sequence (a writer that died mid-write) forcing
// the locked, repairing read. Each TEST that fails names the contract it
// breaks; the others are probes that held.
#include <gtest/gtest.h>
#include <hostcache/cache.h>
#include <hostcache/memoize.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "entry_probe.h"
#include "fork_probe.h"
#include "memoize_fixture.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

Config one_stripe(const std::string& name, std::size_t capacity = 4u << 20) {
  Config c = small_config(name, capacity, 1);
  c.compress_min_bytes = 256;
  return c;
}


// =====================================================================================
// A. Sinks that nest lookups (decompress_into takes the frame out around the sink)
// =====================================================================================

// A chain of sinks: level i's sink looks key i+1 up through level i+1's sink
// before giving its own buffer. Some levels do other things instead: a plain
// get of a compressed key, a get of a forged frame (decode fails), a nested
// get_into whose sink throws (caught here), get_many of compressed keys.
struct Level {
  const Cache* cache = nullptr;
  std::vector<Level>* chain = nullptr;
  std::size_t index = 0;
  std::vector<std::string> keys;  // the chain's keys
  std::string buf;
  bool hit = false;
  int calls = 0;
  bool throw_here = false;
  std::string forged_key;
  bool forged_hit = true;
  std::vector<std::optional<std::string>> many;
  static char* sink(void* ctx, std::size_t n) {
    auto& l = *static_cast<Level*>(ctx);
    if (l.throw_here) throw std::runtime_error("sink refuses");
    if (l.calls++ == 0) {
      if (l.index + 1 < l.chain->size()) {
        Level& next = (*l.chain)[l.index + 1];
        try {
          next.hit = l.cache->get_into(next.keys[next.index], &Level::sink, &next);
        } catch (const std::runtime_error&) {
          next.hit = false;
        }
      }
      if (!l.forged_key.empty()) {
        std::string s(100, '#');
        l.forged_hit = l.cache->get(l.forged_key, s);
      }
      std::vector<std::string_view> batch(l.keys.begin(), l.keys.end());
      l.many = l.cache->get_many(batch);
    }
    l.buf.resize(n);
    return l.buf.data();
  }
};

void run_chain(Cache& cache, bool locked) {
  std::vector<std::string> keys, values;
  for (int i = 0; i < 5; ++i) {
    keys.push_back("chain-" + std::to_string(i));
    values.push_back(compressible(i % 2 == 0 ? 4000 : 3000 + 500 * i, char('A' + i)));
    ASSERT_EQ(cache.set(keys.back(), values.back()), Errc::ok);
  }
  ASSERT_EQ(cache.set("forged", compressible(5000, 'F')), Errc::ok);
  if (!locked) ASSERT_TRUE(forge_frame(cache, "forged"));
  ASSERT_GT(cache.stats().compressed_in, 0u);
  std::vector<Level> chain(keys.size());
  for (std::size_t i = 0; i < chain.size(); ++i) {
    chain[i].cache = &cache;
    chain[i].chain = &chain;
    chain[i].index = i;
    chain[i].keys = keys;
  }
  chain[3].forged_key = locked ? "" : "forged";
  chain[4].throw_here = true;
  if (locked) {
    // A writer that died mid-write: the sequence left odd. Every optimistic
    // try fails; the outer get takes the lock, repairs, and runs its sink
    // (and so the whole nest) under the stripe's lock.
    auto& seq = header_of(cache, 0).seq;
    std::atomic_ref<std::uint64_t>(seq).fetch_add(1);
  }
  const std::uint64_t rec0 = std::atomic_ref<std::uint64_t>(header_of(cache, 0).recoveries).load();
  chain[0].hit = cache.get_into(keys[0], &Level::sink, &chain[0]);
  if (locked) EXPECT_GT(std::atomic_ref<std::uint64_t>(header_of(cache, 0).recoveries).load(), rec0);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(chain[i].hit) << "level " << i << ": a present key missed";
    EXPECT_EQ(chain[i].buf, values[i]) << "level " << i << ": not its own value (invariant 1)";
    ASSERT_EQ(chain[i].many.size(), keys.size());
    for (std::size_t k = 0; k < keys.size(); ++k) {
      EXPECT_EQ(chain[i].many[k], values[k]) << "level " << i << " get_many key " << k;
    }
  }
  EXPECT_FALSE(chain[4].hit) << "a sink that threw gave a hit";
  if (!locked) EXPECT_FALSE(chain[3].forged_hit) << "a forged frame decoded";
  // The thread's frame buffer is usable afterwards: every key once more.
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::string s;
    EXPECT_TRUE(cache.get(keys[i], s));
    EXPECT_EQ(s, values[i]);
  }
}

TEST(NestedSink, FiveLevelsOfCompressedLookupsThrowsAndAFailedDecodeLeaveEveryLevelExact) {
  ScopedName name("scnest");
  Cache cache = Cache::open(one_stripe(name.name, 8u << 20));
  run_chain(cache, false);
}

TEST(NestedSink, TheSameNestUnderTheLockOfARepairingReadLeavesEveryLevelExact) {
  ScopedName name("scnestl");
  Cache cache = Cache::open(one_stripe(name.name, 8u << 20));
  run_chain(cache, true);
}

// The nest in another process while a writer process keeps overwriting the
// outer key and the nested keys with versioned values: every level's hit is
// exactly a value some writer wrote for that level's key.
TEST(NestedSink, UnderRacingWritersInOtherProcessesEveryNestedHitIsItsKeysValue) {
  ScopedName name("scnestw");
  Config cfg = one_stripe(name.name, 8u << 20);
  cfg.compress_min_bytes = 256;
  Cache cache = Cache::open(cfg);
  auto value_of = [](int key, std::uint64_t ver) {
    std::string v = "k" + std::to_string(key) + ":v" + std::to_string(ver) + ":";
    return v + compressible(3000 + 100 * key, char('a' + key));
  };
  for (int k = 0; k < 3; ++k) ASSERT_EQ(cache.set("w" + std::to_string(k), value_of(k, 0)), Errc::ok);
  auto* stop = static_cast<std::atomic<int>*>(shared_memory(sizeof(std::atomic<int>)));
  auto* sets = static_cast<std::atomic<std::uint64_t>*>(shared_memory(sizeof(std::atomic<std::uint64_t>)));
  const pid_t writer = spawn([&] {
    Cache c = Cache::attach(name.name);
    for (std::uint64_t ver = 1; stop->load() == 0; ++ver) {
      for (int k = 0; k < 3; ++k) c.set("w" + std::to_string(k), value_of(k, ver));
      sets->fetch_add(1);
    }
    return 0;
  });
  ASSERT_TRUE(await_progress(sets, {writer}, 10));
  struct Nest {
    const Cache* cache;
    int level;
    std::string buf;
    bool inner_hit = false;
    std::string inner;
    static char* sink(void* ctx, std::size_t n) {
      auto& s = *static_cast<Nest*>(ctx);
      if (s.level < 2) {
        Nest next{s.cache, s.level + 1};
        s.inner_hit = s.cache->get_into("w" + std::to_string(s.level + 1), &Nest::sink, &next);
        s.inner = next.buf;
        if (s.inner_hit && next.inner_hit) s.inner += "|" + next.inner;
      }
      s.buf.resize(n);
      return s.buf.data();
    }
  };
  int bad = 0, hits = 0;
  for (int i = 0; i < 3000 && bad == 0; ++i) {
    Nest outer{&cache, 0};
    if (!cache.get_into("w0", &Nest::sink, &outer)) continue;
    ++hits;
    if (outer.buf.rfind("k0:v", 0) != 0) {
      ++bad;
      continue;
    }
    const std::string ver0 = outer.buf.substr(4, outer.buf.find(':', 4) - 4);
    if (outer.buf != value_of(0, std::stoull(ver0))) ++bad;
    if (outer.inner_hit) {
      const std::string first = outer.inner.substr(0, outer.inner.find('|'));
      const std::string ver1 = first.substr(4, first.find(':', 4) - 4);
      if (first.rfind("k1:v", 0) != 0 || first != value_of(1, std::stoull(ver1))) ++bad;
    }
  }
  stop->store(1);
  EXPECT_EQ(wait_for(writer), 0);
  EXPECT_GT(hits, 0);
  EXPECT_EQ(bad, 0) << "a nested get under racing writers returned bytes no writer wrote for that key";
}

// =====================================================================================
// B. get_into: a key that views the sink's own buffer
// =====================================================================================
// get(key, value) copies a key that views value's buffer (30ec776, up to its
// capacity). get_into has no such check. The sink's buffer is the caller's
// (a binding's result object, a std::string the caller grows): the last
// value as the next key, exactly the pattern get() protects. The copy into
// the sink overwrites (or the sink's growth frees) the key's bytes; a retry
// (a writer moved the sequence after the copy) and the debug log then read
// other, or freed, bytes.
struct KeyInBuf {
  Cache* cache = nullptr;
  std::string buf;
  int calls = 0;
  bool disturb = true;
  static char* sink(void* ctx, std::size_t n) {
    auto& s = *static_cast<KeyInBuf*>(ctx);
    // First call: a write of another key of the one stripe (this process
    // stands for any writer) moves the sequence under this copy: the read retries.
    if (s.calls++ == 0 && s.disturb) s.cache->set("other-key-of-the-stripe", "x");
    s.buf.resize(n);
    return s.buf.data();
  }
};

void key_in_sink_buffer(bool grow) {
  ScopedName name("sckib");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string key = "next-key-0123456789-abcdefghijklmnopqrstuvwxyz";
  // Stored plain (under compress_min_bytes): the sink runs inside the optimistic copy.
  const std::string value = grow ? std::string(200, 'V') : std::string(40, 'V');
  ASSERT_EQ(cache.set(key, value), Errc::ok);
  {  // Control: the same retry, the key in memory of its own: a hit.
    KeyInBuf c;
    c.cache = &cache;
    ASSERT_TRUE(cache.get_into(key, &KeyInBuf::sink, &c));
    ASSERT_EQ(c.calls, 2) << "the sink's write did not make the read retry";
    ASSERT_EQ(c.buf, value);
  }
  KeyInBuf s;
  s.cache = &cache;
  s.buf = key;  // the last value, now the next key
  if (!grow) s.buf.reserve(4096);
  const std::string_view k(s.buf.data(), s.buf.size());
  const bool hit = cache.get_into(k, &KeyInBuf::sink, &s);
  EXPECT_TRUE(hit) << "a present key was a miss: the retry looked up the bytes the copy wrote over the key";
  EXPECT_EQ(s.buf, value);
}

TEST(SinkAlias, AKeyViewingTheSinksBufferIsAHitWhenTheReadRetries) { key_in_sink_buffer(false); }
// The sink grows its string past its capacity: the key's bytes are freed
// under the read (ASan: heap-use-after-free in the retry's find).
TEST(SinkAlias, AKeyViewingTheSinksBufferThatTheSinkReallocatesIsReadFreedByTheRetry) { key_in_sink_buffer(true); }

// =====================================================================================
// C. get(key, value): the alias range's edges
// =====================================================================================
// Keys right outside [data, data + capacity] (not copied, must be served as
// plain keys), keys spanning into it from below and from above, the SSO
// buffer of an empty and of a moved-from string, all under the locked and
// repairing read (the sequence left odd: the key is read again after the
// optimistic tries), checked against a copy of the key.
TEST(AliasEdges, KeysAtAndAcrossTheRangeEdgesAnswerAsACopyOfTheKeyWould) {
  ScopedName name("scedge");
  Config cfg = one_stripe(name.name);
  cfg.compress_min_bytes = 0;
  Cache cache = Cache::open(cfg);
  struct Arena {
    char before[64];
    std::string value;
    char after[64];
  };
  int tried = 0;
  for (int round = 0; round < 8; ++round) {
    const bool heap = round & 1, moved = round & 2, odd = round & 4;
    for (int kind = 0; kind < 5; ++kind) {
      Arena a;
      std::memset(a.before, 'b', sizeof a.before);
      std::memset(a.after, 'a', sizeof a.after);
      a.value = heap ? std::string(100, 'h') : std::string();
      if (moved) {
        std::string thief = std::move(a.value);  // a.value: moved-from (empty, SSO)
        (void)thief;
      }
      const char* d = a.value.data();
      const std::size_t cap = a.value.capacity();
      std::string_view k;
      switch (kind) {
        case 0:  // the first byte past [data, data + capacity]: outside (SSO: the next member)
          if (d + cap + 1 != a.after) continue;
          k = std::string_view(a.after, 8);
          break;
        case 1:  // inside, past size
          k = std::string_view(d + 1, std::min<std::size_t>(cap - 1, 8));
          break;
        case 2:  // the terminator's slot at capacity
          k = std::string_view(d + cap, 1);
          break;
        case 3:  // from inside across the end (SSO only: the next member is ours)
          if (d + cap + 1 != a.after) continue;
          k = std::string_view(d + cap - 3, 12);
          break;
        case 4:  // ending right at data (before the object's SSO buffer: the object's own fields for SSO)
          if (d != reinterpret_cast<const char*>(&a.value) + 16 && !heap) continue;
          k = heap ? std::string_view(a.before + 56, 8) : std::string_view(a.before + 56, 8);
          break;
      }
      ++tried;
      const std::string copy(k);
      const std::string want(300 + round * 7 + kind, char('0' + kind));
      ASSERT_EQ(cache.set(copy, want), Errc::ok);
      if (odd) std::atomic_ref<std::uint64_t>(header_of(cache, 0).seq).fetch_add(1);  // the locked, repairing read
      const bool hit = cache.get(k, a.value);
      EXPECT_TRUE(hit) << "round " << round << " kind " << kind;
      EXPECT_EQ(a.value, want) << "round " << round << " kind " << kind;
      if (kind == 0 || kind == 4) EXPECT_EQ(std::string(k), copy) << "bytes outside the string changed";
    }
  }
  EXPECT_GT(tried, 20);
}

// =====================================================================================
// D. get_many(keys, values, hits): values never shrunk
// =====================================================================================
// Batches of varying sizes whose keys view the strings of `values` (inside
// and past the batch), keys erased, expired or invalidated between batches
// so that values[i] still holds the exact bytes of the same key from the
// batch before: hits[i] must say miss; hits.size() == keys.size(); values
// never shrink; every hit is exactly the key's value.
TEST(GetManyRoom, StaleBytesFromAnEarlierBatchAreNeverAHit) {
  ScopedName name("scmany");
  Cache cache = Cache::open(one_stripe(name.name, 8u << 20));
  FakeClock clock;
  std::vector<std::string> names;
  for (int i = 0; i < 24; ++i) names.push_back("many-key-" + std::to_string(i) + std::string(i, '+'));
  auto value_of = [](const std::string& k) { return k.size() % 3 == 0 ? compressible(900 + k.size(), 'M') : k + "=" + std::string(k.size() * 7, 'v'); };
  std::vector<std::string> values;
  std::vector<bool> hits;
  std::size_t largest = 0;
  for (int round = 0; round < 40; ++round) {
    // Present now: every key but those erased or expired this round.
    for (int i = 0; i < 24; ++i) {
      SetOptions o;
      o.ttl = (i + round) % 5 == 0 ? 10ms : 1h;
      ASSERT_EQ(cache.set(names[i], value_of(names[i]), o), Errc::ok);
    }
    std::vector<std::string_view> batch;
    const std::size_t n = std::size_t(1 + (round * 7) % 24);
    for (std::size_t i = 0; i < n; ++i) batch.push_back(names[(i + round) % 24]);
    // Once grown, half the batch views values' strings (the last batch's
    // values, past this batch too): a view of a value equal to the key's
    // own value is not a key, so use the values' copies of names instead.
    if (values.size() >= 24) {
      for (std::size_t i = 0; i < n; i += 2) {
        values[values.size() - 1 - i] = std::string(batch[i]);
        batch[i] = values[values.size() - 1 - i];
      }
    }
    // The first get_many fills values with exact hits...
    std::vector<std::string> expect;
    for (auto k : batch) expect.push_back(std::string(k));
    cache.get_many(batch, values, hits);
    // ...then expire, erase or invalidate some, and ask again with the same
    // keys (copies now): the strings still hold the exact old bytes.
    clock.advance(20);
    for (std::size_t i = 0; i < n; i += 3) cache.erase(expect[i]);
    std::vector<std::string_view> again(expect.begin(), expect.end());
    const std::size_t before = values.size();
    const std::size_t got = cache.get_many(again, values, hits);
    ASSERT_EQ(hits.size(), again.size());
    ASSERT_GE(values.size(), before) << "values shrank";
    ASSERT_GE(values.size(), again.size());
    largest = std::max(largest, values.size());
    std::size_t want_hits = 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::string single;
      const bool present = cache.get(expect[i], single);
      want_hits += present;
      EXPECT_EQ(bool(hits[i]), present) << "round " << round << " key " << expect[i];
      if (hits[i]) EXPECT_EQ(values[i], value_of(expect[i]));
    }
    EXPECT_EQ(got, want_hits);
  }
  EXPECT_EQ(values.size(), largest);
}

// =====================================================================================
// E. Calls from thread-exit destructors, while other threads keep going
// =====================================================================================
const std::string kZip = compressible(4000, 'Z');
const std::string kBig(3000, 'L');

// Every kind of call, each returning 0 or the step that failed.
int every_call(Cache& c, int tid) {
  const std::string p = "t" + std::to_string(tid) + "-";
  if (c.set(p + "big", kBig) != Errc::ok) return 1;
  if (c.set(p + "zip", kZip) != Errc::ok) return 2;
  if (c.set(p + "small", "s") != Errc::ok) return 3;
  std::string out;
  if (!c.get(p + "big", out) || out != kBig) return 4;
  if (!c.get(p + "zip", out) || out != kZip) return 5;
  struct S {
    const Cache* c;
    std::string prefix;
    std::string buf, inner;
    bool inner_hit = false;
    static char* sink(void* ctx, std::size_t n) {
      auto& s = *static_cast<S*>(ctx);
      s.inner_hit = s.c->get(s.prefix + "big", s.inner);  // nested, large
      std::string z;
      s.inner_hit = s.inner_hit && s.c->get(s.prefix + "zip", z) && z == kZip;  // nested, compressed
      s.buf.resize(n);
      return s.buf.data();
    }
  } s{&c, p};
  if (!c.get_into(p + "zip", &S::sink, &s) || s.buf != kZip || !s.inner_hit || s.inner != kBig) return 6;
  if (c.add(p + "zip", "no") != Errc::already_exists) return 7;
  c.erase(p + "added");
  if (c.add(p + "added", kZip) != Errc::ok) return 8;
  std::int64_t r = 0;
  c.set(p + "n", "41");
  if (c.incr(p + "n", 1, r) != Errc::ok || r != 42) return 9;
  if (!c.touch(p + "big", 1h)) return 10;
  if (!c.touch(p + "zip", 1h)) return 11;
  const std::string big2(2500, 'Q');
  auto errs = c.set_many({{p + "m1", big2}, {p + "m2", kZip}, {p + "m3", "x"}});
  for (Errc e : errs)
    if (e != Errc::ok) return 12;
  const std::vector<std::string> keep = {p + "zip", p + "big", p + "none", p + "m1"};
  const std::vector<std::string_view> batch(keep.begin(), keep.end());
  auto many = c.get_many(batch);
  if (many.size() != 4 || many[0] != kZip || many[1] != kBig || many[2] || many[3] != big2) return 13;
  std::vector<std::string> values;
  std::vector<bool> hits;
  if (c.get_many(batch, values, hits) != 3 || values[0] != kZip || values[1] != kBig || values[3] != big2) return 14;
  if (!c.erase(p + "m3") || c.erase(p + "m3")) return 15;
  // memoize, with an accept hook that looks other keys up (a decoder that
  // resolves references through the cache).
  c.erase(p + "memo");
  struct M {
    Cache* c;
    std::string prefix;
    int computes = 0, accepts = 0;
    std::string result;
  } m{&c, p};
  detail::ComputeHooks hooks{
      &m,
      [](void* ctx, std::string_view bytes) {
        auto& m = *static_cast<M*>(ctx);
        ++m.accepts;
        std::string z;
        if (!m.c->get(m.prefix + "zip", z) || z != kZip) return false;
        auto more = m.c->get_many({std::string_view(m.prefix + "big")});
        (void)more;
        m.result.assign(bytes);
        return true;
      },
      [](void* ctx, std::string& out) {
        auto& m = *static_cast<M*>(ctx);
        ++m.computes;
        out = kZip;
        m.result = out;
      }};
  ComputeOptions o;
  detail::get_or_compute(c, p + "memo", o, hooks);
  if (m.computes != 1 || m.result != kZip) return 16;
  m.result.clear();
  detail::get_or_compute(c, p + "memo", o, hooks);
  if (m.computes != 1 || m.result != kZip || m.accepts != 1) return 17;
  if (c.get_as<std::string>(p + "none")) return 18;
  return 0;
}

struct AtExit {
  Cache* cache = nullptr;
  int tid = 0;
  std::atomic<int>* result = nullptr;
  ~AtExit() {
    if (cache != nullptr) result->store(100 + every_call(*cache, tid));
  }
};

TEST(ThreadExitScratch, EveryCallFromExitDestructorsOfManyThreadsWhileOthersKeepUsingTheCache) {
  ScopedName name("scexit");
  Config cfg = small_config(name.name, 16u << 20, 4);
  cfg.compress_min_bytes = 1024;
  Cache cache = Cache::open(cfg);
  const int rc = wait_for(spawn([&] {
    constexpr int kThreads = 6;
    std::atomic<int> results[kThreads];
    for (auto& r : results) r.store(0);
    std::atomic<bool> stop{false};
    std::atomic<int> bad{0};
    std::vector<std::thread> busy;
    for (int b = 0; b < 2; ++b) {
      busy.emplace_back([&, b] {
        for (std::uint64_t v = 0; !stop.load(); ++v) {
          const std::string k = "busy-" + std::to_string(b) + "-" + std::to_string(v % 16);
          cache.set(k, make_value(k, v, v % 2 ? 4000 : 100));
          std::string out;
          if (cache.get(k, out) && !verify_value(k, out)) bad.fetch_add(1);
        }
      });
    }
    for (int round = 0; round < 3; ++round) {
      std::vector<std::thread> ts;
      for (int t = 0; t < kThreads; ++t) {
        ts.emplace_back([&, t, round] {
          thread_local AtExit at;  // built before the thread's first call
          at.cache = &cache;
          at.tid = t + 100 * round;
          at.result = &results[t];
          if (t % 2 == 0) {  // half of them also call in their life (buffers built), half only at exit
            if (const int r = every_call(cache, 1000 + t + 100 * round); r != 0) {
              at.cache = nullptr;
              results[t].store(r);
            }
          }
        });
      }
      for (auto& t : ts) t.join();
      for (int t = 0; t < kThreads; ++t) {
        if (results[t].load() != 100) {
          stop.store(true);
          for (auto& b : busy) b.join();
          return 1000 + 100 * t + results[t].load() % 100;
        }
      }
    }
    stop.store(true);
    for (auto& b : busy) b.join();
    return bad.load() == 0 ? 0 : 2;
  }));
  EXPECT_EQ(rc, 0) << "1000+100*thread+step: a call from a thread-exit destructor failed; 2: a busy thread read a "
                      "corrupt value; other: crash (ASan)";
}

// A thread-exit destructor that forks: the child (its only thread the one
// being torn down) goes on using the cache from that destructor and from
// the thread_locals destroyed after it, then exits with the thread. Reported
// through shared memory (the exit status of a process whose last thread
// returns is 0).
struct Report {
  std::atomic<int> child_step;  // 100 + step in the child
  std::atomic<int> child_later;  // 100 + step from a later destructor in the child
  std::atomic<int> parent_step;
};
Report* g_report = nullptr;
Cache* g_cache = nullptr;

struct Later {  // built first, destroyed last
  bool armed = false;
  ~Later() {
    if (!armed) return;
    const int r = every_call(*g_cache, forked_flag() ? 7 : 6);
    (forked_flag() ? g_report->child_later : g_report->parent_step).store(100 + r);
  }
  static int& forked_flag() {
    static thread_local int f = 0;
    return f;
  }
};

struct Forker {
  bool armed = false;
  ~Forker() {
    if (!armed) return;
    const pid_t pid = ::fork();
    if (pid == 0) {
      Later::forked_flag() = 1;
      // The child's process ends when this thread does: skip LeakSanitizer's
      // exit check, which cannot see the thread_locals of a thread that has
      // ended (the zstd context made at this exit) and reports them.
      std::atexit(+[] { ::_exit(0); });
      g_report->child_step.store(100 + every_call(*g_cache, 8));
      return;  // the child's last thread goes on exiting: Later's destructor runs here too
    }
    int st = 0;
    ::waitpid(pid, &st, 0);
  }
};

TEST(ThreadExitScratch, AThreadExitDestructorThatForksLetsTheChildUseTheCacheFromItsDestructors) {
  ScopedName name("scfork");
  Config cfg = small_config(name.name, 16u << 20, 2);
  cfg.compress_min_bytes = 1024;
  Cache cache = Cache::open(cfg);
  g_cache = &cache;
  g_report = static_cast<Report*>(shared_memory(sizeof(Report)));
  const int rc = wait_for(spawn([&] {
    std::thread t([] {
      thread_local Later later;  // constructed first: destroyed after Forker
      thread_local Forker forker;
      later.armed = true;
      forker.armed = true;
      if (every_call(*g_cache, 9) != 0) later.armed = forker.armed = false;
    });
    t.join();
    return 0;
  }));
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(g_report->child_step.load(), 100) << "the forked child's call from the forking destructor failed";
  EXPECT_EQ(g_report->child_later.load(), 100) << "the forked child's call from a later destructor failed";
  EXPECT_EQ(g_report->parent_step.load(), 100) << "the parent's call from the later destructor failed";
}

// Forked from a (non-main) thread, the child exits through exit(): its one
// thread's thread_locals are destroyed by exit, and one of them uses the cache.
struct ChildExit {
  bool armed = false;
  ~ChildExit() {
    if (armed) g_report->child_step.store(100 + every_call(*g_cache, 11));
  }
};

TEST(ThreadExitScratch, AChildForkedFromAThreadUsesTheCacheFromItsThreadLocalDestructorsAtExit) {
  ScopedName name("scfork2");
  Config cfg = small_config(name.name, 16u << 20, 2);
  cfg.compress_min_bytes = 1024;
  Cache cache = Cache::open(cfg);
  g_cache = &cache;
  g_report = static_cast<Report*>(shared_memory(sizeof(Report)));
  std::atomic<int> child_rc{-1};
  std::thread t([&] {
    thread_local ChildExit ce;  // before the thread's first call
    if (every_call(cache, 10) != 0) return;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ce.armed = true;
      // After the thread_local destructors, before LeakSanitizer's exit
      // check (registered first, run last): a child forked from a thread
      // cannot reach the parent's main-thread allocations, which LSan
      // would report as leaks.
      std::atexit(+[] { ::_exit(0); });
      std::exit(0);  // runs this (now only) thread's thread_local destructors
    }
    child_rc.store(wait_for(pid));
  });
  t.join();
  EXPECT_EQ(child_rc.load(), 0);
  EXPECT_EQ(g_report->child_step.load(), 100);
}

// =====================================================================================
// F. memoize: the flight around the look again
// =====================================================================================
using memoize_testing::all_flights_free;
using memoize_testing::finishes;
using memoize_testing::flight_owner;

struct MemoShared {
  std::atomic<int> computes;
  std::atomic<int> in_accept;     // a pid inside the flagged accept
  std::atomic<int> owner_seen;    // flight owner seen from inside the hook
  std::atomic<int> child_done;
  std::atomic<int> accepts;
};

struct Hooked {
  MemoShared* sh;
  int throw_at = 0;         // throw at this accept call (counted per process)
  int block_at = 0;         // block (forever) at this accept call, after reporting
  int fork_at = 0;          // fork at this accept call; the child does `child_mode`
  int child_mode = 0;       // 0: _exit at once; 1: return true; 2: throw; 3: return false
  int calls = 0;
  std::string poison = "poison";
  Cache* cache;
  std::string key;
};

detail::ComputeHooks hooks_for(Hooked& h) {
  return detail::ComputeHooks{
      &h,
      [](void* ctx, std::string_view bytes) {
        auto& h = *static_cast<Hooked*>(ctx);
        const int n = ++h.calls;
        h.sh->accepts.fetch_add(1);
        if (n == h.block_at) {
          h.sh->in_accept.store(int(::getpid()));
          for (;;) ::pause();
        }
        if (n == h.throw_at) throw 7;
        if (n == h.fork_at) {
          const pid_t me = ::getpid();
          const pid_t c = ::fork();
          if (c == 0) {
            switch (h.child_mode) {
              case 0: ::_exit(0);
              case 1: return true;
              case 2: throw 8;
              default: return false;
            }
          }
          memoize_testing::wait_for(c);
          h.sh->owner_seen.store(int(flight_owner(*h.cache, h.key) == std::uint32_t(me)));
          h.sh->child_done.store(1);
        }
        return bytes != h.poison;
      },
      [](void* ctx, std::string& out) {
        auto& h = *static_cast<Hooked*>(ctx);
        h.sh->computes.fetch_add(1);
        out = "fresh";
      }};
}

// Three processes released together each call get_or_compute(key) with
// plain hooks; each must finish.
void race_three_callers(Cache& cache, MemoShared* sh, const std::string& key, const ComputeOptions& o) {
  Gate gate;
  std::vector<pid_t> kids;
  for (int i = 0; i < 3; ++i) {
    kids.push_back(spawn([&] {
      gate.wait();
      Hooked h{sh};
      h.cache = &cache;
      h.key = key;
      detail::get_or_compute(cache, key, o, hooks_for(h));
      return 0;
    }));
  }
  gate.open();
  for (pid_t k : kids) EXPECT_EQ(finishes(k), 0);
}

// Killed -9 inside accept() while holding the flight (the miss path's look
// again, the stored value rejected): concurrent callers in three other
// processes take the flight over and compute exactly once.
TEST(MemoFlight, AProcessKilledInsideAcceptHoldingTheFlightCostsExactlyOneComputeAfterIt) {
  ScopedName name("scmemo");
  Cache cache = Cache::open(small_config(name.name));
  auto* sh = static_cast<MemoShared*>(shared_memory(sizeof(MemoShared)));
  ASSERT_EQ(cache.set("mk", "poison"), Errc::ok);
  ComputeOptions o;
  o.lease = 1h;
  const pid_t victim = spawn([&] {
    Hooked h{sh};
    h.block_at = 2;  // 1: the first look (rejects), 2: the look again, holding the flight
    h.cache = &cache;
    h.key = "mk";
    detail::get_or_compute(cache, "mk", o, hooks_for(h));
    return 50;
  });
  ASSERT_TRUE(memoize_testing::eventually([&] { return sh->in_accept.load() == victim; }));
  EXPECT_EQ(flight_owner(cache, "mk"), std::uint32_t(victim));
  ::kill(victim, SIGKILL);
  EXPECT_EQ(wait_for(victim), 128 + SIGKILL);
  race_three_callers(cache, sh, "mk", o);
  EXPECT_EQ(sh->computes.load(), 1) << "not exactly one compute after the owner died in accept";
  EXPECT_TRUE(all_flights_free(cache));
  EXPECT_EQ(cache.get("mk"), std::optional<std::string>("fresh"));
}

// accept() throwing at its 1st, 2nd or 3rd call, in the miss path and in the
// stale path: the exception reaches the caller, the flight is free after,
// and then three concurrent callers in other processes compute exactly once.
TEST(MemoFlight, AcceptThrowingAtEachCallLeavesTheFlightFreeAndTheNextMissComputedOnce) {
  for (int stale = 0; stale < 2; ++stale) {
    for (int at = 1; at <= 3; ++at) {
      ScopedName name("scmth");
      Cache cache = Cache::open(small_config(name.name));
      auto* sh = static_cast<MemoShared*>(shared_memory(sizeof(MemoShared)));
      FakeClock clock;
      ComputeOptions o;
      o.lease = 1h;
      if (stale) {
        o.set.ttl = 10s;
        o.stale_while_revalidate = 60s;
        Hooked first{sh};
        first.poison = "";
        first.cache = &cache;
        first.key = "mt";
        detail::get_or_compute(cache, "mt", o, hooks_for(first));  // stores "fresh" wrapped
        ASSERT_EQ(sh->computes.load(), 1);
        sh->computes.store(0);
        clock.advance(10'000);  // stale, inside the window
      } else {
        ASSERT_EQ(cache.set("mt", "poison"), Errc::ok);
      }
      Hooked t{sh};
      t.throw_at = at;
      t.cache = &cache;
      t.key = "mt";
      if (stale) t.poison = "never";
      bool threw = false;
      try {
        detail::get_or_compute(cache, "mt", o, hooks_for(t));
      } catch (int) {
        threw = true;
      }
      // Miss path: accept is called twice (first look, look again) then
      // compute; a 3rd call never comes. Stale path: twice too.
      EXPECT_EQ(threw, at <= 2) << "stale " << stale << " at " << at;
      EXPECT_TRUE(all_flights_free(cache)) << "stale " << stale << " at " << at << ": flight left held";
      const int before = sh->computes.load();
      if (!threw) EXPECT_EQ(before, stale ? 1 : 1);
      if (threw) EXPECT_EQ(before, 0);
      if (!stale && !threw) continue;
      if (!stale) {
        race_three_callers(cache, sh, "mt", o);
        EXPECT_EQ(sh->computes.load(), 1) << "at " << at;
      } else if (threw) {
        // Another process finds it stale and the flight free: refreshes once.
        EXPECT_EQ(finishes(spawn([&] {
                    Hooked h{sh};
                    h.poison = "never";
                    h.cache = &cache;
                    h.key = "mt";
                    detail::get_or_compute(cache, "mt", o, hooks_for(h));
                    return 0;
                  })),
                  0);
        EXPECT_EQ(sh->computes.load(), 1) << "stale at " << at;
      }
      EXPECT_TRUE(all_flights_free(cache));
    }
  }
}

// A child forked inside accept() while its parent holds the flight (the
// look again), which exits at once, returns a hit, throws, or returns a
// rejection (and so goes on to compute in the child): the flight is still
// the parent's when the child is gone, and is free once the parent is done.
TEST(MemoFlight, AChildForkedInsideAcceptNeverReleasesItsParentsFlight) {
  for (int mode = 0; mode < 4; ++mode) {
    ScopedName name("scmfk");
    Cache cache = Cache::open(small_config(name.name));
    auto* sh = static_cast<MemoShared*>(shared_memory(sizeof(MemoShared)));
    ASSERT_EQ(cache.set("mf", "poison"), Errc::ok);
    ComputeOptions o;
    o.lease = 1h;
    const pid_t p = spawn([&] {
      Hooked h{sh};
      h.fork_at = 2;
      h.child_mode = mode;
      h.cache = &cache;
      h.key = "mf";
      try {
        detail::get_or_compute(cache, "mf", o, hooks_for(h));
      } catch (int) {
        return 3;  // only the child of mode 2 throws
      }
      return 0;
    });
    EXPECT_EQ(finishes(p), 0) << "mode " << mode;
    EXPECT_EQ(sh->child_done.load(), 1) << "mode " << mode;
    EXPECT_EQ(sh->owner_seen.load(), 1) << "mode " << mode << ": the flight was not the parent's after its child";
    EXPECT_TRUE(all_flights_free(cache)) << "mode " << mode;
    EXPECT_EQ(cache.get("mf"), std::optional<std::string>("fresh"));
    // The parent computed once; a child that rejected computed its own (mode 3).
    EXPECT_EQ(sh->computes.load(), mode == 3 ? 2 : 1) << "mode " << mode;
  }
}

// compute() throwing, then a nested get_or_compute of another key from
// inside accept and compute (re-entrant lookups of the thread's buffer):
// every result exact, every flight free.
TEST(MemoFlight, NestedGetOrComputeInsideHooksAndThrowingComputesLeaveResultsExactAndFlightsFree) {
  ScopedName name("scmnest");
  Config cfg = small_config(name.name);
  cfg.compress_min_bytes = 256;
  Cache cache = Cache::open(cfg);
  struct N {
    Cache* c;
    int depth;
    std::string result;
    int computes = 0;
    bool throw_compute = false;
  };
  static detail::ComputeHooks (*make)(N&) = nullptr;
  make = [](N& n) {
    return detail::ComputeHooks{
        &n,
        [](void* ctx, std::string_view bytes) {
          auto& n = *static_cast<N*>(ctx);
          if (n.depth < 3) {
            N inner{n.c, n.depth + 1};
            ComputeOptions o;
            detail::get_or_compute(*n.c, "nest-" + std::to_string(n.depth + 1), o, make(inner));
            if (inner.result != compressible(1000 + n.depth + 1, 'n')) return false;
          }
          n.result.assign(bytes);
          return true;
        },
        [](void* ctx, std::string& out) {
          auto& n = *static_cast<N*>(ctx);
          ++n.computes;
          if (n.throw_compute) throw std::runtime_error("compute fails");
          if (n.depth < 3) {
            N inner{n.c, n.depth + 1};
            ComputeOptions o;
            detail::get_or_compute(*n.c, "nest-" + std::to_string(n.depth + 1), o, make(inner));
          }
          out = compressible(1000 + n.depth, 'n');
          n.result = out;
        }};
  };
  ComputeOptions o;
  N bad{&cache, 0};
  bad.throw_compute = true;
  EXPECT_THROW(detail::get_or_compute(cache, "nest-0", o, make(bad)), std::runtime_error);
  EXPECT_TRUE(all_flights_free(cache));
  for (int round = 0; round < 3; ++round) {
    N top{&cache, 0};
    detail::get_or_compute(cache, "nest-0", o, make(top));
    EXPECT_EQ(top.result, compressible(1000, 'n')) << round;
    EXPECT_EQ(top.computes, round == 0 ? 1 : 0);
    EXPECT_TRUE(all_flights_free(cache));
  }
}

}  // namespace
}  // namespace hostcache
