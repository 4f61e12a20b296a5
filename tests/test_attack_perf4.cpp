// Adversarial review of c8a32fb (get_many prefetches a large value's rest one
// key ahead of its copy, from an Ahead {entry, room} captured before the copy
// loop: stripe::prefetch_entry / prefetch_rest) and of 2111bd0 (Locked checks
// its fork epoch by loading *Identity::fork_word inline: the MADV_WIPEONFORK
// page's generation word). Its fork findings were fixed after it: a child
// forked as its parent took a lock records and repairs nothing, unlock
// checks the epoch before releasing, and no lock is taken without the page.
//
// Real processes only. Kills are SIGKILLs (at a random point of a writer's
// progress, or, under ptrace single-step, at an exact store); forks inside a
// section are injected by the tracer at an exact instruction (ptrace
// delivers a signal whose handler forks), so a child lands deterministically
// where a signal could land: right after a takeover's compare-and-swap, in
// the middle of unlock. A failing test names the DESIGN.md invariant (or the
// README "Reliability" promise) it breaks.
#include <gtest/gtest.h>

#include <signal.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/user.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <hostcache/inspect.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "index.h"
#include "log.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"
#include "fork_probe.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace std::chrono_literals;

// The version make_value() embedded in a value ("key|version|..."); false if
// it does not parse.
bool version_of(const std::string& key, const std::string& value, std::uint64_t& version) {
  if (value.size() < key.size() + 2 || value.compare(0, key.size() + 1, key + "|") != 0) return false;
  const std::size_t bar = value.find('|', key.size() + 1);
  if (bar == std::string::npos) return false;
  version = std::strtoull(value.c_str() + key.size() + 1, nullptr, 10);
  return true;
}

// =====================================================================================
// 1. get_many's Ahead, stale by the time it is used: honest writers, SIGKILLs, clears
// =====================================================================================
//
// Invariants 1 and 2 (and 8: no fault). get_many captures, for every key,
// the address of its first candidate entry before the copy loop, and reads
// the first word there (as a size) one key ahead of each copy. Meanwhile
// writers in other processes overwrite the keys with values of every size
// (1 B to 63 KiB: below, inside and past prefetch_rest's [512, 64 KiB)
// range, so the word it reads is often the middle of another entry's
// payload), erase them, wrap the arena and compact it; writers are SIGKILLed
// at random points of their progress (so get_many's own lookups take over
// and repair stripes in the middle of a batch, after the Ahead was
// captured), and the whole cache is cleared between pauses.
//
// The model: a value embeds the clear epoch its writer read before its set
// started (writers are paused, none in flight, around each clear; a killed
// writer's entry carries the generation it read before it died, before the
// clear). A reader that read epoch e before its get_many must never be
// served a value of an epoch < e (invariant 2), and every hit must be
// exactly a value make_value() wrote for that key (invariant 1).
struct ManyShared {
  std::atomic<int> stop;
  std::atomic<int> pause;             // 1: writers ack and wait
  std::atomic<std::uint64_t> epoch;   // clears completed
  std::atomic<std::uint64_t> progress[2];
  std::atomic<int> acked[2];
  std::atomic<std::uint64_t> versions;  // unique version counter (all writers)
  std::atomic<std::uint64_t> hits, batches, repairs_in_reader;
  std::atomic<std::uint64_t> corrupt, resurrected, wrong_count;
  char first_bad[512];
  std::atomic<int> bad_claimed;
};

ManyShared* g_many = nullptr;
void count_reader_repair(std::uint64_t, bool) { g_many->repairs_in_reader.fetch_add(1); }

int many_writer(Cache& cache, ManyShared& sh, int w, const std::vector<std::string>& keys, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (;;) {
    if (sh.stop.load()) return 0;
    if (sh.pause.load()) {
      sh.acked[w].store(1);
      while (sh.pause.load() && !sh.stop.load()) sched_yield();
      sh.acked[w].store(0);
      continue;
    }
    const std::uint64_t c0 = sh.epoch.load();
    const std::string& k = keys[rng() % keys.size()];
    const unsigned op = unsigned(rng() % 100);
    if (op < 8) {
      (void)cache.erase(k);
    } else {
      std::size_t len;
      const unsigned r = unsigned(rng() % 10);
      if (r < 3) {
        len = 40 + rng() % 480;  // wholly inside the first 512 bytes
      } else if (r < 6) {
        len = 600 + rng() % 8000;
      } else if (r < 9) {
        len = 8192 + rng() % (56u << 10);
      } else {
        len = (63u << 10) + rng() % 900;  // at prefetch_rest's cap
      }
      const std::uint64_t version = (c0 << 40) | (sh.versions.fetch_add(1) & ((std::uint64_t{1} << 40) - 1));
      (void)cache.set(k, make_value(k, version, len));  // busy is possible (a takeover in progress)
    }
    sh.progress[w].fetch_add(1);
  }
}

