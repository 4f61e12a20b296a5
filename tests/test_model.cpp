// Model-based, adversarial tests (issue 10): what the cache returns is checked
// against a reference model of what must be there, over random operation
// sequences in several real processes, and in scenarios aimed at eviction
// order, index capacity and stripe repair.
//
// Reproduce a failure with the seed it prints: HOSTCACHE_MODEL_SEED=<seed>
// runs that seed besides the fixed one.
//
// Properties of the randomized model test (Model/RandomOps):
//  P1  a key whose last write is live (not erased, not expired, not hidden by
//      clear() or one of its tags) is found with exactly its value, as long
//      as live data stays far below what the arena holds (the model keeps it
//      under 40% of the whole arena): no live entry is ever evicted;
//  P2  nothing erased, expired, cleared or invalidated is ever returned;
//  P3  a returned value is exactly one that some set() wrote for that key.
// Each process owns a key range (exact presence, P1-P3) and all share a few
// keys (P2, P3: every value written is recorded in shared memory with its
// phase, tags and expiry). clear()/invalidate() of shared tags happen between
// phases, in one process chosen per phase, and are checked in all the others
// after the barrier; a process's private tags are invalidated mid-phase. The
// clock is a fake one in shared memory that any process advances at any
// moment, so expiry is deterministic up to the interleaving (a read is judged
// against the clock read before and after it).
#include <gtest/gtest.h>
#include <hostcache/cache.h>
#include <hostcache/inspect.h>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "adversarial_support.h"
#include "crash_point.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace testing;

constexpr std::uint64_t kFixedSeed = 0x5eed2024;

// Seeds to run: the fixed one, and HOSTCACHE_MODEL_SEED when set.
std::vector<std::uint64_t> seeds() {
  std::vector<std::uint64_t> s{kFixedSeed};
  if (const char* env = std::getenv("HOSTCACHE_MODEL_SEED"); env != nullptr && *env != 0) {
    s.push_back(std::strtoull(env, nullptr, 0));
  }
  return s;
}

std::uint64_t arena_total(const std::string& name, std::uint64_t* per_stripe = nullptr) {
  const inspect::Snapshot snap = inspect::read(name, inspect::Filter{.limit = 0});
  if (per_stripe) *per_stripe = snap.segment.arena_bytes;
  return snap.segment.arena_bytes * snap.segment.stripes;
}

// ============================================================================
// Model/RandomOps
// ============================================================================

constexpr int kMaxProcs = 8;
constexpr int kMaxRecs = 32768;          // shared-key writes recorded per process
constexpr int kMaxPhases = 256;
constexpr int kSharedKeys = 32;
constexpr std::size_t kSharedMaxValue = 200;
constexpr int kSharedTags = 4;
constexpr int kPrivateTags = 3;

enum Violation : int {
  kLiveMissing,      // P1: live entry not found (evicted or lost)
  kWrongValue,       // P3: found, but not the value last written (owned key)
  kStaleReturned,    // P2: erased / cleared / invalidated entry returned
  kExpiredReturned,  // P2: expired entry returned
  kNeverWritten,     // P3: a value no set() wrote for that key
  kEraseWrong,       // erase() of a live key said false, or of an absent one said true
  kSetFailed,        // set() refused a valid entry
  kStatsWrong,       // bytes_used > capacity
  kViolationKinds
};
const char* const kViolationNames[kViolationKinds] = {
    "P1 live entry missing (evicted/lost)", "P3 wrong value for owned key", "P2 erased/cleared/invalidated returned",
    "P2 expired entry returned",            "P3 value never written for key", "erase() result wrong",
    "set() refused a valid entry",          "stats bytes_used > capacity"};

enum EventKind : int { kNone = 0, kClear, kInvalidate, kAdvance };

struct Event {
  int kind;
  int tag;  // shared tag index for kInvalidate
  std::int64_t ms;
};

// One shared-key write, published before set() is called.
struct Rec {
  std::uint32_t key;
  std::uint32_t phase;
  std::uint32_t tagmask;     // bits of shared tags
  std::uint32_t size;
  std::int64_t expires_hi;   // atomic_ref; INT64_MAX until set() returned
};

struct ProcBoard {
  std::atomic<std::uint64_t> published;  // recs[0, published) are valid
  std::atomic<std::uint64_t> violations[kViolationKinds];
  std::atomic<std::uint64_t> ops, hits, misses, sets, erases, invalidates, advances, sweeps;
  std::atomic<std::uint64_t> max_live_bytes;
  ChildLog<12288> log;
  Rec recs[kMaxRecs];
};

