// test_attack_fork6.cpp — adversarial review of 79faa7a (recover's last
// stores as compare-and-swaps, flights refusing other namespaces, a claim
// that a forked child leaves to its parent, per-method stats in a child of
// compute(), stats slots told apart by the fork page, gets that grow the
// caller's string without zeroing it). Real processes only: fork, _Fork,
// raw SYS_fork, clone(CLONE_VM), SIGKILL, forks from signal handlers and
// from callbacks, landed with x86-64 debug-register watchpoints
// (tests/fork_probe.h).
//
// Each test asserts a model property: what must never be served (bytes no
// set wrote for that key), exact statistics totals, slot ownership while its
// owner lives, and that nobody waits past a generous bound. Processes
// synchronise through flags in MAP_SHARED memory, never a sleep that orders.
#include <gtest/gtest.h>

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <hostcache/inspect.h>
#include <hostcache/memoize.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "entry_probe.h"
#include "flight.h"
#include "fork_probe.h"
#include "memoize_fixture.h"
#include "reliability_support.h"
#include "segment.h"
#include "stripe.h"
#include "stripe_lock.h"

namespace hostcache {
namespace {

using namespace testing;
using namespace memoize_testing;
using namespace std::chrono_literals;

// =====================================================================================
// 1. A child forked inside a LOCKED get (the fallback after the optimistic
//    tries) copies the value with no lock and no sequence check
// =====================================================================================
//
// stripe::get (src/stripe.cpp) falls back to `Locked locked(segment, index)`
// and then find(), judge_and_copy() (which calls the caller's ValueSink, or
// grows the string, then copies the value) and finish(): no forked() check
// after the Locked constructor, and no sequence validation (the lock is meant
// to exclude writers). A child forked there (from the sink, a callback, or
// from a signal handler) does not hold the lock: its parent does, and
// releases it when its own get returns. A child scheduled late then copies
// the value while another process rewrites it in place, and get_into/get
// return true with bytes no set wrote (invariant 1; README: "no byte served
// is wrong"). Stripe::Locked's own copy of the section is careful (begin,
// end, unlock refuse in a child); the read it protects is not.

struct ReadScene {
  std::atomic<int> g_pid, g_in, go, g_done, g_hit, g_verdict, g_len, g_timed_out;
  std::atomic<int> l_done, l_rc, quit;
};
enum Verdict : int { kNone = 0, kOld = 1, kNew = 2, kTorn = 3 };

ReadScene* g_rs = nullptr;
layout::StripeHeader* g_rs_hdr = nullptr;
pid_t g_rs_l = 0;
bool g_rs_forked = false;
std::string g_rs_buf;

// The sink L's get_into calls: under the stripe's lock (the only path that
// reaches it here), it forks once; the child waits until told to go on.
char* forking_sink(void*, std::size_t n) {
  if (!g_rs_forked && ::getpid() == g_rs_l && lock_word(*g_rs_hdr) != 0) {
    g_rs_forked = true;
    const pid_t c = ::fork();
    if (c == 0) {
      g_rs->g_in.store(1);
      if (!await([] { return g_rs->go.load() != 0; }, 20000)) g_rs->g_timed_out.store(1);
    } else {
      g_rs->g_pid.store(c);
    }
  }
  g_rs_buf.resize(n);
  return g_rs_buf.data();
}

void read_forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    g_rs->g_in.store(1);
    if (!await([] { return g_rs->go.load() != 0; }, 20000)) g_rs->g_timed_out.store(1);
    errno = saved;
    return;
  }
  g_rs->g_pid.store(c);
  errno = saved;
}

int classify(const std::string& got, const std::string& v1, const std::string& v2) {
  if (got == v1) return kOld;
  if (got == v2) return kNew;
  return kTorn;
}

// The shared setup: one stripe, `key` with a 4 KiB value, a dead holder that
// left the stripe locked with its sequence odd (so L's get takes the lock).
struct LockedReadSetup {
  ScopedName name{"af6-read"};
  Cache cache = Cache::open(small_config(name.name, 1u << 20, 1));
  Segment& seg = detail::Access::segment(cache);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  std::string key = keys_in_stripe(cache, 0, 1, "torn")[0];
  std::string v1 = make_value(key, 1, 4096), v2 = make_value(key, 2, 4096);
  ReadScene* rs = static_cast<ReadScene*>(shared_memory(sizeof(ReadScene)));