int many_reader(Cache& cache, ManyShared& sh, const std::vector<std::string>& keys) {
  g_many = &sh;
  stripe::set_recovery_observer(count_reader_repair);
  std::mt19937_64 rng(99);
  std::vector<std::string_view> batch;
  while (!sh.stop.load()) {
    batch.clear();
    const std::size_t n = 1 + rng() % 40;
    for (std::size_t i = 0; i < n; ++i) batch.push_back(keys[rng() % keys.size()]);
    const std::uint64_t e = sh.epoch.load();
    const auto out = cache.get_many(batch);
    sh.batches.fetch_add(1);
    if (out.size() != batch.size()) {
      sh.wrong_count.fetch_add(1);
      continue;
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (!out[i]) continue;
      sh.hits.fetch_add(1);
      const std::string key(batch[i]);
      std::uint64_t version = 0;
      const bool exact = verify_value(key, *out[i]) && version_of(key, *out[i], version);
      const char* what = nullptr;
      if (!exact) {
        sh.corrupt.fetch_add(1);
        what = "not a value written for that key";
      } else if ((version >> 40) < e) {
        sh.resurrected.fetch_add(1);
        what = "written before a clear that returned before the get_many began";
      }
      if (what != nullptr && sh.bad_claimed.exchange(1) == 0) {
        std::snprintf(sh.first_bad, sizeof sh.first_bad, "key %s (slot %zu of %zu), %zu bytes, epoch %llu read "
                      "before, value epoch %llu: %s", key.c_str(), i, out.size(), out[i]->size(),
                      static_cast<unsigned long long>(e), static_cast<unsigned long long>(version >> 40), what);
      }
    }
  }
  return 0;
}

TEST(AttackPerf4GetMany, StaleAheadsUnderKilledWritersEvictionAndClearsServeOnlyWrittenUnclearedBytes) {
  ScopedName name("ap4-many");
  Config c = small_config(name.name, 2u << 20, 2);
  c.lock_timeout = 2s;
  Cache cache = Cache::open(c);
  std::vector<std::string> keys;
  for (int i = 0; i < 24; ++i) keys.push_back("many-" + std::to_string(i));
  auto* sh = static_cast<ManyShared*>(shared_memory(sizeof(ManyShared)));
  new (sh) ManyShared{};
  pid_t writers[2];
  std::uint64_t seed = 1;
  for (int w = 0; w < 2; ++w) {
    const std::uint64_t s = seed++;
    writers[w] = spawn([&, w, s] { return many_writer(cache, *sh, w, keys, s); });
  }
  const pid_t reader = spawn([&] { return many_reader(cache, *sh, keys); });
  std::mt19937_64 rng(4242);
  int kills = 0, clears = 0;
  std::string failures;
  for (int cycle = 0; cycle < 150 && failures.empty(); ++cycle) {
    const int w = int(rng() % 2);
    // Kill after a random amount of progress: anywhere inside a set, a
    // move, an eviction or a repair.
    const std::uint64_t target = sh->progress[w].load() + 1 + rng() % 60;
    while (sh->progress[w].load() < target) {
      int st;
      if (::waitpid(writers[w], &st, WNOHANG) == writers[w]) {
        failures = "a writer exited (status " + std::to_string(st) + ")";
        break;
      }
      sched_yield();
    }
    if (!failures.empty()) break;
    ::kill(writers[w], SIGKILL);
    ::waitpid(writers[w], nullptr, 0);
    ++kills;
    sh->acked[w].store(0);
    if (cycle % 6 == 5) {
      // No set in flight: the other writer acks between operations (the
      // killed one is dead), then the clear, then its epoch.
      sh->pause.store(1);
      const int other = 1 - w;
      while (sh->acked[other].load() == 0) {
        int st;
        if (::waitpid(writers[other], &st, WNOHANG) == writers[other]) {
          failures = "a writer exited while pausing";
          break;
        }
        sched_yield();
      }
      cache.clear();
      sh->epoch.fetch_add(1);
      ++clears;
      sh->pause.store(0);
    }
    const std::uint64_t s = seed++;
    writers[w] = spawn([&, w, s] { return many_writer(cache, *sh, w, keys, s); });
  }
  sh->stop.store(1);
  for (pid_t p : writers) EXPECT_EQ(wait_for(p), 0) << "a writer crashed";
  const int rrc = wait_for(reader);
  EXPECT_EQ(failures, "");
  EXPECT_EQ(rrc, 0) << "the get_many reader died (128+n: signal n)";
  EXPECT_EQ(sh->wrong_count.load(), 0u) << "get_many answered for another number of keys";
  EXPECT_EQ(sh->corrupt.load(), 0u) << "invariant 1: " << sh->first_bad;
  EXPECT_EQ(sh->resurrected.load(), 0u) << "invariant 2: " << sh->first_bad;
  // Not vacuous.
  EXPECT_GE(kills, 150);
  EXPECT_GE(clears, 25);
  EXPECT_GT(sh->batches.load(), 100u) << "bad test: the reader barely ran";
  EXPECT_GT(sh->hits.load(), 200u) << "bad test: get_many hardly ever hit, so prefetch_rest hardly ran";
  // Every stripe the dead left is repaired by the next locker; then clean.
  touch_all_stripes(cache);
  const auto violations = inspect::check(name.name);
  EXPECT_TRUE(violations.empty()) << describe(violations);
  std::cout << "[ap4] kills " << kills << ", clears " << clears << ", batches " << sh->batches.load() << ", hits "
            << sh->hits.load() << ", repairs made by the reader " << sh->repairs_in_reader.load() << "\n";
}