struct Board {
  std::int64_t clock_ms;
  std::atomic<bool> abort;
  SpinBarrier barrier;
  Event events[kMaxPhases];  // events[b]: done at the barrier ending phase b
  ProcBoard procs[kMaxProcs];
};

struct ModelCase {
  const char* label;
  unsigned stripes;
  std::size_t capacity;
  int procs;
  int ops_per_proc;
  int phase_ops;
  int owned_keys;
};

std::ostream& operator<<(std::ostream& os, const ModelCase& c) { return os << c.label; }

// Tags that pairwise map to distinct generation slots on this segment (found
// through the public API: invalidating one must move no other's generation),
// so that a private invalidation never hides another process's entries.
std::vector<std::string> distinct_slot_tags(Cache& cache, std::vector<std::string> wanted) {
  auto gens = [&](const std::vector<std::string>& tags) {
    std::vector<std::uint64_t> out;
    for (std::size_t i = 0; i < tags.size(); i += kMaxTags) {
      std::vector<std::string_view> chunk;
      for (std::size_t j = i; j < std::min(tags.size(), i + kMaxTags); ++j) chunk.push_back(tags[j]);
      const GenerationStamp s = cache.generations(chunk);
      for (std::size_t j = 0; j < chunk.size(); ++j) out.push_back(s.tags[j]);
    }
    return out;
  };
  for (int attempt = 0; attempt < 100; ++attempt) {
    bool clash = false;
    for (std::size_t i = 0; i < wanted.size() && !clash; ++i) {
      const auto before = gens(wanted);
      cache.invalidate(wanted[i]);
      const auto after = gens(wanted);
      for (std::size_t j = 0; j < wanted.size(); ++j) {
        if (j != i && before[j] != after[j]) {
          wanted[j] += "~";  // another name, another slot (almost surely)
          clash = true;
          break;
        }
      }
    }
    if (!clash) return wanted;
  }
  throw std::runtime_error("could not find tags in distinct slots");
}

struct Owned {
  bool written = false;  // set at least once
  bool erased = false;   // erased since its last set (not in the index)
  bool dead = false;     // erased, cleared or invalidated since its last set
  std::string value;
  std::int64_t expires_lo = 0, expires_hi = 0;  // the set read the clock in between
  std::uint32_t shared_mask = 0, private_mask = 0;
  std::size_t bytes = 0;
};

struct Child {
  const ModelCase& c;
  Cache& cache;
  Board& board;
  ProcBoard& me;
  int p;
  std::uint64_t seed;
  std::uint64_t budget;  // live bytes this process may hold
  const std::vector<std::string>& shared_tags;
  const std::vector<std::string>& private_tags;  // this process's
  std::mt19937_64 rng;
  std::vector<Owned> owned;
  std::vector<std::string> owned_names, shared_names;
  std::uint64_t seq = 0;
  int phase = 0;
  std::string buf;

  Child(const ModelCase& c_, Cache& cache_, Board& board_, int p_, std::uint64_t seed_, std::uint64_t budget_,
        const std::vector<std::string>& st, const std::vector<std::string>& pt)
      : c(c_), cache(cache_), board(board_), me(board_.procs[p_]), p(p_), seed(seed_), budget(budget_),
        shared_tags(st), private_tags(pt), rng(seed_ * 0x9e3779b97f4a7c15ull + std::uint64_t(p_) + 1),
        owned(std::size_t(c_.owned_keys)) {
    for (int j = 0; j < c.owned_keys; ++j) owned_names.push_back("o" + std::to_string(p) + "-" + std::to_string(j));
    for (int j = 0; j < kSharedKeys; ++j) shared_names.push_back("s-" + std::to_string(j));
  }

  std::int64_t now() const { return std::atomic_ref<std::int64_t>(board.clock_ms).load(); }
  std::uint64_t rnd(std::uint64_t n) { return rng() % n; }

  void violate(Violation v, const char* fmt, const std::string& key, const std::string& detail = "") {
    me.violations[v].fetch_add(1);
    me.log.add("seed=%" PRIu64 " proc=%d phase=%d op=%" PRIu64 " %s key=%s %s %s", seed, p, phase, me.ops.load(),
               kViolationNames[v], key.c_str(), fmt, detail.c_str());
  }

