// test_attack_fork7.cpp — adversarial review of dff16da (a get that fell
// back to the lock checks locked.forked() after its copy, and a child forked
// inside it reads again as itself), and of every other answer a locked
// section gives from what it READ before begin(): incr's not_found /
// not_integer / overflow, touch's false, add's "exists", erase's "not found".
// Real processes only: fork, forks from signal handlers (landed with x86-64
// debug-register watchpoints, tests/fork_probe.h) and from get_into sinks.
//
// Each test asserts a model property: an answer no atomic execution of the
// call could give (the key was present in every state the stripe went
// through; no stored value plus delta overflows), bytes no set wrote, exact
// statistics, and that nobody waits past a generous bound. Processes
// synchronise through flags in MAP_SHARED memory, never a sleep that orders.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <xxhash.h>

#include <hostcache/inspect.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "fork_probe.h"
#include "index.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

std::uint64_t hash_of(const std::string& k) { return XXH3_64bits(k.data(), k.size()); }

// The bucket (in the key's two groups) that names the key's live entry.
layout::Bucket* bucket_of(const Cache& cache, const std::string& key) {
  const std::uint64_t off = entry_offset(cache, 0, key);
  if (off == ~std::uint64_t{0}) return nullptr;
  const arena::StripeView v = view_of(cache, 0);
  return index::find_by_offset(v.buckets, v.groups, hash_of(key), off);
}

// =====================================================================================
// 1. A child forked inside a locked incr / touch / add answers from reads it
//    made WITHOUT the lock
// =====================================================================================
//
// dff16da made stripe::get's locked fallback check locked.forked() after its
// copy. The other locked sections (src/stripe.cpp incr, touch, set's
// Mode::add, erase) read under the lock and decide before begin(); begin()
// refuses in a child (busy), but the answers decided BEFORE it are returned
// as they are: incr's not_found / not_integer / overflow, touch's false,
// add's already_exists, erase's false. A child forked (from a signal
// handler) inside one, at its find(), resumes after its parent has finished
// and unlocked, while another process W is halfway through a write of the
// same key; its find() and copy run with no lock and no sequence check.
//
//  - incr / touch, W stopped right after its kill of the key's old entry
//    (an overwrite with another value length: kill, then append): the child
//    finds no entry and answers not_found / false, though the key had an
//    entry in every state (its value before, the parent's, W's after). README
//    ("Reliability"): a child forked while its thread held a stripe lock "is
//    refused as busy".
//  - incr, W stopped halfway through an in-place rewrite (arena::rewrite's
//    two halves): the child parses digits half W's, half its parent's, and
//    answers overflow, though no value ever stored plus delta overflows
//    (cache.h: "overflow (the sum does not fit int64_t)").
//  - add (passing probe): its "exists" is always some moment's truth (the
//    parent either found the key or stored it), and a miss reaches begin(),
//    which refuses: already_exists or busy, never ok.
//
// (erase's false is left out: the parent's erase makes the key absent at a
// moment inside the child's call, so false is always linearizable.)

struct Scene {
  std::atomic<int> g_pid, g_in, go, g_timed_out, g_done, g_rc;
  std::atomic<int> l_done, l_rc, quit;
};
Scene* g_sc = nullptr;

void scene_forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    g_sc->g_in.store(1);
    if (!await([] { return g_sc->go.load() != 0; }, 20000)) g_sc->g_timed_out.store(1);
    errno = saved;
    return;
  }
  g_sc->g_pid.store(c);
  errno = saved;
}

enum class Op { incr_missing, incr_torn, touch_missing, add_missing };
enum : int { kRcFalse = 1000, kRcTrue = 1001, kRcBusyThrown = 1002 };

constexpr std::int64_t kTornDelta = 2'000'000'000'000'000'000;
// W's value: exactly INT64_MAX - kTornDelta (no overflow when incremented).
const std::string kTornNew = "7223372036854775807";
// The parent's result, -1 + kTornDelta: digits whose tail is all nines, so
// any mix "kTornNew's head + this tail" exceeds kTornNew.
const std::string kTornOld = "1999999999999999999";