// A batch whose Ahead for one key names an entry that a repair, made by the
// batch's own first lookup, drops before its prefetch_rest and copy run: a
// writer is SIGKILLed (ptrace single-step) in the middle of an in-place
// rewrite of the target, so the stripe's sequence is odd and its owner dead.
// get_many({bystander, target, ...}) captures the target's torn entry,
// the bystander's lookup takes the lock over and repairs (dropping the torn
// entry), then prefetch_rest reads the dropped entry's first word. The batch
// must answer exactly: the target old, new or absent (never torn), every
// bystander its value; one repair, no reset, check() clean.
TEST(AttackPerf4GetMany, AheadOfAnEntryDroppedByTheBatchsOwnRepairIsServedExactly) {
  const std::string target = "ahead-target";
  const std::string v1(6000, 'a');
  std::string v2(6000, 'b');
  for (std::size_t i = 0; i < v2.size(); i += 89) v2[i] = char('c' + i % 11);
  int landed = 0;
  for (int k : {3, 40, 300, 700}) {
    ScopedName name("ap4-ahead");
    Cache cache = Cache::open(small_config(name.name, 2u << 20, 1));
    const auto by = keys_in_stripe(cache, 0, 12, "ab");
    for (std::size_t i = 0; i < by.size(); ++i) {
      ASSERT_EQ(cache.set(by[i], make_value(by[i], i, i % 2 ? 5000 : 300)), Errc::ok);
      if (i == 5) ASSERT_EQ(cache.set(target, v1), Errc::ok);
    }
    const std::uint64_t off = entry_offset(cache, 0, target);
    ASSERT_NE(off, ~std::uint64_t{0});
    const std::uint64_t size = arena::entry_size(target.size(), v1.size(), 0);
    const Stepped st = kill_after_change(view_of(cache, 0).arena + off, size, k, 20'000'000, [&] {
      (void)stripe_lock::self_word();
      return cache.set(target, v2) == Errc::ok ? 0 : 4;
    });
    if (st.outcome == Stepped::unavailable) GTEST_SKIP() << "ptrace unavailable";
    if (st.outcome != Stepped::killed) continue;
    ++landed;
    ASSERT_NE(lock_word(cache, 0), 0u) << "bad test: the killed writer did not hold the lock";
    const int rd = wait_for(spawn([&]() -> int {
      std::vector<std::string_view> batch{by[0], target, by[1], target, by[7], by[2]};
      const auto out = cache.get_many(batch);
      if (out.size() != batch.size()) return 2;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (batch[i] == target) {
          if (out[i] && *out[i] != v1 && *out[i] != v2) return 3;
        } else if (!out[i] || !verify_value(std::string(batch[i]), *out[i])) {
          return 4;
        }
      }
      return 0;
    }));
    EXPECT_EQ(rd, 0) << "k=" << k << ": 2: wrong number of answers; 3: a torn target served (invariant 1); 4: a "
                     << "bystander lost or corrupt (invariant 6); 128+n: signal n";
    for (const auto& b : by) {
      const auto v = cache.get(b);
      EXPECT_TRUE(v && verify_value(b, *v)) << "k=" << k << ": " << b;
    }
    const Stats s = cache.stats();
    EXPECT_EQ(s.recoveries, 1u) << "k=" << k;
    EXPECT_EQ(s.resets, 0u) << "k=" << k;
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << "k=" << k << ": " << describe(violations);
  }
  EXPECT_GE(landed, 3) << "bad test: the kills did not land inside the rewrite";
}

// =====================================================================================
// 2. Forks injected at an exact instruction of a section (ptrace + a forking handler)
// =====================================================================================
//
// The tracee L installs a SIGUSR1 handler that forks; the tracer
// single-steps L and, at the instruction it chooses (seen through the
// stripe's header, which it maps too), detaches delivering SIGUSR1. L's
// child G returns from the handler into the very instruction L was at: the
// same as a signal that arrived there and forked. L and G then both run on.
struct ForkProbe {
  std::atomic<int> g_pid;
  std::atomic<int> g_done;
  std::atomic<int> g_rc;
  std::atomic<int> g_status;
  std::atomic<int> g_repairs;   // recovery observer calls in G
  std::atomic<int> l_repairs;   // in L
  std::atomic<int> delay_child; // G waits in the handler until `relocked`
  std::atomic<int> relocked;
  std::atomic<int> g_timed_out;
  std::atomic<std::uint64_t> seq_when_g_done;
  std::atomic<std::uint64_t> word_when_g_done;
  std::atomic<int> no_fork;     // the tracer let L run on without forking it
};

