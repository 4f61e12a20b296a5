// Adversarial review of 0ab1852 (keys that view the destination are copied
// first: get(key, value)'s std::less range check and get_aliased;
// get_many(keys, values, hits)'s thread_local key copy), 43770e1 (get_many
// into reused strings, lookup_many) and 79faa7a (grow_for_overwrite,
// Dest::reserve/discard). Real processes: writers racing in other
// processes, a writer SIGKILLed inside its write, one SIGSTOPped holding the
// lock, a nested lookup from a caller's sink, thread-exit destructors.
//
// Each test that FAILS names the contract it breaks; the others are probes
// that held.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "arena.h"
#include "atomic_words.h"
#include "entry_probe.h"
#include "fork_probe.h"
#include "stripe.h"
#include "test_support.h"
#include <hostcache/memoize.h>

// ---- allocation counting (this binary only) -------------------------------------
// Counts operator new calls while g_count_allocs is set (get_many's "no
// allocation once they have room").
namespace {
std::atomic<bool> g_count_allocs{false};
std::atomic<std::uint64_t> g_allocs{0};
void* counted_alloc(std::size_t n) {
  if (g_count_allocs.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
}  // namespace
void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

Config one_stripe(const std::string& name, std::size_t capacity = 4u << 20) {
  return small_config(name, capacity, 1);
}


// =====================================================================================
// F1. A sink that looks another compressed key up (get_into, decompress_into)
// =====================================================================================
//
// Contract (cache.h, get_into): "true on a hit, after sink() returned the
// buffer now holding the value"; invariant 1: a hit is exactly the bytes some
// set() wrote for exactly that key. Nothing forbids the sink (the caller's
// code) from using the cache.
//
// stripe.cpp decompress_into() calls out.reserve() (the sink) *before* it
// reads raw_buffer(), the thread's one buffer for a compressed entry's frame.
// A nested get of another compressed entry (inside the sink) replaces that
// frame; the outer get then decodes the other key's frame into its own
// buffer. Same original length: a hit with another key's value.

struct NestingSink {
  const Cache* cache = nullptr;
  std::string nested_key;
  std::string nested_value;
  bool nested_hit = false;
  int calls = 0;
  std::string buf;
  static char* sink(void* ctx, std::size_t n) {
    auto& s = *static_cast<NestingSink*>(ctx);
    if (s.calls++ == 0) s.nested_hit = s.cache->get(s.nested_key, s.nested_value);  // e.g. a pool's own lookup
    s.buf.resize(n);
    return s.buf.data();
  }
};

TEST(ReentrantSink, ANestedCompressedGetInTheSinkMakesTheOuterGetServeAnotherKeysValue) {
  ScopedName name("alsink");
  Config cfg = one_stripe(name.name);
  cfg.compress_min_bytes = 256;
  Cache cache = Cache::open(cfg);
  const std::string a = compressible(4000, 'A'), b = compressible(4000, 'B');
  ASSERT_NE(a, b);
  ASSERT_EQ(cache.set("key-a", a), Errc::ok);
  ASSERT_EQ(cache.set("key-b", b), Errc::ok);
  ASSERT_GT(cache.stats().compressed_in, 0u) << "the values were not stored compressed";
  NestingSink s;
  s.cache = &cache;
  s.nested_key = "key-b";
  const bool hit = cache.get_into("key-a", &NestingSink::sink, &s);
  EXPECT_TRUE(s.nested_hit);
  EXPECT_EQ(s.nested_value, b);
  ASSERT_TRUE(hit) << "key-a is present and valid";
  EXPECT_NE(s.buf, b) << "get_into(\"key-a\") returned key-b's value (invariant 1)";
  EXPECT_EQ(s.buf, a);
}

// The same, where the nested key's value has another length: the outer key,
// present throughout, is a miss.
TEST(ReentrantSink, ANestedCompressedGetOfAnotherLengthMakesAPresentKeyAMiss) {
  ScopedName name("alsink2");
  Config cfg = one_stripe(name.name);
  cfg.compress_min_bytes = 256;
  Cache cache = Cache::open(cfg);
  const std::string a = compressible(4000, 'A'), b = compressible(3000, 'B');
  ASSERT_EQ(cache.set("key-a", a), Errc::ok);
  ASSERT_EQ(cache.set("key-b", b), Errc::ok);
  NestingSink s;
  s.cache = &cache;
  s.nested_key = "key-b";
  const bool hit = cache.get_into("key-a", &NestingSink::sink, &s);
  EXPECT_TRUE(s.nested_hit);
  EXPECT_TRUE(hit) << "key-a, present and valid, was a miss";
  if (hit) EXPECT_EQ(s.buf, a);
}

// Held: a nested get of an *uncompressed* key in the sink leaves the outer
// (uncompressed) get alone.
TEST(ReentrantSink, ANestedPlainGetInTheSinkLeavesAPlainOuterGetAlone) {
  ScopedName name("alsink3");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string a(4000, 'a'), b(4000, 'b');
  ASSERT_EQ(cache.set("key-a", a), Errc::ok);
  ASSERT_EQ(cache.set("key-b", b), Errc::ok);
  NestingSink s;
  s.cache = &cache;
  s.nested_key = "key-b";
  ASSERT_TRUE(cache.get_into("key-a", &NestingSink::sink, &s));
  EXPECT_EQ(s.buf, a);
  EXPECT_EQ(s.nested_value, b);
}

// =====================================================================================
// F2. A key that views value's terminator (the exact boundary of the range check)
// =====================================================================================
//
// cache.h: "`key` may view `value` itself". value.c_str()[value.size()] is
// part of the string (readable, '\0'); a one-byte key "\0" viewing it is a
// key viewing value. cache.cpp's check is
//   key.data() < value.data() + value.size() && value.data() < key.end()
// which excludes key.data() == value.data() + value.size(): the key is not
// copied, the copy of the value overwrites (or, reallocating, frees) its
// byte, and everything that reads the key after the copy -- a retry after a
// racing writer moved the sequence, the locked fallback, the debug log --
// reads other bytes.

// A racing writer of *another* key of the one stripe makes the reader retry.
// SSO: value "" (capacity 15); its value "ABCDEFGH" overwrites the key's
// byte with 'A'. The retry looks "A" up under the hash of "\0": a miss for a
// key present throughout. Heap (grow): the retry reads the freed buffer
// (heap-use-after-free under ASan).
void terminator_race(bool heap) {
  ScopedName name("alterm");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string key("\0", 1);
  const std::string value = heap ? std::string(300, 'V') : std::string("ABCDEFGH");
  ASSERT_EQ(cache.set(key, value), Errc::ok);
  auto* shared = static_cast<std::atomic<std::uint64_t>*>(shared_memory(4096));
  std::atomic<std::uint64_t>* sets = shared;
  std::atomic<std::uint64_t>* quit = shared + 1;
  const pid_t writer = spawn_rewriter(name.name, "other", sets, quit);
  ASSERT_TRUE(await_progress(sets, {writer}, 100));
  // The reader is a child of its own, so that an ASan report fails this
  // scene only (and the writer is still told to stop).
  const int rc = wait_for(spawn([&] {
    std::uint64_t misses = 0, wrong = 0, rounds = 0;
    const std::int64_t until = mono_ms() + 3000;
    while (mono_ms() < until && misses == 0) {
      for (int k = 0; k < 2000; ++k, ++rounds) {
        std::string out = heap ? std::string(40, 'x') : std::string();  // heap: capacity 40, grows to 300
        const std::string_view k0(out.c_str() + out.size(), 1);        // "\0", the terminator
        if (k0 != key) { ++wrong; continue; }
        if (!cache.get(k0, out)) ++misses;
        else if (out != value) ++wrong;
      }
    }
    if (misses != 0) {
      std::fprintf(stderr, "key \"\\0\" (viewing value's terminator), present throughout, missed in %llu of %llu rounds\n",
                   (unsigned long long)misses, (unsigned long long)rounds);
      return 1;
    }
    return wrong == 0 ? 0 : 2;
  }));
  quit->store(1);
  EXPECT_EQ(wait_for(writer), 0);
  EXPECT_EQ(rc, 0) << "1: a false miss; 2: a wrong value; other: the reader crashed (ASan: use after free)";
}

TEST(TerminatorKey, AKeyViewingValuesTerminatorIsAHitUnderAWriterOfAnotherKey) { terminator_race(false); }
TEST(TerminatorKey, AKeyViewingValuesTerminatorThatTheCopyFreesIsAHitUnderAWriter) { terminator_race(true); }

// Deterministic (no race): with HOSTCACHE_LOG=debug, lookup() logs the key
// after stripe::get copied the value: the log names the key the caller did
// not ask for ('A' instead of "\0"), and (heap) reads freed memory.
int terminator_debug_log(bool heap) {
  char path[] = "/tmp/alias-log-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return 90;
  ::dup2(fd, 2);  // the library's logger writes to stderr
  ScopedName name("altlog");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string key("\0", 1);
  const std::string value = heap ? std::string(300, 'V') : std::string("ABCDEFGH");
  if (cache.set(key, value) != Errc::ok) return 91;
  std::string out = heap ? std::string(40, 'x') : std::string();
  const std::string_view k0(out.c_str() + out.size(), 1);
  if (!cache.get(k0, out)) return 92;
  if (out != value) return 93;
  std::fflush(stderr);
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  ::unlink(path);
  const std::string log = ss.str();
  const std::string want = std::string("get '") + key + "': hit";
  if (log.find(want) == std::string::npos) {
    std::string shown;
    for (char c : log) shown += c == '\0' ? std::string("\\0") : std::string(1, c);
    std::fprintf(stdout, "debug log does not name the key asked for; it says: %s\n", shown.c_str());
    std::fflush(stdout);
    return 1;
  }
  return 0;
}

TEST(TerminatorKey, DISABLED_DebugLogHelperSso) { ::_exit(terminator_debug_log(false)); }
TEST(TerminatorKey, DISABLED_DebugLogHelperHeap) { ::_exit(terminator_debug_log(true)); }

TEST(TerminatorKey, TheDebugLogNamesTheKeyAskedForWhenItViewsValuesTerminator) {
  EXPECT_EQ(run_exec_helper("TerminatorKey.DISABLED_DebugLogHelperSso", "HOSTCACHE_LOG", "debug"), 0);
}
TEST(TerminatorKey, TheDebugLogReadsNoFreedKeyWhenItViewsValuesTerminator) {
  EXPECT_EQ(run_exec_helper("TerminatorKey.DISABLED_DebugLogHelperHeap", "HOSTCACHE_LOG", "debug"), 0);
}

// Held: a key strictly inside value (a substring, not its start), the value
// reallocating, under the same writer: copied first, always a hit.
TEST(AliasHeld, AKeyInsideValueThatTheCopyReallocatesIsAlwaysAHitUnderAWriter) {
  ScopedName name("alin");
  Cache cache = Cache::open(one_stripe(name.name));
  const std::string key = "middle-key-0123456789abcdef";  // 27 bytes
  const std::string value(5000, 'v');
  ASSERT_EQ(cache.set(key, value), Errc::ok);
  auto* shared = static_cast<std::atomic<std::uint64_t>*>(shared_memory(4096));
  const pid_t writer = spawn_rewriter(name.name, "other", &shared[0], &shared[1]);
  ASSERT_TRUE(await_progress(shared, {writer}, 100));
  const int rc = wait_for(spawn([&] {
    std::uint64_t misses = 0, wrong = 0;
    for (int k = 0; k < 20000; ++k) {
      std::string out = "prefix-" + key + "-suffix";  // heap, capacity < 5000: reallocates
      const std::string_view kv(out.data() + 7, key.size());
      if (!cache.get(kv, out)) ++misses;
      else if (out != value) ++wrong;
    }
    return misses != 0 ? 1 : wrong != 0 ? 2 : 0;
  }));
  shared[1].store(1);
  EXPECT_EQ(wait_for(writer), 0);
  EXPECT_EQ(rc, 0);
}

// =====================================================================================
// F3. get_many into reused strings: a smaller batch frees the caller's room
// =====================================================================================
//
// cache.h: "into the caller's strings, which keep their room from call to
// call (a loader that asks for a batch of keys per request allocates nothing
// once they have grown)". values.resize(keys.size()) (cache.cpp) destroys
// the strings past a smaller batch: the next larger batch allocates them
// again. A loader whose batch sizes vary (the ordinary case) allocates on
// every request.
TEST(ReusedStrings, SameSizedBatchesAllocateNothingOnceGrown) {
  ScopedName name("alalloc0");
  Cache cache = Cache::open(small_config(name.name));
  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) {
    keys.push_back("alloc-key-" + std::to_string(i));
    ASSERT_EQ(cache.set(keys.back(), std::string(200 + i, char('a' + i))), Errc::ok);
  }
  std::vector<std::string_view> batch(keys.begin(), keys.end());
  std::vector<std::string> values;
  std::vector<bool> hits;
  ASSERT_EQ(cache.get_many(batch, values, hits), 8u);
  ASSERT_EQ(cache.get_many(batch, values, hits), 8u);
  g_allocs.store(0);
  g_count_allocs.store(true);
  const std::size_t n = cache.get_many(batch, values, hits);
  g_count_allocs.store(false);
  EXPECT_EQ(n, 8u);
  EXPECT_EQ(g_allocs.load(), 0u);
}

TEST(ReusedStrings, ASmallerBatchInBetweenLeavesTheNextFullBatchAllocationFree) {
  ScopedName name("alalloc");
  Cache cache = Cache::open(small_config(name.name));
  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) {
    keys.push_back("alloc-key-" + std::to_string(i));
    ASSERT_EQ(cache.set(keys.back(), std::string(200 + i, char('a' + i))), Errc::ok);
  }
  std::vector<std::string_view> full(keys.begin(), keys.end());
  std::vector<std::string_view> half(keys.begin(), keys.begin() + 4);
  std::vector<std::string> values;
  std::vector<bool> hits;
  ASSERT_EQ(cache.get_many(full, values, hits), 8u);  // grown
  ASSERT_EQ(cache.get_many(half, values, hits), 4u);  // a smaller request
  g_allocs.store(0);
  g_count_allocs.store(true);
  const std::size_t n = cache.get_many(full, values, hits);
  g_count_allocs.store(false);
  EXPECT_EQ(n, 8u);
  EXPECT_EQ(g_allocs.load(), 0u) << "the strings that had grown were freed by the smaller batch";
}