  std::uint64_t live_bytes(std::int64_t t) const {
    std::uint64_t n = 0;
    for (const Owned& o : owned) {
      if (o.written && !o.dead && o.expires_hi > t) n += o.bytes;  // expires_hi: count it if it may be live
    }
    return n;
  }

  std::int64_t random_ttl() {
    const unsigned r = unsigned(rnd(100));
    if (r < 50) return 3'600'000;               // outlives the run
    if (r < 80) return 200 + std::int64_t(rnd(5000));
    return 5000 + std::int64_t(rnd(60'000));
  }

  std::size_t random_size() { return rnd(2) ? 1 + rnd(64) : 64 + rnd(840); }

  // ---- owned keys: exact model ---------------------------------------------

  void check_owned(int j, const char* when) {
    const std::string& key = owned_names[std::size_t(j)];
    const Owned& o = owned[std::size_t(j)];
    const std::int64_t t1 = now();
    const bool found = cache.get(key, buf);
    const std::int64_t t2 = now();
    found ? me.hits++ : me.misses++;
    if (!o.written || o.dead) {
      if (found) {
        violate(o.written ? kStaleReturned : kNeverWritten, when, key,
                std::string(o.erased ? "(erased)" : "(cleared/invalidated)") + " got " +
                    std::to_string(buf.size()) + " bytes" + (buf == o.value ? " = its last value" : ""));
      }
      return;
    }
    if (o.expires_hi <= t1) {
      if (found) {
        violate(kExpiredReturned, when, key,
                "expired at <=" + std::to_string(o.expires_hi) + " now " + std::to_string(t1));
      }
      return;
    }
    if (found && buf != o.value) {
      violate(kWrongValue, when, key,
              "got " + std::to_string(buf.size()) + " bytes, want " + std::to_string(o.value.size()) +
                  (verify_value(key, buf) ? " (an older value of this key)" : " (not a value of this key)"));
      return;
    }
    if (!found && o.expires_lo > t2) {
      const Stats s = cache.stats();
      violate(kLiveMissing, when, key,
              "live bytes of this proc " + std::to_string(live_bytes(t2)) + " (budget " + std::to_string(budget) +
                  "), stats: evictions=" + std::to_string(s.evictions) + " entries=" + std::to_string(s.entries) +
                  " bytes_used=" + std::to_string(s.bytes_used));
    }
  }

  void set_owned(int j) {
    const std::string& key = owned_names[std::size_t(j)];
    Owned& o = owned[std::size_t(j)];
    std::vector<std::string_view> tags;
    std::uint32_t smask = 0, pmask = 0;
    if (rnd(100) < 30) {
      const int t = int(rnd(kSharedTags));
      smask |= 1u << t;
      tags.push_back(shared_tags[std::size_t(t)]);
    }
    if (rnd(100) < 40) {
      const int t = int(rnd(kPrivateTags));
      pmask |= 1u << t;
      tags.push_back(private_tags[std::size_t(t)]);
    }
    const std::string value = make_value(key, (std::uint64_t(p) << 40) | ++seq, random_size());
    const std::size_t bytes = entry_bytes(key.size(), value.size(), tags);
    const std::int64_t t0 = now();
    const std::uint64_t live = live_bytes(t0);
    const bool was_live = o.written && !o.dead && o.expires_hi > t0;
    if (live - (was_live ? o.bytes : 0) + bytes > budget) {
      erase_owned(int(rnd(owned.size())));  // keep live data far below capacity
      return;
    }
    const std::int64_t ttl = random_ttl();
    SetOptions opt;
    opt.ttl = std::chrono::milliseconds(ttl);
    opt.tags = tags;
    const Errc e = cache.set(key, value, opt);
    const std::int64_t t1 = now();
    me.sets++;
    if (e != Errc::ok) {
      violate(kSetFailed, "set", key, to_string(e));
      return;
    }
    o.written = true;
    o.erased = o.dead = false;
    o.value = value;
    o.expires_lo = t0 + ttl;
    o.expires_hi = t1 + ttl;
    o.shared_mask = smask;
    o.private_mask = pmask;
    o.bytes = bytes;
    std::uint64_t m = me.max_live_bytes.load();
    const std::uint64_t l = live_bytes(t1);
    if (l > m) me.max_live_bytes.store(l);
  }

  void erase_owned(int j) {
    const std::string& key = owned_names[std::size_t(j)];
    Owned& o = owned[std::size_t(j)];
    const std::int64_t t1 = now();
    const bool removed = cache.erase(key);
    const std::int64_t t2 = now();
    (void)t1;
    me.erases++;
    if (o.written && !o.dead && o.expires_lo > t2 && !removed) {
      violate(kEraseWrong, "erase of a live key returned false", key);
    }
    if ((!o.written || o.erased) && removed) violate(kEraseWrong, "erase of an absent key returned true", key);
    if (o.written) o.erased = o.dead = true;
  }

  void invalidate_private() {
    const int t = int(rnd(kPrivateTags));
    cache.invalidate(private_tags[std::size_t(t)]);
    me.invalidates++;
    for (Owned& o : owned) {
      if (o.private_mask & (1u << t)) o.dead = true;
    }
  }

  // ---- shared keys: P2, P3 -------------------------------------------------

  void set_shared(int j) {
    const std::string& key = shared_names[std::size_t(j)];
    std::vector<std::string_view> tags;
    std::uint32_t mask = 0;
    for (int t = 0; t < kSharedTags; ++t) {
      if (rnd(100) < 30) {
        mask |= 1u << t;
        tags.push_back(shared_tags[std::size_t(t)]);
      }
    }
    const std::uint64_t s = me.published.load();
    if (s >= kMaxRecs) return;
    const std::size_t size = 1 + rnd(kSharedMaxValue);
    const std::string value = make_value(key, (std::uint64_t(p) << 40) | s, size);
    Rec& r = me.recs[s];
    r.key = std::uint32_t(j);
    r.phase = std::uint32_t(phase);
    r.tagmask = mask;
    r.size = std::uint32_t(size);
    std::atomic_ref<std::int64_t>(r.expires_hi).store(INT64_MAX);
    me.published.store(s + 1, std::memory_order_release);
    const std::int64_t ttl = random_ttl();
    SetOptions opt;
    opt.ttl = std::chrono::milliseconds(ttl);
    opt.tags = tags;
    const Errc e = cache.set(key, value, opt);
    me.sets++;
    if (e != Errc::ok) violate(kSetFailed, "set", key, to_string(e));
    std::atomic_ref<std::int64_t>(r.expires_hi).store(now() + ttl);
  }

  void check_shared(int j, const char* when) {
    const std::string& key = shared_names[std::size_t(j)];
    const std::int64_t t1 = now();
    if (!cache.get(key, buf)) {
      me.misses++;
      return;
    }
    me.hits++;
    if (!verify_value(key, buf)) {
      violate(kNeverWritten, when, key, "bytes that verify_value rejects (" + std::to_string(buf.size()) + " bytes)");
      return;
    }
    // "<key>|<version>|..."
    const std::uint64_t version = std::strtoull(buf.c_str() + key.size() + 1, nullptr, 10);
    const std::uint64_t w = version >> 40, s = version & ((std::uint64_t{1} << 40) - 1);
    if (w >= std::uint64_t(c.procs) || s >= board.procs[w].published.load(std::memory_order_acquire)) {
      violate(kNeverWritten, when, key, "version " + std::to_string(version) + " was never published");
      return;
    }
    const Rec& r = board.procs[w].recs[s];
    if (r.key != std::uint32_t(j) || buf != make_value(key, version, r.size)) {
      violate(kNeverWritten, when, key, "value of writer " + std::to_string(w) + " #" + std::to_string(s) +
                                            " does not match what it wrote");
      return;
    }
    const std::int64_t hi = std::atomic_ref<std::int64_t>(const_cast<std::int64_t&>(r.expires_hi)).load();
    if (hi <= t1) {
      violate(kExpiredReturned, when, key,
              "writer " + std::to_string(w) + " expired <=" + std::to_string(hi) + " now " + std::to_string(t1));
      return;
    }
    for (int b = int(r.phase); b < phase; ++b) {
      const Event& ev = board.events[b];
      if (ev.kind == kClear || (ev.kind == kInvalidate && (r.tagmask & (1u << ev.tag)))) {
        violate(kStaleReturned, when, key,
                "written in phase " + std::to_string(r.phase) + " by proc " + std::to_string(w) + ", " +
                    (ev.kind == kClear ? "clear()" : "invalidate(" + shared_tags[std::size_t(ev.tag)] + ")") +
                    " at the end of phase " + std::to_string(b));
        return;
      }
    }
  }

  // ---- phases --------------------------------------------------------------

  void one_op() {
    const unsigned r = unsigned(rnd(1000));
    me.ops++;
    if (r < 380) return check_owned(int(rnd(owned.size())), "get");
    if (r < 640) return set_owned(int(rnd(owned.size())));
    if (r < 690) return erase_owned(int(rnd(owned.size())));
    if (r < 840) return check_shared(int(rnd(kSharedKeys)), "get");
    if (r < 930) return set_shared(int(rnd(kSharedKeys)));
    if (r < 950) {
      cache.erase(shared_names[rnd(kSharedKeys)]);
      return;
    }
    if (r < 970) return invalidate_private();
    if (r < 990) {
      std::atomic_ref<std::int64_t>(board.clock_ms).fetch_add(1 + std::int64_t(rnd(300)));
      me.advances++;
      return;
    }
    const Stats s = cache.stats();
    if (s.bytes_used > s.capacity_bytes) {
      violate(kStatsWrong, "stats", "-", std::to_string(s.bytes_used) + " > " + std::to_string(s.capacity_bytes));
    }
  }

  // The designated process does the phase's global event; then everyone
  // applies it to its model and sweeps its keys.
  bool barrier_event() {
    if (!board.barrier.wait(std::uint32_t(c.procs), board.abort)) return false;
    if (phase % c.procs == p) {
      Event ev{kNone, 0, 0};
      const unsigned r = unsigned(rnd(100));
      if (r < 12) {
        ev.kind = kClear;
        cache.clear();
      } else if (r < 52) {
        ev.kind = kInvalidate;
        ev.tag = int(rnd(kSharedTags));
        cache.invalidate(shared_tags[std::size_t(ev.tag)]);
      } else if (r < 72) {
        ev.kind = kAdvance;
        ev.ms = 1000 + std::int64_t(rnd(20'000));
        std::atomic_ref<std::int64_t>(board.clock_ms).fetch_add(ev.ms);
      }
      board.events[phase] = ev;
    }
    if (!board.barrier.wait(std::uint32_t(c.procs), board.abort)) return false;
    const Event& ev = board.events[phase];
    for (Owned& o : owned) {
      if (ev.kind == kClear || (ev.kind == kInvalidate && (o.shared_mask & (1u << ev.tag)))) o.dead = true;
    }
    ++phase;
    me.sweeps++;
    for (int j = 0; j < c.owned_keys; ++j) check_owned(j, "sweep");
    for (int j = 0; j < kSharedKeys; ++j) check_shared(j, "sweep");
    return true;
  }

  int run() {
    const int phases = c.ops_per_proc / c.phase_ops;
    for (int ph = 0; ph < phases; ++ph) {
      for (int i = 0; i < c.phase_ops; ++i) one_op();
      if (!barrier_event()) return 3;
    }
    std::uint64_t total = 0;
    for (auto& v : me.violations) total += v.load();
    return total == 0 ? 0 : 1;
  }
};

class Model : public ::testing::TestWithParam<ModelCase> {};

TEST_P(Model, RandomOpsAgreeWithTheModel) {
  const ModelCase& c = GetParam();
  ASSERT_LE(c.procs, kMaxProcs);
  ASSERT_LE(c.ops_per_proc / c.phase_ops, kMaxPhases);
  for (const std::uint64_t seed : seeds()) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " (HOSTCACHE_MODEL_SEED=" + std::to_string(seed) + ")");
    ScopedName name("model");
    auto* board = static_cast<Board*>(shared_memory(sizeof(Board)));
    SharedClock clock(&board->clock_ms);
    Cache cache = Cache::open(small_config(name.name, c.capacity, c.stripes));
    std::uint64_t per_stripe = 0;
    const std::uint64_t arena = arena_total(name.name, &per_stripe);
    // Live data far below capacity: 40% of the whole arena, the shared keys
    // counted at their largest, the rest split between the processes.
    std::vector<std::string> tags;
    for (int t = 0; t < kSharedTags; ++t) tags.push_back("shared." + std::string(1, char('a' + t)));
    for (int q = 0; q < c.procs; ++q) {
      for (int t = 0; t < kPrivateTags; ++t) tags.push_back("p" + std::to_string(q) + ".t" + std::to_string(t));
    }
    tags = distinct_slot_tags(cache, tags);
    std::vector<std::string_view> all_shared(tags.begin(), tags.begin() + kSharedTags);
    const std::uint64_t shared_reserve = std::uint64_t(kSharedKeys) * entry_bytes(5, kSharedMaxValue + 16, all_shared);
    const std::uint64_t limit = arena * 40 / 100;
    ASSERT_GT(limit, shared_reserve);
    const std::uint64_t budget = (limit - shared_reserve) / std::uint64_t(c.procs);
    const std::vector<std::string> shared_tags(tags.begin(), tags.begin() + kSharedTags);

    std::vector<pid_t> pids;
    for (int p = 0; p < c.procs; ++p) {
      const std::vector<std::string> mine(tags.begin() + kSharedTags + p * kPrivateTags,
                                          tags.begin() + kSharedTags + (p + 1) * kPrivateTags);
      pids.push_back(spawn([&, p, mine] {
        Child child(c, cache, *board, p, seed, budget, shared_tags, mine);
        return child.run();
      }));
    }
    std::map<pid_t, int> status;
    while (status.size() < pids.size()) {
      int st = 0;
      const pid_t pid = ::waitpid(-1, &st, 0);
      if (pid < 0) break;
      if (std::find(pids.begin(), pids.end(), pid) == pids.end()) continue;
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      status[pid] = code;
      if (code != 0 && code != 1) board->abort.store(true);  // crashed: release the barrier
    }

    const Stats s = cache.stats();
    std::uint64_t totals[kViolationKinds] = {};
    std::uint64_t ops = 0, hits = 0, misses = 0, max_live = 0;
    std::string logs;
    for (int p = 0; p < c.procs; ++p) {
      const ProcBoard& pb = board->procs[p];
      for (int v = 0; v < kViolationKinds; ++v) totals[v] += pb.violations[v].load();
      ops += pb.ops.load();
      hits += pb.hits.load();
      misses += pb.misses.load();
      max_live += pb.max_live_bytes.load();
      if (pb.log.used) logs += pb.log.str();
    }
    std::printf(
        "[model %s seed=%" PRIu64 "] arena %" PRIu64 " B (%" PRIu64 "/stripe), live budget %" PRIu64
        " B/proc (sum of per-proc maxima %" PRIu64 " B = %.1f%% of arena)\n"
        "  ops %" PRIu64 " hits %" PRIu64 " misses %" PRIu64 "; stats: sets %" PRIu64 " evictions %" PRIu64
        " expired %" PRIu64 " stale %" PRIu64 " entries %" PRIu64 " bytes_used %" PRIu64 "\n",
        c.label, seed, arena, per_stripe, budget, max_live, 100.0 * double(max_live) / double(arena), ops, hits, misses,
        s.sets, s.evictions, s.expired, s.stale, s.entries, s.bytes_used);
    for (int v = 0; v < kViolationKinds; ++v) {
      if (totals[v]) std::printf("  VIOLATION %-40s x %" PRIu64 "\n", kViolationNames[v], totals[v]);
    }
    if (!logs.empty()) std::printf("  first violations:\n%s", logs.c_str());
    for (int p = 0; p < c.procs; ++p) {
      EXPECT_TRUE(status[pids[std::size_t(p)]] == 0 || status[pids[std::size_t(p)]] == 1)
          << "process " << p << " exited with status " << status[pids[std::size_t(p)]];
    }
    for (int v = 0; v < kViolationKinds; ++v) {
      EXPECT_EQ(totals[v], 0u) << kViolationNames[v] << " (case " << c.label << ", seed " << seed << ")";
    }
    // The cache's own count: live data stayed under 40% of the arena, so
    // nothing live should have been evicted to make room.
    EXPECT_EQ(s.evictions, 0u) << "live entries evicted with live data below 40% of the arena (case " << c.label
                               << ", seed " << seed << ")";
    EXPECT_EQ(s.resets, 0u);
    const auto problems = inspect::check(name.name);
    std::string text;
    for (const auto& pr : problems) text += pr.where + ": " + pr.what + "\n";
    EXPECT_TRUE(problems.empty()) << text;
    ::munmap(board, sizeof(Board));
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, Model,
                         ::testing::Values(ModelCase{"1x256KiB_3procs", 1, 256u << 10, 3, 20000, 500, 80},
                                           ModelCase{"2x1MiB_4procs", 2, 1u << 20, 4, 20000, 500, 500},
                                           ModelCase{"4x2MiB_4procs", 4, 2u << 20, 4, 20000, 500, 1200}),
                         [](const ::testing::TestParamInfo<ModelCase>& i) { return std::string(i.param.label); });

// ============================================================================
// Eviction order: stale and expired space goes before any live entry.
// ============================================================================

struct Filled {
  std::size_t missing = 0;
  std::string first_missing;
};

Filled missing_among(const Cache& cache, const std::vector<std::pair<std::string, std::string>>& kv) {
  Filled f;
  std::string v;
  for (const auto& [k, want] : kv) {
    if (!cache.get(k, v) || v != want) {
      if (f.missing++ == 0) f.first_missing = k;
    }
  }
  return f;
}

void print_stats(const char* what, const Cache& cache, std::uint64_t arena) {
  const Stats s = cache.stats();
  std::printf("[%s] arena %" PRIu64 " B; sets %" PRIu64 " evictions %" PRIu64 " expired %" PRIu64 " stale %" PRIu64
              " entries %" PRIu64 " bytes_used %" PRIu64 "\n",
              what, arena, s.sets, s.evictions, s.expired, s.stale, s.entries, s.bytes_used);
}

// 1,000 live, 1,500 then made stale (by tag or by TTL), 1,000 more live: the
// arena must reclaim the stale ones, never a live one.
void stale_first(bool by_ttl) {
  ScopedName name(by_ttl ? "evttl" : "evtag");
  FakeClock clock;
  Cache cache = Cache::open(small_config(name.name, 2u << 20, 1));
  const std::uint64_t arena = arena_total(name.name);
  std::vector<std::pair<std::string, std::string>> live;
  auto put_live = [&](const std::string& prefix, int n) {
    for (int i = 0; i < n; ++i) {
      const std::string k = prefix + std::to_string(i);
      live.emplace_back(k, make_value(k, 1, 480));
      ASSERT_EQ(cache.set(k, live.back().second), Errc::ok);
    }
  };
  put_live("live-a", 1000);
  for (int i = 0; i < 1500; ++i) {
    const std::string k = "doomed" + std::to_string(i);
    SetOptions o;
    if (by_ttl) {
      o.ttl = std::chrono::milliseconds(1000);
    } else {
      o.tags = {"t"};
    }
    ASSERT_EQ(cache.set(k, make_value(k, 1, 480), o), Errc::ok);
  }
  const std::uint64_t evictions_before = cache.stats().evictions;
  EXPECT_EQ(evictions_before, 0u) << "2,500 entries of ~600 B (75% of the arena) already evicted";
  if (by_ttl) {
    clock.advance(2000);
  } else {
    cache.invalidate("t");
  }
  put_live("live-b", 1000);
  print_stats(by_ttl ? "stale-first ttl" : "stale-first tag", cache, arena);
  const Filled f = missing_among(cache, live);
  EXPECT_EQ(f.missing, 0u) << f.missing << " of 2,000 live entries (~" << 2000 * entry_bytes(7, 480) * 100 / arena
                           << "% of the arena) lost, first " << f.first_missing << "; stale ones should have gone first";
  EXPECT_EQ(cache.stats().evictions, 0u);
  for (int i = 0; i < 1500; ++i) EXPECT_FALSE(cache.get("doomed" + std::to_string(i))) << i;
}

TEST(ModelEviction, InvalidatedEntriesAreReclaimedBeforeLiveOnes) { stale_first(false); }
TEST(ModelEviction, ExpiredEntriesAreReclaimedBeforeLiveOnes) { stale_first(true); }

// 10,000 small entries in a 1-stripe 2 MiB segment: all must stay. The value
// is sized so that 10,000 entries fill 67% of the arena (about 128 B each,
// header included: a 6-byte key, an 18-byte value and a 104-byte header), or,
// when the entry header is bigger than that leaves room for, an 8-byte value
// (then the fill is printed and is higher: it still fits).
TEST(ModelEviction, TenThousandSmallEntriesAtTwoThirdsOfCapacityAllStay) {
  ScopedName name("small");
  Cache cache = Cache::open(small_config(name.name, 2u << 20, 1));
  const std::uint64_t arena = arena_total(name.name);
  const std::size_t target = (std::size_t(arena * 67 / 100 / 10000) + 4) & ~std::size_t{7};  // nearest multiple of 8
  const std::size_t key_len = 6;
  const std::size_t value_len =
      target >= entry_bytes(key_len, 8) ? target - layout::kHeaderBytes - key_len : 8;
  const std::size_t size = entry_bytes(key_len, value_len);
  ASSERT_LT(10000 * size, arena) << "10,000 entries of " << size << " B do not fit the arena";
  std::vector<std::pair<std::string, std::string>> kv;
  char kbuf[16];
  for (int i = 0; i < 10000; ++i) {
    std::snprintf(kbuf, sizeof kbuf, "k%05d", i);
    std::string v = std::string(kbuf) + ":";
    while (v.size() < value_len) v.push_back(char('a' + (i + v.size()) % 26));
    kv.emplace_back(kbuf, v);
    ASSERT_EQ(cache.set(kv.back().first, kv.back().second), Errc::ok);
  }
  std::printf("[10k small] entries of %zu B (value %zu B): %.1f%% of the arena\n", size, value_len,
              100.0 * 10000.0 * double(size) / double(arena));
  print_stats("10k small", cache, arena);
  const Filled f = missing_among(cache, kv);
  EXPECT_EQ(f.missing, 0u) << f.missing << " of 10,000 entries of " << size << " B (" << 10000 * size * 100 / arena
                           << "% of the arena) evicted, first " << f.first_missing;
  EXPECT_EQ(cache.stats().evictions, 0u);
  EXPECT_EQ(cache.stats().entries, 10000u);
}

// ============================================================================
// Repair: a process dies holding a full stripe's lock with its sequence odd,
// having written nothing: every entry must survive the repair.
// ============================================================================

class ModelRepair : public ::testing::TestWithParam<int> {};

TEST_P(ModelRepair, EveryIntactEntrySurvivesRepairOfAFullStripe) {
  if (!crash::kEnabled) GTEST_SKIP() << "built without HOSTCACHE_CRASH_POINTS";
  const int n = GetParam();
  ScopedName name("repair");
  Cache cache = Cache::open(small_config(name.name, 2u << 20, 1));
  const std::uint64_t arena = arena_total(name.name);
  std::vector<std::pair<std::string, std::string>> kv;
  char kbuf[16];
  for (int i = 0; i < n; ++i) {
    std::snprintf(kbuf, sizeof kbuf, "r%05d", i);
    std::string v = std::string(kbuf) + "=";
    while (v.size() < 24) v.push_back(char('A' + (i + v.size()) % 26));
    kv.emplace_back(kbuf, v);
    ASSERT_EQ(cache.set(kv.back().first, kv.back().second), Errc::ok);
  }
  // What is there before the crash (the fill itself may already have lost
  // some to a too-small index: reported, but repair is judged on the rest).
  std::vector<std::pair<std::string, std::string>> present;
  std::string v;
  for (const auto& e : kv) {
    if (cache.get(e.first, v) && v == e.second) present.push_back(e);
  }
  const Stats before = cache.stats();
  std::printf("[repair %d] arena %" PRIu64 " B, %d entries of %zu B (%.0f%%): %zu present before the crash, "
              "evictions %" PRIu64 "\n",
              n, arena, n, entry_bytes(6, 24), 100.0 * double(n) * double(entry_bytes(6, 24)) / double(arena),
              present.size(), before.evictions);
  EXPECT_EQ(present.size(), std::size_t(n)) << "the fill lost entries before any crash (index too small?)";

  // The child takes the stripe's lock, makes its sequence odd and dies
  // before writing anything (crash point "set.begin").
  const int status = wait_for(spawn([&] {
    crash::arm("set.begin");
    cache.set("victim", "never written");
    return 0;
  }));
  ASSERT_EQ(status, crash::kExitCode) << "crash point set.begin not reached";

  std::size_t lost = 0;
  std::string first_lost;
  for (const auto& [k, want] : present) {
    if (!cache.get(k, v) || v != want) {
      if (lost++ == 0) first_lost = k;
    }
  }
  const Stats after = cache.stats();
  std::printf("[repair %d] after repair: lost %zu of %zu, recoveries %" PRIu64 " resets %" PRIu64 " entries %" PRIu64
              "\n",
              n, lost, present.size(), after.recoveries, after.resets, after.entries);
  EXPECT_EQ(lost, 0u) << lost << " of " << present.size() << " intact entries dropped by the repair, first "
                      << first_lost;
  EXPECT_GE(after.recoveries, 1u);
  EXPECT_EQ(after.resets, 0u);
  EXPECT_FALSE(cache.get("victim"));
  const auto problems = inspect::check(name.name);
  std::string text;
  for (const auto& pr : problems) text += pr.where + ": " + pr.what + "\n";
  EXPECT_TRUE(problems.empty()) << text;
}

INSTANTIATE_TEST_SUITE_P(Entries, ModelRepair, ::testing::Values(7000, 8000, 9000));

}  // namespace
}  // namespace hostcache