ForkProbe* g_fp = nullptr;
pid_t g_l_pid = 0;

void forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    if (g_fp->delay_child.load()) {
      // As if G were scheduled late: it resumes only once L is in a later
      // section of the same stripe (bounded: 5 s).
      const std::int64_t until = mono_ms() + 5000;
      while (g_fp->relocked.load() == 0) {
        if (mono_ms() > until) {
          g_fp->g_timed_out.store(1);
          break;
        }
        sched_yield();
      }
    }
    errno = saved;
    return;
  }
  g_fp->g_pid.store(c);
  errno = saved;
}

void counting_observer(std::uint64_t, bool) {
  if (::getpid() == g_l_pid) {
    g_fp->l_repairs.fetch_add(1);
  } else {
    g_fp->g_repairs.fetch_add(1);
  }
}

// Forks L, which stops for the tracer and then runs `op`; when it returns in
// G, G records its result and exits; L waits for G and returns op's result.
pid_t traced_forker(ForkProbe* fp, layout::StripeHeader* hdr, const std::function<int()>& op) {
  const pid_t l = ::fork();
  if (l == 0) {
    g_fp = fp;
    g_l_pid = ::getpid();
    (void)stripe_lock::self_word();
    stripe::set_recovery_observer(counting_observer);
    become_forking_tracee(forking_handler);
    int rc;
    try {
      rc = op();
    } catch (...) {
      rc = 1000;
    }
    if (::getpid() != g_l_pid) {
      fp->seq_when_g_done.store(words::load(hdr->seq));
      fp->word_when_g_done.store(lock_word(*hdr));
      fp->g_rc.store(rc);
      fp->g_done.store(1);
      ::_exit(0);
    }
    ::_exit(rc);
  }
  return l;
}

// Single-steps `l` until `when()` holds (checked after every instruction),
// then detaches it with SIGUSR1 (the handler forks). False if it never held
// within `max_steps` (then `l` is killed) or if ptrace is unavailable.
bool fork_when(pid_t l, const std::function<bool()>& when, long max_steps, long* steps_out = nullptr) {
  int status = 0;
  if (::waitpid(l, &status, 0) != l || !WIFSTOPPED(status)) return false;
  for (long steps = 0; steps < max_steps; ++steps) {
    if (::ptrace(PTRACE_SINGLESTEP, l, nullptr, nullptr) != 0) break;
    if (::waitpid(l, &status, 0) != l || !WIFSTOPPED(status)) return false;
    if (when()) {
      if (steps_out) *steps_out = steps;
      return ::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)) == 0;
    }
  }
  ::kill(l, SIGKILL);
  ::waitpid(l, nullptr, 0);
  return false;
}