// =====================================================================================
// F4. get_many from a thread-exit destructor (its thread_local key copy)
// =====================================================================================
//
// cache.h: every method is safe to call from any thread. get_many keeps
// function-local thread_locals (key_bytes, own_keys since 0ab1852; hashes,
// ahead before): constructed at a thread's first get_many, destroyed at its
// exit *before* every thread_local constructed earlier. A thread_local of
// the caller's made before that first call (a per-thread context flushing
// through the cache when its thread ends) calls get_many on destroyed
// strings and vectors: heap-use-after-free (ASan); silent writes into freed
// memory otherwise.
struct ThreadContext {
  const Cache* cache = nullptr;
  std::atomic<int>* result = nullptr;
  ~ThreadContext() {
    if (cache == nullptr) return;
    const std::string k = "exit-key-with-a-long-name-0123456789";
    std::vector<std::string_view> batch = {k, k};
    std::vector<std::string> values;
    std::vector<bool> hits;
    const std::size_t n = cache->get_many(batch, values, hits);
    result->store(n == 2 && values[0] == std::string(100, 'e') && values[1] == values[0] ? 1 : 2);
  }
};

TEST(ThreadExit, GetManyFromAThreadLocalDestructorUsesNoDestroyedBuffers) {
  ScopedName name("alexit");
  Cache cache = Cache::open(small_config(name.name));
  ASSERT_EQ(cache.set("exit-key-with-a-long-name-0123456789", std::string(100, 'e')), Errc::ok);
  const int rc = wait_for(spawn([&] {
    std::atomic<int> result{0};
    std::thread t([&] {
      thread_local ThreadContext ctx;  // constructed before the thread's first get_many
      ctx.cache = &cache;
      ctx.result = &result;
      const std::string k = "a-key-of-more-than-fifteen-bytes-" + std::string(200, 'k');
      std::vector<std::string_view> batch = {k, k, k};
      std::vector<std::string> values;
      std::vector<bool> hits;
      cache.get_many(batch, values, hits);
    });
    t.join();
    return result.load() == 1 ? 0 : 10 + result.load();
  }));
  EXPECT_EQ(rc, 0) << "get_many from a thread-exit destructor failed (ASan: use after free of its thread_locals)";
}