int run_op(Cache& cache, Op op, const std::string& key) {
  try {
    std::int64_t r = 0;
    switch (op) {
      case Op::incr_missing:
        return int(cache.incr(key, 1, r));
      case Op::incr_torn:
        return int(cache.incr(key, kTornDelta, r));
      case Op::touch_missing:
        return cache.touch(key, 1h) ? kRcTrue : kRcFalse;
      case Op::add_missing:
        return int(cache.add(key, "added"));
    }
  } catch (const Error& e) {
    return e.code() == Errc::busy ? kRcBusyThrown : 999;
  }
  return 998;
}

std::string rc_name(int rc) {
  if (rc == kRcFalse) return "false";
  if (rc == kRcTrue) return "true";
  if (rc == kRcBusyThrown) return "Error(busy)";
  if (rc >= 0 && rc < 100) return to_string(Errc(rc));
  return std::to_string(rc);
}

void run_scene(Op op) {
  ScopedName name("af7-op");
  Config cfg = small_config(name.name, 1u << 20, 1);
  cfg.lock_timeout = 300ms;
  Cache cache = Cache::open(cfg);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::string key = "counter";
  // Neighbours in the stripe (the key is not alone in its groups).
  for (int i = 0; i < 6; ++i) ASSERT_EQ(cache.set("n" + std::to_string(i), std::string(40, 'a' + i)), Errc::ok);
  switch (op) {
    case Op::incr_missing:
    case Op::touch_missing:
      ASSERT_EQ(cache.set(key, "5"), Errc::ok);
      break;
    case Op::incr_torn:
      ASSERT_EQ(cache.set(key, "-1"), Errc::ok);
      break;
    case Op::add_missing:
      break;  // absent: the parent's add stores it
  }
  // Where the parent's find first reads: the key's bucket (its entry's, or,
  // for an absent key, the first bucket of its first group).
  const arena::StripeView v = view_of(cache, 0);
  const void* watched = op == Op::add_missing
                            ? static_cast<const void*>(index::group(v.buckets, index::probe(hash_of(key), v.groups).g1))
                            : static_cast<const void*>(bucket_of(cache, key));
  ASSERT_NE(watched, nullptr);

  auto* sc = static_cast<Scene*>(shared_memory(sizeof(Scene)));
  new (sc) Scene{};
  g_sc = sc;
  const pid_t l = ::fork();
  if (l == 0) {
    const pid_t me = ::getpid();
    (void)stripe_lock::self_word();
    become_forking_tracee(scene_forking_handler);
    const int rc = run_op(cache, op, key);
    if (::getpid() != me) {  // G, the child forked inside L's section
      sc->g_rc.store(rc);
      sc->g_done.store(1);
      ::_exit(0);
    }
    sc->l_rc.store(rc);
    sc->l_done.store(1);
    await([&] { return sc->quit.load() != 0; }, 30000);
    if (sc->g_pid.load() != 0) ::waitpid(sc->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(l, &status, 0), l);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 97) GTEST_SKIP() << "ptrace unavailable";
  ASSERT_TRUE(WIFSTOPPED(status));
  // (a set's unlocked prefetch_candidates reads the groups first: on to the locked find)
  bool landed = false;
  for (int i = 0; i < 8 && !landed; ++i) {
    if (!run_to_access(l, watched, kWatchAccesses)) {
      ::kill(l, SIGKILL);
      wait_for(l);
      GTEST_SKIP() << "no x86-64 debug-register watchpoint available";
    }
    landed = lock_word(*hdr) != 0 && (words::load(hdr->seq) & 1) == 0;
  }
  if (!landed) {
    ::kill(l, SIGKILL);
    wait_for(l);
    FAIL() << "bad test: L's first read of the key's bucket was not under the lock";
  }
  ASSERT_EQ(::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return sc->g_pid.load() != 0 && sc->g_in.load() != 0; })) << "the handler never forked";
  ASSERT_TRUE(await([&] { return sc->l_done.load() != 0; }, 10000)) << "L's call never returned";
  switch (op) {
    case Op::incr_missing:
    case Op::incr_torn:
    case Op::add_missing:
      EXPECT_EQ(sc->l_rc.load(), int(Errc::ok)) << "L's own call: " << rc_name(sc->l_rc.load());
      break;
    case Op::touch_missing:
      EXPECT_EQ(sc->l_rc.load(), kRcTrue);
      break;
  }
  ASSERT_EQ(lock_word(*hdr), 0u) << "L's call left the stripe locked";
  if (op == Op::incr_torn) ASSERT_EQ(cache.get(key).value_or(""), kTornOld);

  // W: a write of the key, stopped halfway (sequence odd, lock held).
  const std::uint64_t off = entry_offset(cache, 0, key);
  ASSERT_NE(off, ~std::uint64_t{0});
  const void* w_stop = nullptr;
  std::uint64_t digits_at = 0;
  if (op == Op::incr_torn) {
    // In place: stopped right after its first store into the digits (the
    // store that writes the first digit's word; the last digits, 16 and more
    // bytes on, come in a later store).
    layout::EntryHeader h{};
    ASSERT_TRUE(arena::read_header(v, off, h));
    ASSERT_EQ(h.value_len, 19u);
    digits_at = arena::value_off(off, h);
    w_stop = v.arena + (digits_at & ~std::uint64_t{7});
  } else {
    w_stop = bucket_of(cache, key);  // kill's first store: the old entry's bucket cleared
  }
  ASSERT_NE(w_stop, nullptr);
  const std::string w_value = op == Op::incr_torn ? kTornNew : std::string("77");
  const pid_t w = ::fork();
  if (w == 0) {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(97);
    ::raise(SIGSTOP);
    ::_exit(cache.set(key, w_value) == Errc::ok ? 0 : 1);
  }
  ASSERT_EQ(::waitpid(w, &status, 0), w);
  ASSERT_TRUE(WIFSTOPPED(status));
  bool w_ok = run_to_access(w, w_stop, kWatchWrites);
  EXPECT_TRUE(w_ok) << "bad test: W never wrote where it was to stop";
  EXPECT_EQ(words::load(hdr->seq) & 1, 1u) << "bad test: W stopped outside its write";
  int j = 0;  // how many of the digits are W's
  if (op == Op::incr_torn) {
    EXPECT_EQ(entry_offset(cache, 0, key), off) << "bad test: W did not rewrite in place";
    std::string now(19, '\0');
    words::copy_out(v.arena, digits_at, 19, now.data());
    while (j < 19 && now[j] == kTornNew[j]) ++j;
    EXPECT_TRUE(j >= 1 && j <= 18 && now.compare(j, 19 - j, kTornOld, j, 19 - j) == 0)
        << "bad test: the digits W left are not W's head and L's tail: " << now;
  }
  if (::testing::Test::HasFailure()) {
    ::kill(w, SIGKILL);
    finishes_within(w, 5000);
    sc->go.store(1);
    sc->quit.store(1);
    finishes_within(l, 5000);
    return;
  }

  sc->go.store(1);
  EXPECT_TRUE(await([&] { return sc->g_done.load() != 0; }, 10000)) << "G's copy of L's call never returned";
  EXPECT_EQ(sc->g_timed_out.load(), 0);
  const int g = sc->g_rc.load();
  switch (op) {
    case Op::incr_missing:
      EXPECT_TRUE(g == int(Errc::ok) || g == int(Errc::busy))
          << "a child forked inside a locked incr (src/stripe.cpp incr: find() and its not_found answer before "
             "begin(), no locked.forked() check) found no entry while W overwrote the key, and answered "
          << rc_name(g) << ": the key had an entry in every state (\"5\", L's \"6\", W's \"77\"); README: such a "
                           "child \"is refused as busy\"";
      break;
    case Op::incr_torn:
      EXPECT_TRUE(g == int(Errc::ok) || g == int(Errc::busy))
          << "a child forked inside a locked incr parsed the value while W rewrote it in place (" << j
          << " of its digits W's, the rest L's) and answered " << rc_name(g)
          << ": no value ever stored (" << kTornOld << ", " << kTornNew << ") plus " << kTornDelta
          << " overflows (cache.h: overflow means the sum does not fit int64_t; invariant 1: an answer from bytes "
             "no set wrote)";
      break;
    case Op::touch_missing:
      EXPECT_TRUE(g == kRcTrue || g == kRcBusyThrown)
          << "a child forked inside a locked touch (src/stripe.cpp touch: find() and its false before begin()) "
             "answered " << rc_name(g) << " while W overwrote the key: it had a valid entry in every state";
      break;
    case Op::add_missing:
      EXPECT_TRUE(g == int(Errc::already_exists) || g == int(Errc::busy)) << "child's add: " << rc_name(g);
      break;
  }
  ASSERT_EQ(::ptrace(PTRACE_DETACH, w, nullptr, nullptr), 0);
  EXPECT_EQ(finishes_within(w, 10000), 0);
  sc->quit.store(1);
  EXPECT_EQ(finishes_within(l, 10000), 0);
  EXPECT_EQ(cache.get(key).value_or(""), w_value);
  EXPECT_EQ(lock_word(*hdr), 0u);
  const auto violations = inspect::check(name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
}