  void prepare() {
    new (rs) ReadScene{};
    ASSERT_EQ(cache.set(key, v1), Errc::ok);
    const auto others = keys_in_stripe(cache, 0, 6, "other");
    for (std::size_t i = 0; i < others.size(); ++i) {
      ASSERT_EQ(cache.set(others[i], make_value(others[i], i, 300)), Errc::ok);
    }
    ASSERT_EQ(wait_for(spawn([&] {
                auto* l = new stripe::Locked(seg, 0);  // dies holding it, mid-write
                l->begin();
                return 0;
              })),
              0);
    ASSERT_NE(lock_word(*hdr), 0u);
    ASSERT_EQ(words::load(hdr->seq) & 1, 1u);
  }

  // After L's get returned (stripe free): W rewrites `key` in place and is
  // stopped right after its store to the middle of the value; then G, the
  // child forked inside L's locked get, goes on copying. Returns W.
  pid_t torn_writer() {
    const std::uint64_t off = entry_offset(cache, 0, key);
    EXPECT_NE(off, ~std::uint64_t{0});
    layout::EntryHeader h{};
    const arena::StripeView v = view_of(cache, 0);
    arena::read_header(v, off, h);
    const void* mid = v.arena + ((arena::value_off(off, h) + h.value_len / 2) & ~std::uint64_t{7});
    const pid_t w = ::fork();
    if (w == 0) {
      if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(97);
      ::raise(SIGSTOP);
      ::_exit(cache.set(key, v2) == Errc::ok ? 0 : 1);
    }
    int status = 0;
    EXPECT_EQ(::waitpid(w, &status, 0), w);
    EXPECT_TRUE(WIFSTOPPED(status));
    EXPECT_TRUE(run_to_access(w, mid, kWatchWrites)) << "bad test: W never wrote the value's middle";
    EXPECT_EQ(words::load(hdr->seq) & 1, 1u) << "bad test: W stopped outside its write";
    EXPECT_EQ(entry_offset(cache, 0, key), off) << "bad test: W did not rewrite in place";
    return w;
  }

  void judge_and_finish(pid_t l, pid_t w) {
    rs->go.store(1);
    EXPECT_TRUE(await([&] { return rs->g_done.load() != 0; }, 10000)) << "G's copy of L's get never returned";
    EXPECT_EQ(rs->g_timed_out.load(), 0);
    if (rs->g_hit.load() != 0) {
      EXPECT_NE(rs->g_verdict.load(), int(kTorn))
          << "invariant 1: a child forked inside a LOCKED get (src/stripe.cpp get(): no forked() check after "
             "`Locked locked(...)`, no sequence check) copied the value after its parent unlocked, while W rewrote "
             "it in place, and returned true with bytes no set wrote (" << rs->g_len.load() << " bytes)";
    }
    ASSERT_EQ(::ptrace(PTRACE_DETACH, w, nullptr, nullptr), 0);
    EXPECT_EQ(finishes_within(w, 10000), 0);
    rs->quit.store(1);
    EXPECT_EQ(finishes_within(l, 10000), 0);
    EXPECT_EQ(cache.get(key).value_or(""), v2);
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << describe(violations);
  }
};