// Every call whose library buffers are per-thread, from a thread-exit
// destructor of a thread_local built before the thread's first call of each:
// compressed gets and sets (the frame, zstd's contexts), a large set (its
// image), touch (the expiry's image), both get_many forms, get_as and
// get_or_compute (its lookup buffer). Each must answer as it would in the
// thread's life; under ASan, none may touch a destroyed buffer.
int every_per_thread_call(Cache& c) {
  const std::string big(3000, 'L'), zip = compressible(4000, 'Z');
  if (c.set("exit-big", big) != Errc::ok) return 1;
  std::string out;
  if (!c.get("exit-big", out) || out != big) return 2;
  if (c.set("exit-zip", zip) != Errc::ok) return 3;
  if (!c.get("exit-zip", out) || out != zip) return 4;
  if (!c.touch("exit-zip", std::chrono::hours(1))) return 5;
  std::vector<std::string_view> batch = {"exit-zip", "exit-big", "exit-none"};
  auto many = c.get_many(batch);
  if (many.size() != 3 || many[0] != zip || many[1] != big || many[2]) return 6;
  std::vector<std::string> values;
  std::vector<bool> hits;
  if (c.get_many(batch, values, hits) != 2 || values[0] != zip || values[1] != big) return 7;
  if (c.put("exit-typed", std::vector<int>{1, 2, 3}) != Errc::ok) return 8;
  if (c.get_as<std::vector<int>>("exit-typed") != std::vector<int>{1, 2, 3}) return 9;
  c.erase("exit-memo");
  int computed = 0;
  const std::string got = get_or_compute(c, "exit-memo", [&] {
    ++computed;
    return zip;
  });
  if (got != zip || computed != 1) return 10;
  const std::string again = get_or_compute(c, "exit-memo", [&] {
    ++computed;
    return std::string("recomputed");
  });
  if (again != zip || computed != 1) return 11;
  return 0;
}