TEST(AttackFork7Locked, AChildForkedInsideALockedIncrNeverAnswersNotFoundForAKeyPresentThroughout) {
  run_scene(Op::incr_missing);
}
TEST(AttackFork7Locked, AChildForkedInsideALockedIncrNeverAnswersOverflowFromTornDigits) {
  run_scene(Op::incr_torn);
}
TEST(AttackFork7Locked, AChildForkedInsideALockedTouchNeverAnswersFalseForAKeyValidThroughout) {
  run_scene(Op::touch_missing);
}
// (passing probe) add: already_exists (true at some moment) or busy, never ok.
TEST(AttackFork7Locked, AChildForkedInsideALockedAddAnswersExistsOrBusy) { run_scene(Op::add_missing); }

// =====================================================================================
// 2. (passing probes) dff16da's re-read: a chain of children forked by a
//    sink, each inside its parent's section; a sink that scribbles the
//    stripe's lock word and sequence in one process
// =====================================================================================

// The shared setup of fork6: a dead holder left the stripe locked with its
// sequence odd, so the first get falls back to the lock (and repairs).
struct DeadHolder {
  explicit DeadHolder(const char* stem) : name(stem) {}
  ScopedName name;
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  Segment& seg = detail::Access::segment(cache);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  std::string key = "chain";
  std::string value = make_value("chain", 1, 3000);
  void prepare() {
    ASSERT_EQ(cache.set(key, value), Errc::ok);
    ASSERT_EQ(wait_for(spawn([&] {
                auto* l = new stripe::Locked(seg, 0);  // dies holding it, mid-write
                l->begin();
                return 0;
              })),
              0);
    ASSERT_NE(lock_word(*hdr), 0u);
    ASSERT_EQ(words::load(hdr->seq) & 1, 1u);
  }
};