// 1a. The fork comes from the caller's own ValueSink (get_into's callback:
// a binding allocating its result, README "from a signal handler or a
// callback"), called under the lock.
TEST(AttackFork6Read, AChildForkedByASinkInsideALockedGetIntoNeverServesATornValue) {
  LockedReadSetup s;
  s.prepare();
  if (::testing::Test::HasFatalFailure()) return;
  g_rs = s.rs;
  g_rs_hdr = s.hdr;
  const pid_t l = ::fork();
  if (l == 0) {
    g_rs_l = ::getpid();
    const bool hit = s.cache.get_into(s.key, &forking_sink, nullptr);
    if (::getpid() != g_rs_l) {  // G
      s.rs->g_hit.store(hit ? 1 : 0);
      s.rs->g_len.store(int(g_rs_buf.size()));
      s.rs->g_verdict.store(hit ? classify(g_rs_buf, s.v1, s.v2) : kNone);
      s.rs->g_done.store(1);
      ::_exit(0);
    }
    s.rs->l_rc.store(hit && g_rs_buf == s.v1 ? 0 : 1);
    s.rs->l_done.store(1);
    await([&] { return s.rs->quit.load() != 0; }, 30000);
    if (s.rs->g_pid.load() != 0) ::waitpid(s.rs->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  ASSERT_TRUE(await([&] { return s.rs->l_done.load() != 0; }, 10000)) << "L's get never returned";
  EXPECT_EQ(s.rs->l_rc.load(), 0) << "L's own get did not return the value";
  ASSERT_NE(s.rs->g_pid.load(), 0) << "bad test: the sink never forked under the lock";
  ASSERT_TRUE(await([&] { return s.rs->g_in.load() != 0; }));
  ASSERT_EQ(lock_word(*s.hdr), 0u) << "L's get left the stripe locked";
  ASSERT_EQ(words::load(s.hdr->seq) & 1, 0u);
  const pid_t w = s.torn_writer();
  if (::testing::Test::HasFailure()) {
    ::kill(w, SIGKILL);
    s.rs->go.store(1);
    s.rs->quit.store(1);
    finishes_within(w, 5000);
    finishes_within(l, 5000);
    return;
  }
  s.judge_and_finish(l, w);
}

// 1b. The same with a plain get(key, std::string&) and the fork from a
// signal handler, landed (watchpoint) right after the locked find() read the
// key's entry header, once the repair is over (sequence even, lock held).
TEST(AttackFork6Read, AChildForkedByASignalInsideALockedGetNeverServesATornValue) {
  LockedReadSetup s;
  s.prepare();
  if (::testing::Test::HasFatalFailure()) return;
  g_rs = s.rs;
  const std::uint64_t off = entry_offset(s.cache, 0, s.key);
  ASSERT_NE(off, ~std::uint64_t{0});
  const void* entry = view_of(s.cache, 0).arena + off;
  const pid_t l = ::fork();
  if (l == 0) {
    g_rs_l = ::getpid();
    (void)stripe_lock::self_word();
    become_forking_tracee(read_forking_handler);
    std::string out;
    const bool hit = s.cache.get(s.key, out);
    if (::getpid() != g_rs_l) {  // G
      s.rs->g_hit.store(hit ? 1 : 0);
      s.rs->g_len.store(int(out.size()));
      s.rs->g_verdict.store(hit ? classify(out, s.v1, s.v2) : kNone);
      s.rs->g_done.store(1);
      ::_exit(0);
    }
    s.rs->l_rc.store(hit && out == s.v1 ? 0 : 1);
    s.rs->l_done.store(1);
    await([&] { return s.rs->quit.load() != 0; }, 30000);
    if (s.rs->g_pid.load() != 0) ::waitpid(s.rs->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(l, &status, 0), l);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 97) GTEST_SKIP() << "ptrace unavailable";
  ASSERT_TRUE(WIFSTOPPED(status));
  bool landed = false;
  for (int i = 0; i < 64 && !landed; ++i) {
    if (!run_to_access(l, entry, kWatchAccesses)) {
      ::kill(l, SIGKILL);
      wait_for(l);
      GTEST_SKIP() << "no x86-64 debug-register watchpoint available";
    }
    // The repair reads the entry with the sequence odd; the locked find after it, even.
    landed = (words::load(s.hdr->seq) & 1) == 0 && lock_word(*s.hdr) != 0;
  }
  ASSERT_TRUE(landed) << "bad test: never stopped at the locked find";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, l, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return s.rs->g_pid.load() != 0 && s.rs->g_in.load() != 0; }));
  ASSERT_TRUE(await([&] { return s.rs->l_done.load() != 0; }, 10000)) << "L's get never returned";
  EXPECT_EQ(s.rs->l_rc.load(), 0) << "L's own get did not return the value";
  ASSERT_EQ(lock_word(*s.hdr), 0u) << "L's get left the stripe locked";
  const pid_t w = s.torn_writer();
  if (::testing::Test::HasFailure()) {
    ::kill(w, SIGKILL);
    s.rs->go.store(1);
    s.rs->quit.store(1);
    finishes_within(w, 5000);
    finishes_within(l, 5000);
    return;
  }
  s.judge_and_finish(l, w);
}