// README (Reliability): "A child forked ... while its thread held a stripe
// lock, from a signal handler or a callback, leaves its parent's section
// alone: it neither unlocks it nor ends its write, and its begin and end are
// refused as busy." Stripe 0's owner is dead (a holder that exited), so L's
// set takes the lock over, and its Locked constructor then repairs
// (recover(): sequence odd, arena::repair, sequence even). The fork lands on
// the instruction right after the takeover's compare-and-swap, before any
// write of the repair: G must refuse (busy) and never repair the stripe its
// parent holds. A repair in G is a second process writing the stripe under
// L's lock (both rebuild the index and bump the sequence concurrently:
// G's final increment can end L's repair while L still writes, and
// readers then accept a half-rebuilt index).
TEST(AttackPerf4ForkAt, AChildForkedRightAfterATakeoverNeverRepairsItsParentsStripe) {
  ScopedName name("ap4-takeover");
  Config c = small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(c);
  const auto by = keys_in_stripe(cache, 0, 30, "tk");
  for (std::size_t i = 0; i < by.size(); ++i) ASSERT_EQ(cache.set(by[i], make_value(by[i], i, 100 + 97 * i)), Errc::ok);
  Segment& seg = detail::Access::segment(cache);
  ASSERT_EQ(wait_for(spawn([&] {
              new stripe::Locked(seg, 0);  // dies holding it
              return 0;
            })),
            0);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::uint64_t dead = lock_word(*hdr);
  ASSERT_NE(dead, 0u);
  auto* fp = static_cast<ForkProbe*>(shared_memory(sizeof(ForkProbe)));
  new (fp) ForkProbe{};
  const pid_t l = traced_forker(fp, hdr, [&] {
    const Errc e = cache.set("victim", "parent");
    // L: wait for G before returning.
    if (::getpid() == g_l_pid) {
      for (int i = 0; i < 1000000 && fp->g_pid.load() == 0; ++i) sched_yield();
      if (fp->g_pid.load() != 0) {
        int st = 0;
        ::waitpid(fp->g_pid.load(), &st, 0);
        fp->g_status.store(st);
      }
    }
    return int(e);
  });
  long steps = 0;
  const bool injected = fork_when(
      l, [&] { return stripe_lock::tid_of(lock_word(*hdr)) == std::uint32_t(l); }, 20'000'000, &steps);
  if (!injected && fp->g_pid.load() == 0) {
    const int st = wait_for(l);
    if (st == 97) GTEST_SKIP() << "ptrace unavailable";
    FAIL() << "bad test: L never took stripe 0 over under single-step (status " << st << ")";
  }
  const int lrc = wait_for(l);
  ASSERT_NE(fp->g_pid.load(), 0) << "bad test: the handler did not fork";
  ASSERT_TRUE(WIFEXITED(fp->g_status.load()) && WEXITSTATUS(fp->g_status.load()) == 0)
      << "G crashed (status " << fp->g_status.load() << ")";
  EXPECT_EQ(lrc, 0) << "L's own set failed";
  EXPECT_EQ(fp->g_done.load(), 1);
  EXPECT_EQ(fp->l_repairs.load(), 1) << "L (the lock's holder) must repair once";
  EXPECT_EQ(fp->g_repairs.load(), 0)
      << "the child forked inside its parent's section (right after the takeover's CAS, before recover) ran "
         "recover() on the stripe its parent holds: stripe.cpp Locked::Locked calls recover() without checking "
         "forked(); two processes repaired one stripe at once";
  EXPECT_NE(fp->g_rc.load(), 0) << "the child's copy of the set completed (rc 0) in its parent's section";
  EXPECT_EQ(lock_word(*hdr), 0u);
  EXPECT_EQ(words::load(hdr->seq) & 1, 0u) << "the stripe's sequence was left odd";
  for (const auto& b : by) {
    const auto v = cache.get(b);
    EXPECT_TRUE(v && verify_value(b, *v)) << b << " lost or corrupt (invariant 6: repair keeps intact entries)";
  }
  EXPECT_EQ(cache.get("victim").value_or(""), "parent");
  // owner_pid left naming L (G's copy of took_over stores it after L's
  // unlock) is the sweep's separate finding; everything else must be clean.
  auto violations = inspect::check(name.name);
  std::erase_if(violations, [](const inspect::Violation& v) { return v.what.rfind("lock held by dead pid", 0) == 0; });
  EXPECT_TRUE(violations.empty()) << describe(violations);
  std::cout << "[ap4] takeover seen after " << steps << " steps; recoveries " << cache.stats().recoveries << "\n";
}

// Two holders through unlock. L's first section on stripe 0 (a set) ends:
// ~Locked checks forked() (false), end(), then stripe_lock::unlock, which
// loads the word, stores owner_pid = 0 and compare-and-swaps its own word to
// 0. The fork lands right after that owner_pid store, before the CAS. G,
// scheduled late (it waits in the handler until L holds stripe 0 AGAIN, in a
// second section), then runs its copy of unlock on: its `me.word` and `v`
// are L's thread identity, which L's second section wrote again, so G's CAS
// releases L's second section. A third process then enters the stripe while
// L is inside: two holders (the stripe lock section; every invariant rests
// on it). The README's one stated limit is a child returning into the middle
// of its parent's WRITE (which it runs on to end); here the child releases a
// section that began after it was forked.
TEST(AttackPerf4ForkAt, AChildForkedInsideUnlockAndScheduledLateNeverReleasesItsParentsNextSection) {
  ScopedName name("ap4-unlock");
  Config c = small_config(name.name, 1u << 20, 1);
  c.lock_timeout = 50ms;
  Cache cache = Cache::open(c);
  ASSERT_EQ(cache.set("warm", "x"), Errc::ok);
  Segment& seg = detail::Access::segment(cache);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  auto* fp = static_cast<ForkProbe*>(shared_memory(sizeof(ForkProbe)));
  new (fp) ForkProbe{};
  fp->delay_child.store(1);
  const pid_t l = traced_forker(fp, hdr, [&]() -> int {
    const Errc e = cache.set("victim", "first");
    if (::getpid() != g_l_pid) return int(e);  // G: its copy of the set returned
    if (e != Errc::ok) return 10;
    int out = 0;
    {
      stripe::Locked again(seg, 0);  // L's second section
      const std::uint64_t mine = stripe_lock::self_word();
      if (lock_word(*hdr) != mine) return 11;
      fp->relocked.store(1);  // G may run on now
      for (int i = 0; i < 1000000 && fp->g_pid.load() == 0; ++i) sched_yield();
      if (fp->g_pid.load() == 0) return 12;
      int st = 0;
      ::waitpid(fp->g_pid.load(), &st, 0);
      fp->g_status.store(st);
      if (lock_word(*hdr) != mine) out |= 1;
      // Still inside: a third process must find the stripe busy.
      const int third = wait_for(spawn([&] { return cache.set("victim", "third") == Errc::busy ? 0 : 1; }));
      if (third != 0) out |= 2;
    }
    return out;
  });
  bool owned = false;
  const bool injected = fork_when(
      l,
      [&] {
        const std::uint32_t op = words::load(hdr->owner_pid);
        if (op == std::uint32_t(l)) owned = true;
        return owned && op == 0 && stripe_lock::tid_of(lock_word(*hdr)) == std::uint32_t(l);
      },
      20'000'000);
  if (!injected && fp->g_pid.load() == 0) {
    const int st = wait_for(l);
    if (st == 97) GTEST_SKIP() << "ptrace unavailable";
    FAIL() << "bad test: never saw L inside unlock (status " << st << ")";
  }
  const int lrc = wait_for(l);
  ASSERT_NE(fp->g_pid.load(), 0) << "bad test: the handler did not fork";
  ASSERT_EQ(fp->g_timed_out.load(), 0) << "bad test: L never reached its second section";
  ASSERT_TRUE(lrc < 10) << "bad test or L failed: rc " << lrc;
  ASSERT_TRUE(WIFEXITED(fp->g_status.load())) << "G crashed (status " << fp->g_status.load() << ")";
  EXPECT_EQ(lrc, 0)
      << "1: the child (forked between ~Locked's forked() check and unlock's CAS, stripe_lock.cpp unlock) "
         "released the lock word of its parent's NEXT section (its CAS matches L's thread identity, which every "
         "section of L's thread writes again); 2: a third process then entered stripe 0 while L was inside: two "
         "holders of one stripe lock";
  EXPECT_EQ(lock_word(*hdr), 0u);
  EXPECT_EQ(words::load(hdr->seq) & 1, 0u);
  const auto got = cache.get("victim");
  EXPECT_TRUE(got == "first" || got == "third");
}