constexpr int kChainDepth = 8;
struct Chain {
  std::atomic<int> procs, done, exact, under_lock, max_depth;
};
Chain* g_chain = nullptr;
layout::StripeHeader* g_chain_hdr = nullptr;
int g_depth = 0;
pid_t g_forked_in = 0;
pid_t g_child = 0;
std::string g_chain_buf;

// Forks on its first call in each process (at most kChainDepth deep), from
// wherever the get calls it: L's under the lock (its child then reads again,
// as dff16da makes it, and calls the sink again, which forks again),
// descendants' on the optimistic path inside their parent's section.
char* chain_sink(void*, std::size_t n) {
  if (g_forked_in != ::getpid() && g_depth < kChainDepth) {
    g_forked_in = ::getpid();
    const bool locked = lock_word(*g_chain_hdr) != 0;
    const pid_t c = ::fork();
    if (c == 0) {
      ++g_depth;
      g_child = 0;
      g_chain->procs.fetch_add(1);
      if (locked) g_chain->under_lock.fetch_add(1);
      int m = g_chain->max_depth.load();
      while (m < g_depth && !g_chain->max_depth.compare_exchange_weak(m, g_depth)) {
      }
    } else if (c > 0) {
      g_child = c;
    }
  }
  g_chain_buf.resize(n);
  return g_chain_buf.data();
}