// 1c. (passing probe) The same fork from a sink on the OPTIMISTIC path:
// the child's copy is followed by the sequence check, which W's rewrite
// fails, so the child retries (and, W stopped holding the lock, answers a
// miss as busy after lock_timeout) rather than serve torn bytes.
TEST(AttackFork6Read, AChildForkedByASinkInAnOptimisticGetRetriesInsteadOfServingTornBytes) {
  ScopedName name("af6-opt");
  Config cfg = small_config(name.name, 1u << 20, 1);
  cfg.lock_timeout = 300ms;
  Cache cache = Cache::open(cfg);
  layout::StripeHeader* hdr = &header_of(cache, 0);
  const std::string key = keys_in_stripe(cache, 0, 1, "torn")[0];
  const std::string v1 = make_value(key, 1, 4096), v2 = make_value(key, 2, 4096);
  ASSERT_EQ(cache.set(key, v1), Errc::ok);
  auto* rs = static_cast<ReadScene*>(shared_memory(sizeof(ReadScene)));
  new (rs) ReadScene{};
  g_rs = rs;
  static bool s_forked;
  s_forked = false;
  auto sink = [](void*, std::size_t n) -> char* {
    if (!s_forked) {
      s_forked = true;
      const pid_t c = ::fork();
      if (c == 0) {
        g_rs->g_in.store(1);
        if (!await([] { return g_rs->go.load() != 0; }, 20000)) g_rs->g_timed_out.store(1);
      } else {
        g_rs->g_pid.store(c);
      }
    }
    g_rs_buf.resize(n);
    return g_rs_buf.data();
  };
  const pid_t l = ::fork();
  if (l == 0) {
    const pid_t me = ::getpid();
    const bool hit = cache.get_into(key, sink, nullptr);
    if (::getpid() != me) {
      rs->g_hit.store(hit ? 1 : 0);
      rs->g_verdict.store(hit ? classify(g_rs_buf, v1, v2) : kNone);
      rs->g_done.store(1);
      ::_exit(0);
    }
    rs->l_rc.store(hit && g_rs_buf == v1 ? 0 : 1);
    rs->l_done.store(1);
    await([&] { return rs->quit.load() != 0; }, 30000);
    if (rs->g_pid.load() != 0) ::waitpid(rs->g_pid.load(), nullptr, 0);
    ::_exit(0);
  }
  ASSERT_TRUE(await([&] { return rs->l_done.load() != 0 && rs->g_in.load() != 0; }, 10000));
  EXPECT_EQ(rs->l_rc.load(), 0);
  // W: in place, stopped mid-value.
  const std::uint64_t off = entry_offset(cache, 0, key);
  layout::EntryHeader h{};
  const arena::StripeView v = view_of(cache, 0);
  arena::read_header(v, off, h);
  const void* mid = v.arena + ((arena::value_off(off, h) + h.value_len / 2) & ~std::uint64_t{7});
  const pid_t w = ::fork();
  if (w == 0) {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(97);
    ::raise(SIGSTOP);
    ::_exit(cache.set(key, v2) == Errc::ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(w, &status, 0), w);
  ASSERT_TRUE(run_to_access(w, mid, kWatchWrites));
  ASSERT_EQ(words::load(hdr->seq) & 1, 1u);
  rs->go.store(1);
  EXPECT_TRUE(await([&] { return rs->g_done.load() != 0; }, 10000));
  if (rs->g_hit.load() != 0) EXPECT_NE(rs->g_verdict.load(), int(kTorn)) << "optimistic copy served torn bytes";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, w, nullptr, nullptr), 0);
  EXPECT_EQ(finishes_within(w, 10000), 0);
  rs->quit.store(1);
  EXPECT_EQ(finishes_within(l, 10000), 0);
  EXPECT_EQ(cache.get(key).value_or(""), v2);
}