std::uintptr_t rip_of(pid_t l) {
#if defined(__x86_64__)
  user_regs_struct regs{};
  if (::ptrace(PTRACE_GETREGS, l, nullptr, &regs) != 0) return 0;
  return regs.rip;
#else
  (void)l;
  return 0;
#endif
}

// Where stripe::Locked::begin() starts in the library (what set() calls).
std::uintptr_t begin_entry() {
  void* h = ::dlopen("libhostcache.so.0", RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) h = ::dlopen(nullptr, RTLD_NOW);
  void* f = h ? ::dlsym(h, "_ZN9hostcache6stripe6Locked5beginEv") : nullptr;
  return reinterpret_cast<std::uintptr_t>(f);
}

// The fork lands at EVERY instruction from the compare-and-swap that gives
// L's set the lock until L enters Locked::begin() (lookup, judge, the
// checks before the write), and G returns at once. What the README promises
// for a child forked inside a section: G's copy of the set refuses (busy:
// begin() checks the epoch) and it leaves the stripe alone: afterwards the
// lock is free, the sequence even and advanced by L's one write only, the
// accounting that of one in-place rewrite, no takeover and no repair, L's
// value stored, check() clean. (A fork inside begin(), after its check,
// runs the parent's write on: the README's stated limit, not swept.)
//
// The stripe header's owner_pid is checked separately: stripe_lock's took()
// stores it right after the CAS, so a child forked between the two stores
// its (its parent's) pid there later, after the parent's unlock cleared it.
TEST(AttackPerf4ForkAt, AChildForkedAtAnyInstructionBetweenLockAndBeginRefusesAndLeavesItAlone) {
#if defined(__SANITIZE_ADDRESS__)
  // The sweep is of the product's instructions: instrumented, the window is
  // 4.5 times as long (about 2,000 trials, minutes under ptrace), and so is
  // every check-then-store in it.
  GTEST_SKIP() << "an instruction-by-instruction sweep of the plain build only";
#endif
  ScopedName name("ap4-sweep");
  Config c = small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(c);
  const auto by = keys_in_stripe(cache, 0, 8, "sw");
  for (std::size_t i = 0; i < by.size(); ++i) ASSERT_EQ(cache.set(by[i], make_value(by[i], i, 700)), Errc::ok);
  const std::string va(900, 'a'), vb(900, 'b');  // same lengths: every set is an in-place rewrite, one path
  ASSERT_EQ(cache.set("victim", va), Errc::ok);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::uintptr_t begin_at = begin_entry();
  ASSERT_NE(begin_at, 0u) << "bad test: Locked::begin not found";
  // Each trial forks one instruction later; the sweep ends with the first
  // trial whose L enters begin() before its fork was due.
  std::string failures, owner_pid_left;
  int trials = 0;
  bool next_a = true;
  // Each refusing child logs a warning: hundreds of them.
  const auto level = log::get().level();
  log::get().set_level(spdlog::level::err);
  auto* fp = static_cast<ForkProbe*>(shared_memory(sizeof(ForkProbe)));
  long window = -1;
  for (long k = 0; k < 4000 && window < 0; ++k) {
    new (fp) ForkProbe{};
    const std::string& mine = next_a ? va : vb;
    next_a = !next_a;
    const std::uint64_t seq0 = words::load(hdr->seq), sets0 = words::load(hdr->sets),
                        used0 = words::load(hdr->used), entries0 = words::load(hdr->entries),
                        dead0 = words::load(hdr->dead_bytes), head0 = words::load(hdr->head),
                        takeovers0 = words::load(hdr->takeovers), recoveries0 = words::load(hdr->recoveries);
    const pid_t l = traced_forker(fp, hdr, [&] {
      const Errc e = cache.set("victim", mine);
      if (::getpid() == g_l_pid) {
        for (int i = 0; i < 1000000 && fp->g_pid.load() == 0 && fp->no_fork.load() == 0; ++i) sched_yield();
        if (fp->g_pid.load() != 0) {
          int st = 0;
          ::waitpid(fp->g_pid.load(), &st, 0);
          fp->g_status.store(st);
        }
      }
      return int(e);
    });
    int status = 0;
    bool injected = false, used_watch = false;
    if (::waitpid(l, &status, 0) == l && WIFSTOPPED(status)) {
      used_watch = run_to_access(l, &hdr->lock, kWatchWrites);
      long after = used_watch ? 0 : -1;
      for (long s = 0; s < 5'000'000; ++s) {
        if (after >= 0 && rip_of(l) == begin_at) {
          // L is at begin(): past the window. It runs on alone.
          window = k;
          fp->no_fork.store(1);
          ::ptrace(PTRACE_DETACH, l, nullptr, nullptr);
          break;
        }
        if (after == k) {
          injected = ::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)) == 0;
          break;
        }
        if (::ptrace(PTRACE_SINGLESTEP, l, nullptr, nullptr) != 0) break;
        if (::waitpid(l, &status, 0) != l || !WIFSTOPPED(status)) break;
        if (after >= 0) {
          ++after;
        } else if (stripe_lock::tid_of(lock_word(*hdr)) == std::uint32_t(l)) {
          after = 0;
        }
      }
      if (!injected && window < 0) ::kill(l, SIGKILL);
    }
    const int lrc = wait_for(l);
    if (window >= 0) {
      if (lrc != 0 || lock_word(*hdr) != 0) failures += "the last (unforked) set failed\n";
      break;
    }
    if (!injected) {
      failures += "k=" + std::to_string(k) + ": bad test: not injected\n";
      continue;
    }
    ++trials;
    std::string f;
    if (lrc != 0) f += " L's set failed (" + std::to_string(lrc) + ");";
    if (fp->g_pid.load() == 0 || !WIFEXITED(fp->g_status.load()) || WEXITSTATUS(fp->g_status.load()) != 0) {
      f += " G crashed (status " + std::to_string(fp->g_status.load()) + ");";
    } else if (fp->g_rc.load() == 0) {
      f += " G's copy of the set completed in its parent's section;";
    }
    if (lock_word(*hdr) != 0) f += " lock left held;";
    if (words::load(hdr->seq) != seq0 + 2) f += " sequence " + std::to_string(words::load(hdr->seq) - seq0) + " past L's start (L's write alone: 2);";
    if (words::load(hdr->sets) != sets0 + 1) f += " sets counted " + std::to_string(words::load(hdr->sets) - sets0) + " times;";
    if (words::load(hdr->used) != used0 || words::load(hdr->entries) != entries0 ||
        words::load(hdr->dead_bytes) != dead0 || words::load(hdr->head) != head0) {
      f += " accounting changed by an in-place rewrite;";
    }
    if (words::load(hdr->takeovers) != takeovers0 || words::load(hdr->recoveries) != recoveries0 ||
        fp->g_repairs.load() + fp->l_repairs.load() != 0) {
      f += " a takeover or repair ran;";
    }
    if (cache.get("victim").value_or("") != mine) f += " the victim is not L's value;";
    if (words::load(hdr->owner_pid) != 0) {
      owner_pid_left += " k=" + std::to_string(k);
      words::store(hdr->owner_pid, 0u);  // what the next lock would store anyway; keeps the trials apart
    }
    const auto violations = inspect::check(name.name);
    if (!violations.empty()) f += " check: " + describe(violations);
    if (!f.empty()) failures += "k=" + std::to_string(k) + ":" + f + "\n";
    if (failures.size() > 4000) break;
  }
  log::get().set_level(level);
  for (const auto& b : by) {
    const auto v = cache.get(b);
    EXPECT_TRUE(v && verify_value(b, *v)) << b;
  }
  EXPECT_EQ(failures, "");
  EXPECT_GT(window, 5) << "bad test: the sweep never reached begin()";
  EXPECT_EQ(trials, window);
  // took() checks for a fork before it stores owner_pid; a fork between the
  // check and the store (a few instructions) still leaves the parent's pid
  // there after the parent has unlocked. That is diagnostics only: the lock
  // word is free, check() does not report it (asserted per trial above), and
  // the next lock overwrites it. The window must stay that small.
  const long left = std::count(owner_pid_left.begin(), owner_pid_left.end(), '=');
  EXPECT_LE(left, 6) << "forked at these instructions (right after the lock's CAS, stripe_lock.cpp try_free -> "
                        "took()), the child stored its parent's pid in owner_pid after the parent had unlocked:"
                     << owner_pid_left;
  if (left != 0) std::cout << "[ap4] owner_pid left by a child forked at:" << owner_pid_left << "\n";
  std::cout << "[ap4] forked at each of " << trials << " instructions between the lock and begin() ("
            << "watchpoint or single-step to the CAS)\n";
}