struct EveryCallAtExit {
  Cache* cache = nullptr;
  std::atomic<int>* result = nullptr;
  ~EveryCallAtExit() {
    if (cache != nullptr) result->store(100 + every_per_thread_call(*cache));
  }
};

TEST(ThreadExit, EveryCallFromAThreadLocalDestructorAnswersAsInTheThreadsLife) {
  ScopedName name("alexit2");
  Config cfg = small_config(name.name, 8u << 20, 2);
  cfg.compress_min_bytes = 1024;
  Cache cache = Cache::open(cfg);
  const int rc = wait_for(spawn([&] {
    std::atomic<int> result{0};
    std::thread t([&] {
      thread_local EveryCallAtExit at_exit;  // built before the thread's first call of any kind
      at_exit.cache = &cache;
      at_exit.result = &result;
      // The same calls in the thread's life build the library's buffers.
      if (const int r = every_per_thread_call(cache); r != 0) {
        at_exit.cache = nullptr;
        result.store(r);
      }
    });
    t.join();
    return result.load() == 100 ? 0 : result.load();
  }));
  EXPECT_EQ(rc, 0) << "1-11: the step that failed in the thread's life; 101-111: at its exit; other: a crash "
                      "(ASan: a destroyed buffer used)";
}

// =====================================================================================
// Held: get_many with keys viewing values, under writers in other processes
// =====================================================================================
//
// Pointer entries p<i> hold the name of a target key; targets hold
// make_value(target). Writers (other processes) repoint pointers and rewrite
// targets; an eraser erases. The reader's batch 2 is keyed by views of batch
// 1's values (shuffled, some twice, some views beyond size() within
// capacity -- never read: only the hits' views), the strings left in odd
// states. Every hit must verify for exactly the key it was asked for.
TEST(AliasHeld, GetManyKeyedByItsOwnLastValuesUnderWritersServesOnlyWhatWasWritten) {
  ScopedName name("alchain");
  Config cfg = small_config(name.name, 4u << 20, 2);
  cfg.compress_min_bytes = 512;
  Cache cache = Cache::open(cfg);
  constexpr int kPtr = 16, kTgt = 32;
  auto ptr_of = [](int i) { return "ptr-" + std::to_string(i); };
  auto tgt_of = [](int j) {
    // Lengths around SSO and beyond, so that views dangle if not copied.
    std::string t = "t" + std::to_string(j) + "-";
    t.resize(std::size_t(5 + (j * 7) % 40), char('a' + j % 26));
    return t;
  };
  for (int i = 0; i < kPtr; ++i) ASSERT_EQ(cache.set(ptr_of(i), tgt_of(i)), Errc::ok);
  for (int j = 0; j < kTgt; ++j) ASSERT_EQ(cache.set(tgt_of(j), make_value(tgt_of(j), 0, 40)), Errc::ok);
  auto* sh = static_cast<std::atomic<std::uint64_t>*>(shared_memory(4096));
  std::vector<pid_t> writers;
  for (int w = 0; w < 2; ++w) {
    writers.push_back(spawn([&, w] {
      Cache c = Cache::attach(name.name);
      std::mt19937_64 rng(w + 7);
      for (std::uint64_t v = 1; sh[4].load() == 0 && ::getppid() != 1; ++v) {
        if (w == 0) {
          if (c.set(ptr_of(int(rng() % kPtr)), tgt_of(int(rng() % kTgt))) != Errc::ok) return 1;
        } else {
          const int j = int(rng() % kTgt);
          if (rng() % 6 == 0) {
            c.erase(tgt_of(j));
          } else {
            const std::size_t size = rng() % 5 == 0 ? 3000 + rng() % 2000 : 20 + rng() % 120;
            if (c.set(tgt_of(j), make_value(tgt_of(j), v, size)) != Errc::ok) return 2;
          }
        }
        sh[w].fetch_add(1);
      }
      return 0;
    }));
  }
  ASSERT_TRUE(await_progress(sh, writers, 200));
  const pid_t reader = spawn([&] {
    Cache c = Cache::attach(name.name);
    std::mt19937_64 rng(3);
    std::vector<std::string> values;
    std::vector<bool> hits;
    std::uint64_t checked = 0;
    for (int round = 0; round < 4000; ++round) {
      std::vector<std::string> ptrs;
      std::vector<std::string_view> b1;
      for (int i = 0, n = 1 + int(rng() % 12); i < n; ++i) ptrs.push_back(ptr_of(int(rng() % kPtr)));
      for (auto& p : ptrs) b1.emplace_back(p);
      c.get_many(b1, values, hits);
      // Capacity == size now (sometimes): a larger batch 2 reallocates the
      // vector inside get_many, moving the SSO strings its keys view.
      if (rng() % 2 == 0) values.shrink_to_fit();
      std::vector<std::string_view> b2;
      std::vector<std::string> asked;
      for (std::size_t i = 0; i < b1.size(); ++i) {
        if (!hits[i]) continue;
        for (int rep = 0, reps = 1 + int(rng() % 2); rep < reps; ++rep) {
          b2.emplace_back(values[i]);
          asked.push_back(values[i]);
        }
      }
      // Shuffle the views (and what they were), then make batch 2 larger or
      // smaller than batch 1 so that values.resize moves or frees strings.
      for (std::size_t i = b2.size(); i > 1; --i) {
        const std::size_t j = rng() % i;
        std::swap(b2[i - 1], b2[j]);
        std::swap(asked[i - 1], asked[j]);
      }
      if (rng() % 2 == 0 && b2.size() > 1) { b2.pop_back(); asked.pop_back(); }
      const std::size_t got = c.get_many(b2, values, hits);
      if (values.size() < b2.size() || hits.size() != b2.size()) return 20;
      std::size_t count = 0;
      for (std::size_t i = 0; i < b2.size(); ++i) {
        if (!hits[i]) continue;
        ++count;
        ++checked;
        if (!verify_value(asked[i], values[i])) {
          std::fprintf(stderr, "key %s got %zu bytes not written for it\n", asked[i].c_str(), values[i].size());
          return 21;
        }
      }
      if (count != got) return 22;
    }
    return checked > 1000 ? 0 : 23;
  });
  EXPECT_EQ(wait_for(reader), 0);
  sh[4].store(1);
  for (pid_t w : writers) EXPECT_EQ(wait_for(w), 0);
}