// =====================================================================================
// 2. Dest::reserve without zeroing (string_grow.cpp): a miss after a torn
//    optimistic copy, and every length around SSO and capacity doublings
//    under writers in other processes
// =====================================================================================
//
// (passing probe) Writers in other processes rewrite keys whose values
// change length (1..600 bytes, around 15/16 and every doubling), forcing
// seqlock retries into strings of every shape; readers use get into a
// reused string, get_many and get_into, and check every hit byte for byte
// (verify_value: key and checksum embedded). A hit must never be a wrong
// length, indeterminate bytes, or another key's value.
TEST(AttackFork6Grow, HitsUnderRacingWritersOfEveryLengthAreExactWhateverTheStringHeld) {
  ScopedName name("af6-grow");
  Cache cache = Cache::open(small_config(name.name, 2u << 20, 2));
  std::vector<std::string> keys;
  for (int i = 0; i < 12; ++i) keys.push_back("g" + std::to_string(i));
  const std::vector<std::size_t> lens = {1, 7, 14, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 600};
  auto len_of = [&](std::uint64_t version) { return std::max<std::size_t>(lens[version % lens.size()], 64); };
  for (const auto& k : keys) ASSERT_EQ(cache.set(k, make_value(k, 0, len_of(0))), Errc::ok);
  auto* stop = static_cast<std::atomic<int>*>(shared_memory(sizeof(std::atomic<int>) * 8));
  auto* bad = stop + 1;
  auto* hits = stop + 2;
  std::vector<pid_t> writers;
  for (int w = 0; w < 2; ++w) {
    writers.push_back(spawn([&, w] {
      std::uint64_t version = std::uint64_t(w) * 7 + 1;
      while (stop->load() == 0) {
        for (const auto& k : keys) (void)cache.set(k, make_value(k, version, len_of(version)));
        ++version;
      }
      return 0;
    }));
  }
  std::vector<pid_t> readers;
  for (int r = 0; r < 2; ++r) {
    readers.push_back(spawn([&, r] {
      std::string reused(r == 0 ? 5 : 5000, 'x');
      const std::int64_t until = mono_ms() + 1500;
      std::vector<std::string_view> views(keys.begin(), keys.end());
      static std::string sink_buf;
      auto sink = [](void*, std::size_t n) -> char* {
        sink_buf.resize(n);
        return sink_buf.data();
      };
      while (mono_ms() < until) {
        for (const auto& k : keys) {
          if (cache.get(k, reused)) {
            hits->fetch_add(1);
            if (!verify_value(k, reused)) bad->fetch_add(1);
          }
          if (cache.get_into(k, sink, nullptr)) {
            if (!verify_value(k, sink_buf)) bad->fetch_add(1);
          }
        }
        for (const auto& got : cache.get_many(views)) (void)got;
        const auto many = cache.get_many(views);
        for (std::size_t i = 0; i < keys.size(); ++i) {
          if (many[i] && !verify_value(keys[i], *many[i])) bad->fetch_add(1);
        }
      }
      return 0;
    }));
  }
  for (pid_t p : readers) EXPECT_EQ(finishes_within(p, 20000), 0);
  stop->store(1);
  for (pid_t p : writers) EXPECT_EQ(finishes_within(p, 20000), 0);
  EXPECT_GT(hits->load(), 0);
  EXPECT_EQ(bad->load(), 0) << "a hit returned bytes no set wrote for that key";
}

// =====================================================================================
// 3. Statistics slots told apart by the fork page (stats.h / stats.cpp)
// =====================================================================================
//
// (passing probe) One worker P: threads racing its first count, then
// children made by fork(), _Fork(), raw SYS_fork and clone(CLONE_VM |
// CLONE_VFORK) (sharing P's memory, so its recorder), each counting a known
// number of gets and closing its handle (~StatsRecorder) where it has its
// own copy; one more killed with SIGKILL after its counts. The totals must
// be exact (every get counted once, the killed one's included) and P's slot
// must stay P's while P lives.
struct StatsScene {
  std::atomic<int> started, finish, go, killed_ready, clone_done;
};
Cache* g_clone_cache = nullptr;
int clone_main(void*) {
  for (int i = 0; i < 25; ++i) (void)g_clone_cache->get("nothing-vm");
  return 0;
}