// =====================================================================================
// 3. No fork page
// =====================================================================================
//
// Before the fix, a process whose WIPEONFORK page could not be mapped (mmap
// failed when its first identity was computed: RLIMIT_AS, vm.max_map_count,
// ENOMEM) had a constant fork epoch, forever: self() never recomputed the
// identity in a child, so every child locked under its PARENT's thread id
// and start time, and forked() was never true. Now the failure is not
// remembered and no lock is taken without the page (a clear Error).
//
// The prefork pattern in such a process: a master forks a worker (outside
// any section), then holds stripe 0; the worker sets a key of stripe 0.
// It must find the stripe busy (its holder is alive), or be refused with
// an error. With the parent's identity, lock_slow finds "its own" word in
// the lock ("scribbled: take it") and enters: two holders.
//
// The helper runs in a fresh process (exec of this binary): the fork page
// is set up by the first lock of a process.
constexpr const char* kNoPageEnv = "HOSTCACHE_AP4_NOPAGE_SEGMENT";

int no_page_helper(const char* segment_name) {
  // 1. The first identity of this process, with the address space full.
  const std::uint64_t vm = vm_size_bytes();
  if (vm == 0) return 50;
  rlimit old{};
  if (::getrlimit(RLIMIT_AS, &old) != 0) return 51;
  rlimit tight = old;
  tight.rlim_cur = vm;
  if (::setrlimit(RLIMIT_AS, &tight) != 0) return 52;
  void* probe = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  const bool full = probe == MAP_FAILED;
  if (!full) ::munmap(probe, 4096);
  const std::uint64_t parent_word = stripe_lock::self_word();  // fork_page(): its mmap fails now
  ::setrlimit(RLIMIT_AS, &old);
  if (!full) return 53;  // bad test: a page could still be mapped
  // 2. A prefork master and its worker.
  Config c = small_config(segment_name, 1u << 20, 1);
  c.lock_timeout = 50ms;
  Cache cache = Cache::open(c);
  Segment& seg = detail::Access::segment(cache);
  auto* sh = static_cast<std::atomic<int>*>(shared_memory(4096));
  const pid_t worker = spawn([&]() -> int {
    while (sh[0].load() == 0) sched_yield();  // the master holds stripe 0
    // A library that refuses to lock without a fork page (a clear error)
    // is as good as one that finds its own identity: neither enters.
    int r = 0;
    try {
      if (stripe_lock::self_word() == parent_word) r |= 2;
    } catch (const Error&) {
    }
    try {
      if (cache.set("contended", "worker") != Errc::busy) r |= 1;
    } catch (const Error&) {
    }
    return r;
  });
  int rc;
  {
    stripe::Locked held(seg, 0);
    sh[0].store(1);
    rc = wait_for(worker);
    if (lock_word(header_of(cache, 0)) != parent_word) rc |= 4;
  }
  return rc;
}