// =====================================================================================
// Held: exact sizes around SSO and capacity doublings, compressed or not
// =====================================================================================
//
// For each value size and each prior state of the destination string (empty,
// full SSO, one short, long, exactly the capacity, moved-from), get and
// get_many give exactly the value; a miss on a forged frame leaves nothing
// of the reserved room to read (discard: empty).
TEST(GrowHeld, ValuesAroundSsoAndDoublingsAreExactWhateverTheStringHeld) {
  ScopedName name("algrow");
  Config cfg = one_stripe(name.name, 8u << 20);
  Cache plain = Cache::open(cfg);
  const std::vector<std::size_t> sizes = {0,  1,  7,  8,  14,  15,  16,  17,  29,  30,  31,   32,   33,
                                          63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 2047, 2048,
                                          2049, 4095, 4096, 4097, 8191, 8192, 8193, 30000};
  std::vector<std::string> keys;
  for (std::size_t n : sizes) {
    keys.push_back("grow-" + std::to_string(n));
    std::string v(n, '\0');
    for (std::size_t i = 0; i < n; ++i) v[i] = char('A' + (i * 31 + n) % 26);
    ASSERT_EQ(plain.set(keys.back(), v), Errc::ok);
  }
  auto expect_of = [&](std::size_t n) {
    std::string v(n, '\0');
    for (std::size_t i = 0; i < n; ++i) v[i] = char('A' + (i * 31 + n) % 26);
    return v;
  };
  auto prepare = [](std::string& s, int state, std::size_t n) {
    switch (state) {
      case 0: s.clear(); s.shrink_to_fit(); break;
      case 1: s.assign(15, '#'); break;
      case 2: s.assign(n > 0 ? n - 1 : 0, '#'); break;
      case 3: s.assign(n + 100, '#'); break;
      case 4: s.assign(n * 2 + 1, '#'); s.resize(n / 2); break;  // room beyond size
      case 5: { std::string t = std::move(s); (void)t; break; }
      default: s.assign(std::max<std::size_t>(s.capacity(), 1), '#'); break;  // exactly the capacity
    }
  };
  for (std::size_t idx = 0; idx < sizes.size(); ++idx) {
    const std::string want = expect_of(sizes[idx]);
    for (int state = 0; state < 7; ++state) {
      std::string s;
      prepare(s, state, sizes[idx]);
      ASSERT_TRUE(plain.get(keys[idx], s));
      ASSERT_EQ(s.size(), want.size()) << "size " << sizes[idx] << " state " << state;
      ASSERT_EQ(s, want) << "size " << sizes[idx] << " state " << state;
      std::vector<std::string> values(3);
      for (auto& v : values) prepare(v, state, sizes[idx]);
      std::vector<std::string_view> batch = {keys[idx], keys[(idx + 1) % keys.size()], keys[idx]};
      std::vector<bool> hits;
      ASSERT_EQ(plain.get_many(batch, values, hits), 3u);
      ASSERT_EQ(values[0], want);
      ASSERT_EQ(values[1], expect_of(sizes[(idx + 1) % sizes.size()]));
      ASSERT_EQ(values[2], want);
    }
  }
}