// (passing probe) A chain of children, each forked by the sink inside its
// parent's get_into (the first inside L's locked, repairing get, whose child
// reads again and forks its own): every process serves exactly the value,
// returns, counts exactly one hit, and the stripe is left unlocked; the
// recursion of dff16da is one level per fork.
TEST(AttackFork7Chain, EveryChildOfAForkingSinkServesTheExactValueAndCountsOneHit) {
  DeadHolder s("af7-chain");
  s.prepare();
  if (::testing::Test::HasFatalFailure()) return;
  auto* ch = static_cast<Chain*>(shared_memory(sizeof(Chain)));
  new (ch) Chain{};
  g_chain = ch;
  g_chain_hdr = s.hdr;
  const Stats before = s.cache.stats();
  ch->procs.store(1);
  const pid_t l = ::fork();
  if (l == 0) {
    g_depth = 0;
    const bool hit = s.cache.get_into(s.key, &chain_sink, nullptr);
    if (hit && g_chain_buf == s.value) ch->exact.fetch_add(1);
    ch->done.fetch_add(1);
    if (g_child != 0) {
      int st = 0;
      ::waitpid(g_child, &st, 0);
    }
    ::_exit(0);
  }
  EXPECT_EQ(finishes_within(l, 20000), 0) << "a process of the chain hung";
  EXPECT_TRUE(await([&] { return ch->done.load() == ch->procs.load(); }, 10000));
  EXPECT_EQ(ch->done.load(), ch->procs.load()) << "a process of the chain never returned";
  EXPECT_EQ(ch->exact.load(), ch->procs.load()) << "a process of the chain did not serve exactly the value";
  EXPECT_GE(ch->under_lock.load(), 1) << "bad test: no fork under L's lock";
  EXPECT_GE(ch->procs.load(), 3) << "bad test: the re-reading child never called the sink again";
  EXPECT_EQ(lock_word(*s.hdr), 0u) << "a copy of a section left the stripe locked";
  EXPECT_EQ(words::load(s.hdr->seq) & 1, 0u);
  const Stats after = s.cache.stats();
  EXPECT_EQ(after.hits - before.hits, std::uint64_t(ch->procs.load())) << "one hit per process, no more, no less";
  EXPECT_EQ(after.misses - before.misses, 0u);
  EXPECT_EQ(s.cache.get(s.key).value_or(""), s.value);
  const auto violations = inspect::check(s.name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
}

// One process, no fork: the sink scribbles the stripe's lock word (another
// "owner") and sequence (odd) under the locked get, as a writer of the
// segment can. locked.forked() reads this process's MADV_WIPEONFORK page,
// not the segment, so the get cannot be driven into re-reading: it returns
// once, within a bound, with the value (which nobody changed); the next
// locker judges the scribbled word (its owner, our own tid with another
// birth, is dead) and repairs.
layout::StripeHeader* g_scrib_hdr = nullptr;
int g_scrib_calls = 0;
std::string g_scrib_buf;
char* scribbling_sink(void*, std::size_t n) {
  ++g_scrib_calls;
  if (lock_word(*g_scrib_hdr) != 0) {
    words::store(g_scrib_hdr->lock, words::load(g_scrib_hdr->lock) ^ (std::uint64_t{0x5a5a} << 40));
    words::store(g_scrib_hdr->seq, words::load(g_scrib_hdr->seq) | 1);
  }
  g_scrib_buf.resize(n);
  return g_scrib_buf.data();
}

TEST(AttackFork7Chain, ASinkScribblingTheLockAndSequenceCannotMakeOneProcessReadAgain) {
  DeadHolder s("af7-scrib");
  s.prepare();
  if (::testing::Test::HasFatalFailure()) return;
  auto* res = static_cast<std::atomic<int>*>(shared_memory(sizeof(std::atomic<int>) * 4));
  const pid_t p = ::fork();
  if (p == 0) {
    g_scrib_hdr = s.hdr;
    const bool hit = s.cache.get_into(s.key, &scribbling_sink, nullptr);
    res[0].store(hit ? 1 : 2);
    res[1].store(g_scrib_buf == s.value ? 1 : 2);
    res[2].store(g_scrib_calls);
    ::_exit(0);
  }
  EXPECT_EQ(finishes_within(p, 20000), 0) << "a scribbling sink drove the get into an endless loop";
  EXPECT_EQ(res[0].load(), 1);
  EXPECT_EQ(res[1].load(), 1) << "the value served is not the one stored";
  EXPECT_GE(res[2].load(), 1);
  EXPECT_LE(res[2].load(), 5) << "the sink was called more than once per try (4 optimistic + 1 locked)";
  // The next locker repairs the scribbled stripe and keeps the entry.
  EXPECT_EQ(s.cache.set("after", "x"), Errc::ok);
  EXPECT_EQ(s.cache.get(s.key).value_or(""), s.value);
  EXPECT_EQ(lock_word(*s.hdr), 0u);
}

}  // namespace
}  // namespace hostcache