TEST(AttackPerf4NoPage, DISABLED_Helper) {
  const char* seg = std::getenv(kNoPageEnv);
  if (seg == nullptr) GTEST_SKIP();
  int rc;
  try {
    rc = no_page_helper(seg);
  } catch (const Error& e) {
    std::fprintf(stderr, "[ap4] without a fork page the library refused: %s\n", e.what());
    rc = 0;  // refused with a clear error: nobody entered
  } catch (...) {
    rc = 60;
  }
  std::fflush(nullptr);
  ::_exit(rc);
}

TEST(AttackPerf4NoPage, AWorkerForkedByAProcessWithoutAForkPageNeverEntersItsMastersStripe) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer cannot allocate its own memory with the address space full";
#endif
  ScopedName name("ap4-nopage");
  Config c = small_config(name.name, 1u << 20, 1);
  Cache cache = Cache::open(c);
  ASSERT_EQ(cache.set("warm", "x"), Errc::ok);
  const int rc = run_exec_helper("AttackPerf4NoPage.DISABLED_Helper", kNoPageEnv, name.name);
  ASSERT_NE(rc, 96) << "bad test: exec failed";
  ASSERT_TRUE(rc < 50) << "bad test: the helper could not make the fork page's mmap fail (rc " << rc << ")";
  EXPECT_EQ(rc, 0) << "in a process whose fork page could not be mapped (stripe_lock.cpp fork_page() "
                      "returns nullptr): bit 2: the forked worker's "
                      "identity word is its master's (self() never recomputes it: the epoch never changes); bit "
                      "1: the worker's set got into stripe 0 while its master held it (lock_slow takes a word "
                      "equal to its own as scribbled): two holders of one stripe lock; bit 4: the master's lock "
                      "word was replaced";
  EXPECT_EQ(lock_word(header_of(cache, 0)), 0u);
}

}  // namespace
}  // namespace hostcache