TEST(GrowHeld, CompressedValuesAreExactAndAForgedFrameLeavesNoReservedBytes) {
  ScopedName name("algrowz");
  Config cfg = one_stripe(name.name, 8u << 20);
  cfg.compress_min_bytes = 64;
  Cache cache = Cache::open(cfg);
  const std::vector<std::size_t> sizes = {64, 65, 127, 128, 129, 1000, 4096, 4097, 30000};
  for (std::size_t n : sizes) ASSERT_EQ(cache.set("z" + std::to_string(n), compressible(n, 'Z')), Errc::ok);
  ASSERT_GT(cache.stats().compressed_in, 0u);
  for (std::size_t n : sizes) {
    for (std::size_t prior : {std::size_t(0), std::size_t(15), n - 1, n + 1, 2 * n}) {
      std::string s(prior, '#');
      ASSERT_TRUE(cache.get("z" + std::to_string(n), s));
      ASSERT_EQ(s, compressible(n, 'Z')) << n << " after " << prior;
    }
  }
  // Forge one frame: decompress fails after reserve.
  const std::string k = "z30000";
  ASSERT_TRUE(forge_frame(cache, k));
  for (std::size_t prior : {std::size_t(0), std::size_t(15), std::size_t(29999), std::size_t(40000)}) {
    std::string s(prior, '#');
    const bool hit = cache.get(k, s);
    EXPECT_FALSE(hit) << "a frame without its magic decoded";
    EXPECT_TRUE(s.empty()) << "a decode failure left " << s.size() << " reserved bytes";
    std::vector<std::string> values = {std::string(prior, '#')};
    std::vector<bool> hits;
    std::vector<std::string_view> batch = {k};
    EXPECT_EQ(cache.get_many(batch, values, hits), 0u);
    EXPECT_FALSE(hits[0]);
    EXPECT_TRUE(values[0].empty()) << "a decode failure left " << values[0].size() << " reserved bytes";
  }
}