TEST(AttackFork6Stats, CountsStayExactAndTheLiveOwnersSlotStaysItsAcrossEveryKindOfChild) {
  ScopedName name("af6-stats");
  Cache root = Cache::open(small_config(name.name, 1u << 20, 2));
  auto* sc = static_cast<StatsScene*>(shared_memory(sizeof(StatsScene)));
  new (sc) StatsScene{};
  const std::uint64_t misses0 = root.stats().misses, hits0 = root.stats().hits;
  ASSERT_EQ(root.set("present", "v"), Errc::ok);
  const pid_t parent = spawn([&] {
    std::optional<Cache> c;
    c.emplace(Cache::open(small_config(name.name, 1u << 20, 2)));
    {  // 4 threads race the first claim: 4 x 50 misses, 4 x 10 hits
      std::atomic<int> ready{0};
      std::vector<std::thread> ts;
      for (int t = 0; t < 4; ++t) {
        ts.emplace_back([&] {
          ready.fetch_add(1);
          while (ready.load() < 4) {
          }
          for (int i = 0; i < 50; ++i) (void)c->get("nothing-t");
          for (int i = 0; i < 10; ++i) (void)c->get("present");
        });
      }
      for (auto& t : ts) t.join();
    }
    auto child_work = [&](int n) {
      for (int i = 0; i < n; ++i) (void)c->get("nothing-c");
      (void)c->get("present");
    };
    // fork(): 30 misses + 1 hit, then closes its copy.
    pid_t k = ::fork();
    if (k == 0) {
      child_work(30);
      c.reset();
      ::_exit(0);
    }
    if (wait_for(k) != 0) return 2;
    // _Fork(): no atfork handlers.
    k = ::_Fork();
    if (k == 0) {
      child_work(30);
      c.reset();
      ::_exit(0);
    }
    if (wait_for(k) != 0) return 3;
    // Raw SYS_fork.
    long rk = ::syscall(SYS_fork);
    if (rk == 0) {
      child_work(30);
      c.reset();
      ::syscall(SYS_exit_group, 0);
    }
    if (rk < 0 || wait_for(pid_t(rk)) != 0) return 4;
    // clone(CLONE_VM | CLONE_VFORK): shares this process's memory (and recorder).
    {
      g_clone_cache = &*c;
      const std::size_t stack_bytes = 1u << 20;
      void* stack = ::mmap(nullptr, stack_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (stack == MAP_FAILED) return 5;
      const int ck = ::clone(clone_main, static_cast<char*>(stack) + stack_bytes, CLONE_VM | CLONE_VFORK | SIGCHLD,
                             nullptr);
      if (ck < 0 || wait_for(ck) != 0) return 6;
      ::munmap(stack, stack_bytes);
    }
    // A child killed with SIGKILL after 40 misses (its slot is folded by the sum).
    k = ::fork();
    if (k == 0) {
      for (int i = 0; i < 40; ++i) (void)c->get("nothing-k");
      sc->killed_ready.store(1);
      await([] { return false; }, 30000);
      ::_exit(0);
    }
    if (!await([&] { return sc->killed_ready.load() != 0; }, 10000)) return 7;
    ::kill(k, SIGKILL);
    if (wait_for(k) != 128 + SIGKILL) return 8;
    for (int i = 0; i < 10; ++i) (void)c->get("nothing-p");
    sc->started.store(1);
    await([&] { return sc->finish.load() != 0; }, 30000);
    return 0;
  });
  EXPECT_TRUE(await([&] { return sc->started.load() != 0; }, 15000));
  Segment& seg = detail::Access::segment(root);
  bool owned = false;
  for (std::uint32_t i = 0; i < seg.geometry().stats_slots; ++i) {
    if (words::load(seg.stats_slots()[i].pid) == std::uint32_t(parent)) owned = true;
  }
  EXPECT_TRUE(owned) << "the live worker's stats slot was freed (by a child's ~StatsRecorder?)";
  const std::uint64_t want_misses = misses0 + 200 + 3 * 30 + 25 + 40 + 10;
  const std::uint64_t want_hits = hits0 + 40 + 3;
  EXPECT_EQ(root.stats().misses, want_misses) << "a count was lost or doubled";
  EXPECT_EQ(root.stats().hits, want_hits) << "a count was lost or doubled";
  sc->finish.store(1);
  EXPECT_EQ(finishes_within(parent, 10000), 0);
  EXPECT_EQ(root.stats().misses, want_misses);
  EXPECT_EQ(root.stats().hits, want_hits);
}

// 3b. (passing probe) A child forked from a signal handler while its
// parent's thread is inside StatsRecorder::claim (landed on the store to the
// slot's pid): the child counts its own gets (exactly, once), the parent's
// slot stays the parent's, and nobody's count is lost.
StatsScene* g_ss = nullptr;
std::atomic<int>* g_ss_child = nullptr;
void stats_forking_handler(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    g_ss_child->store(1);
    errno = saved;
    return;
  }
  g_ss_child[1].store(c);
  errno = saved;
}