// =====================================================================================
// Held: a writer SIGKILLed inside its write; one SIGSTOPped holding the lock
// =====================================================================================
//
// A writer killed right after it made the sequence odd (ptrace single-step,
// SIGKILL): get_many into reused strings keyed by views of those strings
// repairs the stripe and answers every intact key with its value.
TEST(CrashHeld, GetManyKeyedByItsValuesAfterAWriterDiedMidWriteServesEveryIntactKey) {
  ScopedName name("alkill");
  Cache cache = Cache::open(one_stripe(name.name));
  std::vector<std::string> names;
  for (int i = 0; i < 10; ++i) {
    names.push_back("intact-key-number-" + std::to_string(i));
    ASSERT_EQ(cache.set(names.back(), make_value(names.back(), 1, 100 + 50 * i)), Errc::ok);
  }
  // Pointers to the names (batch 1), so that batch 2 views the values.
  for (int i = 0; i < 10; ++i) ASSERT_EQ(cache.set("p" + std::to_string(i), names[i]), Errc::ok);
  const std::uint8_t* seq = reinterpret_cast<const std::uint8_t*>(&header_of(cache, 0).seq);
  const Stepped r = kill_after_change(seq, 8, 1, 2'000'000, [&] {
    Cache c = Cache::attach(name.name);
    return c.set("victim", std::string(500, 'x')) == Errc::ok ? 0 : 1;
  });
  if (r.outcome == Stepped::unavailable) GTEST_SKIP() << "ptrace unavailable";
  ASSERT_EQ(r.outcome, Stepped::killed);
  ASSERT_EQ(words::load(header_of(cache, 0).seq) & 1, 1u) << "the writer died with the sequence odd";
  const int rc = wait_for(spawn([&] {
    Cache c = Cache::attach(name.name);
    std::vector<std::string> ptrs;
    for (int i = 0; i < 10; ++i) ptrs.push_back("p" + std::to_string(9 - i));
    std::vector<std::string_view> b1(ptrs.begin(), ptrs.end());
    std::vector<std::string> values;
    std::vector<bool> hits;
    if (c.get_many(b1, values, hits) != 10) return 1;
    std::vector<std::string_view> b2(values.begin(), values.end());
    b2.push_back(values[3]);  // a duplicate; the batch grows the vector
    if (c.get_many(b2, values, hits) != 11) return 2;
    for (int i = 0; i < 10; ++i) {
      if (!verify_value(names[9 - i], values[i])) return 3;
    }
    if (values[10] != values[3]) return 4;
    return 0;
  }));
  EXPECT_EQ(rc, 0);
}

// A writer SIGSTOPped inside its write (sequence odd, lock held by a live
// process): get_many answers misses (busy) within lock_timeout, with hits
// and the count agreeing; once it is continued, every key hits again.
TEST(CrashHeld, GetManyUnderAStoppedWriterMissesConsistentlyThenHits) {
  ScopedName name("alstop");
  Config cfg = one_stripe(name.name);
  cfg.lock_timeout = 100ms;
  Cache cache = Cache::open(cfg);
  for (int i = 0; i < 4; ++i) ASSERT_EQ(cache.set("k" + std::to_string(i), std::string(50, char('a' + i))), Errc::ok);
  auto* sh = static_cast<std::atomic<int>*>(shared_memory(4096));
  const pid_t holder = spawn([&] {
    Cache c = Cache::open(cfg);
    Segment& seg = detail::Access::segment(c);
    stripe::Locked l(seg, 0);
    l.begin();  // the sequence odd
    sh[0].store(1);
    ::raise(SIGSTOP);
    l.end();
    return 0;
  });
  ASSERT_TRUE(await([&] { return sh[0].load() == 1; }));
  int status = 0;
  ASSERT_EQ(::waitpid(holder, &status, WUNTRACED), holder);
  ASSERT_TRUE(WIFSTOPPED(status));
  std::vector<std::string> keys = {"k0", "k1", "k2", "k3"};
  std::vector<std::string_view> batch(keys.begin(), keys.end());
  std::vector<std::string> values = {"k1", "k0"};  // keys viewing values too
  batch.push_back(values[0]);
  batch.push_back(values[1]);
  std::vector<bool> hits;
  const std::size_t n = cache.get_many(batch, values, hits);
  std::size_t count = 0;
  for (bool h : hits) count += h;
  EXPECT_EQ(n, count);
  EXPECT_EQ(n, 0u) << "a stripe whose sequence stays odd under a live writer answered hits";
  ::kill(holder, SIGCONT);
  EXPECT_EQ(wait_for(holder), 0);
  std::vector<std::string_view> again(keys.begin(), keys.end());
  again.push_back("k1");
  again.push_back("k0");
  EXPECT_EQ(cache.get_many(again, values, hits), 6u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(values[i], std::string(50, char('a' + i)));
}

// =====================================================================================
// Held: clear and invalidate in another process against aliased get_many
// =====================================================================================
TEST(GenerationsHeld, NoAliasedGetManyHitAfterAClearOrInvalidateReturnedInAnotherProcess) {
  ScopedName name("algen");
  Cache cache = Cache::open(small_config(name.name));
  SetOptions tagged;
  tagged.tags = {"model-x"};
  std::vector<std::string> names;
  for (int i = 0; i < 8; ++i) names.push_back("gen-key-" + std::to_string(i) + "-with-a-longer-name");
  for (int round = 0; round < 40; ++round) {
    for (int i = 0; i < 8; ++i) {
      ASSERT_EQ(cache.set("gp" + std::to_string(i), names[i]), Errc::ok);
      ASSERT_EQ(cache.set(names[i], std::string(300, 'g'), i % 2 ? tagged : SetOptions{}), Errc::ok);
    }
    std::vector<std::string> ptrs;
    for (int i = 0; i < 8; ++i) ptrs.push_back("gp" + std::to_string(i));
    std::vector<std::string_view> b1(ptrs.begin(), ptrs.end());
    std::vector<std::string> values;
    std::vector<bool> hits;
    ASSERT_EQ(cache.get_many(b1, values, hits), 8u);
    const bool clear_all = round % 2 == 0;
    ASSERT_EQ(wait_for(spawn([&] {
                Cache c = Cache::attach(name.name);
                if (clear_all) c.clear();
                else c.invalidate("model-x");
                return 0;
              })),
              0);
    std::vector<std::string_view> b2(values.begin(), values.end());
    cache.get_many(b2, values, hits);
    for (int i = 0; i < 8; ++i) {
      const bool should_go = clear_all || i % 2 == 1;
      if (should_go) EXPECT_FALSE(hits[i]) << "round " << round << " key " << i;
      else EXPECT_TRUE(hits[i]) << "round " << round << " key " << i;
    }
  }
}

// =====================================================================================
// Held: key_ok rejections, empty batches, huge batches of long keys
// =====================================================================================
TEST(BatchHeld, RejectedKeysEmptyAndHugeBatchesAnswerAsPerKeyGets) {
  ScopedName name("albatch");
  Config cfg = small_config(name.name, 16u << 20);
  Cache cache = Cache::open(cfg);
  const std::string at_limit(cache.max_key_bytes(), 'L');
  const std::string over(cache.max_key_bytes() + 1, 'O');
  ASSERT_EQ(cache.set(at_limit, "limit-value"), Errc::ok);
  ASSERT_EQ(cache.set("short", "s"), Errc::ok);
  std::vector<std::string> values = {at_limit, over, ""};
  std::vector<bool> hits;
  // Keys viewing values, one at the limit, one over it, one empty.
  std::vector<std::string_view> batch = {values[0], values[1], values[2], std::string_view(), "short"};
  EXPECT_EQ(cache.get_many(batch, values, hits), 2u);
  EXPECT_TRUE(hits[0]);
  EXPECT_EQ(values[0], "limit-value");
  EXPECT_FALSE(hits[1]);
  EXPECT_FALSE(hits[2]);
  EXPECT_FALSE(hits[3]);
  EXPECT_TRUE(hits[4]);
  EXPECT_EQ(values[4], "s");
  // Empty batch.
  std::vector<std::string_view> none;
  const std::size_t had = values.size();
  EXPECT_EQ(cache.get_many(none, values, hits), 0u);
  EXPECT_EQ(values.size(), had) << "values is never shrunk";
  EXPECT_TRUE(hits.empty());
  // A huge batch of long keys, every other present.
  std::vector<std::string> keys;
  for (int i = 0; i < 5000; ++i) {
    keys.push_back(std::string(900, char('a' + i % 26)) + std::to_string(i));
    if (i % 2 == 0) ASSERT_EQ(cache.set(keys.back(), std::to_string(i)), Errc::ok);
  }
  std::vector<std::string_view> big(keys.begin(), keys.end());
  const std::size_t n = cache.get_many(big, values, hits);
  std::size_t expect = 0;
  for (int i = 0; i < 5000; ++i) {
    const std::optional<std::string> one = cache.get(keys[i]);
    ASSERT_EQ(bool(hits[i]), one.has_value()) << i;
    if (one) {
      ++expect;
      ASSERT_EQ(values[i], *one);
    }
  }
  EXPECT_EQ(n, expect);
  EXPECT_GT(n, 0u);
}

}  // namespace
}  // namespace hostcache