TEST(AttackFork6Stats, AChildForkedInsideTheFirstClaimCountsExactlyAndFreesNoLiveSlot) {
  ScopedName name("af6-claim");
  Cache root = Cache::open(small_config(name.name, 1u << 20, 2));
  Segment& seg = detail::Access::segment(root);
  auto* flags = static_cast<std::atomic<int>*>(shared_memory(sizeof(std::atomic<int>) * 8));
  g_ss_child = flags;  // [0] in child, [1] child pid, [2] parent pid, [3] done count, [4] quit
  const std::uint64_t misses0 = root.stats().misses;
  // The first free slot (what the claim will CAS): watch its pid.
  std::uint32_t first_free = 0;
  while (first_free < seg.geometry().stats_slots && words::load(seg.stats_slots()[first_free].pid) != 0) ++first_free;
  ASSERT_LT(first_free, seg.geometry().stats_slots);
  const void* watched = &seg.stats_slots()[first_free].pid;
  const pid_t p = ::fork();
  if (p == 0) {
    // root's own handle (same mapping, so the watched address is this
    // process's too); its recorder has not counted yet: the first get claims.
    flags[2].store(int(::getpid()));
    (void)stripe_lock::self_word();
    become_forking_tracee(stats_forking_handler);
    const pid_t me = ::getpid();
    for (int i = 0; i < 20; ++i) (void)root.get("nothing");
    if (::getpid() != me) {
      std::destroy_at(&root);  // the child's ~StatsRecorder
      flags[3].fetch_add(1);
      ::_exit(0);
    }
    flags[3].fetch_add(1);
    await([&] { return flags[4].load() != 0; }, 30000);
    if (flags[1].load() != 0) ::waitpid(flags[1].load(), nullptr, 0);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(p, &status, 0), p);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 97) GTEST_SKIP() << "ptrace unavailable";
  ASSERT_TRUE(WIFSTOPPED(status));
  if (!run_to_access(p, watched, kWatchWrites)) {
    ::kill(p, SIGKILL);
    wait_for(p);
    GTEST_SKIP() << "no x86-64 debug-register watchpoint available";
  }
  ASSERT_EQ(words::load(*static_cast<const std::uint32_t*>(watched)), std::uint32_t(p)) << "bad test";
  ASSERT_EQ(::ptrace(PTRACE_DETACH, p, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
  ASSERT_TRUE(await([&] { return flags[3].load() == 2; }, 10000)) << "parent or child never finished counting";
  bool owned = false;
  for (std::uint32_t i = 0; i < seg.geometry().stats_slots; ++i) {
    if (words::load(seg.stats_slots()[i].pid) == std::uint32_t(p)) owned = true;
  }
  EXPECT_TRUE(owned) << "the live parent's slot was freed by its child forked inside the claim";
  EXPECT_EQ(root.stats().misses, misses0 + 40) << "20 gets in each of two processes";
  flags[4].store(1);
  EXPECT_EQ(finishes_within(p, 10000), 0);
  EXPECT_EQ(root.stats().misses, misses0 + 40);
}

// =====================================================================================
// 4. Forks at each store and compare-and-swap of Flights::claim (flight.cpp)
// =====================================================================================
//
// (probes) The fork lands (signal handler, watchpoint) right after the
// claim's n-th write to the slot word (1: claiming CAS, 2: tentative, 3: the
// confirming CAS) or after its store of owner_pid. The child runs on at
// once; the parent's handler lets the child finish (or sleep on the flight)
// first. Then: the parent's call returns within a bound, a later caller of
// the key is not blocked, at most the two processes computed, and no flight
// is left held.
MemoizeTest* g_cf_test = nullptr;
struct ClaimScene {
  std::atomic<int> pid_a, pid_b, child_done, parent_done, computes, quit;
  char text[2][64];
};
ClaimScene* g_cs = nullptr;
const layout::FlightSlot* g_cs_slot = nullptr;
const Cache* g_cs_cache = nullptr;

void claim_forking_handler6(int) {
  const int saved = errno;
  const pid_t c = ::fork();
  if (c == 0) {
    errno = saved;
    return;
  }
  g_cs->pid_b.store(int(c));
  await([] { return g_cs->child_done.load() != 0 || sleeping_waiters(*g_cs_cache) != 0; }, 3000);
  errno = saved;
}

class AttackFork6Claim : public MemoizeTest {
 protected:
  // where: 1..3 the n-th write of the slot word; 0 the owner_pid store.
  void run_scene(int where) {
    auto* cs = static_cast<ClaimScene*>(shared_memory(sizeof(ClaimScene)));
    new (cs) ClaimScene{};
    g_cs = cs;
    g_cs_cache = &cache_;
    ComputeOptions o;
    o.lease = 1h;
    const std::uint64_t kh = XXH3_64bits("k", 1);
    const layout::FlightSlot* slot = &flight_slots(cache_)[kh & (flight_count(cache_) - 1)];
    g_cs_slot = slot;
    ASSERT_TRUE(flight::is_free(*slot));
    const pid_t p = ::fork();
    if (p == 0) {
      (void)stripe_lock::self_word();
      cs->pid_a.store(int(::getpid()));
      become_forking_tracee(claim_forking_handler6);
      const std::string r = get_or_compute<std::string>(
          cache_, "k",
          [&] {
            cs->computes.fetch_add(1);
            return std::string(::getpid() == cs->pid_a.load() ? "parent" : "child");
          },
          o);
      if (::getpid() != cs->pid_a.load()) {
        std::snprintf(cs->text[1], sizeof cs->text[1], "%s", r.c_str());
        cs->child_done.store(1);
        ::_exit(0);
      }
      std::snprintf(cs->text[0], sizeof cs->text[0], "%s", r.c_str());
      cs->parent_done.store(1);
      await([&] { return cs->quit.load() != 0; }, 30000);
      if (cs->pid_b.load() != 0) ::waitpid(cs->pid_b.load(), nullptr, 0);
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(p, &status, 0), p);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 97) GTEST_SKIP() << "ptrace unavailable";
    ASSERT_TRUE(WIFSTOPPED(status));
    const void* addr = where == 0 ? static_cast<const void*>(&slot->owner_pid) : static_cast<const void*>(&slot->word);
    for (int n = 0; n < std::max(where, 1); ++n) {
      if (!run_to_access(p, addr, kWatchWrites)) {
        ::kill(p, SIGKILL);
        wait_for(p);
        GTEST_SKIP() << "no x86-64 debug-register watchpoint available";
      }
    }
    ASSERT_EQ(::ptrace(PTRACE_DETACH, p, nullptr, reinterpret_cast<void*>(SIGUSR1)), 0);
    EXPECT_TRUE(await([&] { return cs->parent_done.load() != 0; }, 8000))
        << "the parent's get_or_compute still waits (lease 1 h) after a fork at claim write " << where;
    EXPECT_TRUE(await([&] { return cs->child_done.load() != 0; }, 8000))
        << "the child forked at claim write " << where << " never returned";
    cache_.erase("k");
    const pid_t asker = spawn([&] {
      const std::string r = get_or_compute<std::string>(
          cache_, "k",
          [&] {
            cs->computes.fetch_add(1);
            return std::string("asker");
          },
          o);
      return r.empty() ? 1 : 0;
    });
    EXPECT_EQ(finishes_within(asker, 6000), 0) << "a later caller of the key was blocked (fork at claim write "
                                               << where << ", owner " << flight_owner(cache_, "k") << ")";
    cs->quit.store(1);
    EXPECT_EQ(finishes_within(p, 6000), 0);
    EXPECT_LE(cs->computes.load(), 3);
    EXPECT_EQ(std::string(cs->text[0]).empty(), false);
    EXPECT_TRUE(all_flights_free(cache_)) << "a flight left held after every call returned (fork at " << where << ")";
  }
};

TEST_F(AttackFork6Claim, ForkAfterTheClaimingCas) { run_scene(1); }
TEST_F(AttackFork6Claim, ForkAfterTheOwnerPidStore) { run_scene(0); }
TEST_F(AttackFork6Claim, ForkAfterTheTentativeCas) { run_scene(2); }
TEST_F(AttackFork6Claim, ForkAfterTheConfirmingCas) { run_scene(3); }

}  // namespace
}  // namespace hostcache
