// test_attack_fork10.cpp — adversarial review of 14218fd/7e147e2
// (PerProcess<T>, per_process.h; the logger's per-process stderr sink,
// log.cpp; memoize's per-handle state, memoize.cpp).
//
// Real processes only: fork(), glibc's _Fork(), a raw clone syscall, exec
// of this binary for a process that never mapped the fork page, a seccomp
// filter standing for an address space with no room for one more page
// (RLIMIT_AS, vm.max_map_count, strict overcommit: ENOMEM on that mmap).
// Threads are parked where the kernel shows them (a write(2) to a full
// pipe) or where a test hook / a replaced operator new holds them; every
// wait is bounded (a hang guard, never a sleep that orders).
//
// Model: a child, however forked, never waits for a lock a thread of its
// parent held at fork (per_process.h's promise, log.cpp's "a raw clone() or
// _Fork() child too"); threads racing a fresh child's first get() share one
// T and touch no freed memory; a process that forks repeatedly does not
// grow.
#include <gtest/gtest.h>
#include <hostcache/memoize.h>

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "log.h"
#include "fork_park.h"
#include "memoize_fixture.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using memoize_testing::finishes;
using testing::ScopedName;
using testing::small_config;
using testing::spawn;
using steady = std::chrono::steady_clock;
using detail::KeyArg;
using detail::user_token;

using fork_park::blocked_in;
using fork_park::drain;
using fork_park::gettid_;
using fork_park::make_stderr_a_full_pipe;
using fork_park::within;

bool stderr_to_null() {
  const int null = ::open("/dev/null", O_WRONLY);
  return null >= 0 && ::dup2(null, 2) >= 0;
}

// A get_or_compute whose value is over max_value_bytes: the library warns.
std::string compute_too_big(Cache& cache, const std::string& key) {
  const std::size_t n = cache.max_value_bytes() + 1;
  return get_or_compute<std::string>(cache, key, [n] { return std::string(n, 'v'); });
}

// A thread of this process blocked in write(2) on stderr inside a library
// message (`say` makes one). 0 once the kernel shows it there.
struct StuckMessage {
  int rd;
  std::function<void()> say;
  std::atomic<pid_t> tid{0};
  std::atomic<bool> done{false};
  std::thread t;

  std::atomic<bool> go{false};
  // The thread, made now (its stack mapped) and waiting: start() lets it say.
  void create() {
    t = std::thread([this] {
      tid = gettid_();
      while (!go.load()) sched_yield();
      say();
      done = true;
    });
  }
  int start() {
    if (!t.joinable()) create();
    go = true;
    if (!within(10s, [&] { return tid != 0 && (done || blocked_in(tid) == SYS_write); })) {
      drain(rd);
      t.join();
      return 21;
    }
    if (done) {
      t.join();
      return 22;  // it did not block: no scene
    }
    return 0;
  }
  // Lets it go on (drains until it has written), and joins it. False if it stays stuck.
  bool finish() {
    if (!within(20s, [&] {
          drain(rd);
          return done.load();
        })) {
      return false;
    }
    t.join();
    return true;
  }
};

// ---- a page that cannot be mapped --------------------------------------------------
//
// stripe_lock.cpp's fork_page(): mmap(NULL, 4096, PROT_READ|PROT_WRITE,
// MAP_PRIVATE|MAP_ANONYMOUS, -1, 0). An address space with no room for it
// (RLIMIT_AS reached, vm.max_map_count reached, strict overcommit out of
// commit) answers ENOMEM; the library takes that as a state it lives in
// (stats.cpp: "no fork page (yet)"; self() refuses the lock; per_process.h:
// "an epoch of 0 keeps whatever T there is"). A seccomp filter makes exactly
// that call fail with ENOMEM, in this process and, inherited, in its
// children (the same pressure: RLIMIT_AS is inherited too).
bool deny_the_fork_page() {
  constexpr unsigned kArgLo = offsetof(seccomp_data, args);  // little-endian: low word first
  auto arg_lo = [](int i) { return __u32(kArgLo + 8 * i); };
  auto arg_hi = [](int i) { return __u32(kArgLo + 8 * i + 4); };
  sock_filter prog[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 15),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_lo(0)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 13),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_hi(0)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 11),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_lo(1)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 4096, 0, 9),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_hi(1)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 7),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_lo(2)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_READ | PROT_WRITE, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_lo(3)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MAP_PRIVATE | MAP_ANONYMOUS, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg_lo(4)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffffu, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOMEM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog fprog{static_cast<unsigned short>(sizeof prog / sizeof prog[0]), prog};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) == 0;
}

// ---- exec'd roles: processes that never mapped the fork page ----------------------------

// 1 (role). A process without a fork page whose thread's library message
// (HOSTCACHE_LOG=debug: a get's "miss") is stuck on a full stderr pipe,
// holding its sink's mutex. Its child, under the same pressure, has epoch
// 0 too, so PerProcess hands it its parent's sink: the child's first
// message waits on a mutex held by a thread it has no copy of, for ever.
int role_epoch0_log(const std::string& name) {
  if (!deny_the_fork_page()) return 31;
  Cache cache = Cache::open(small_config(name));
  if (stripe_lock::fork_epoch() != 0) return 32;  // the page was mapped: no scene
  if (!log::debug_enabled()) return 33;
  const int rd = make_stderr_a_full_pipe();
  if (rd < 0) return 34;
  StuckMessage m{rd, [&] { (void)cache.get("absent"); }};
  if (const int e = m.start()) return e;
  const pid_t c = ::fork();
  if (c == 0) {
    if (!stderr_to_null()) ::_exit(3);
    (void)cache.get("absent-too");  // logs "miss"
    ::_exit(0);
  }
  const int st = finishes(c, 5s);
  if (!m.finish()) ::_exit(35);
  return st == -2 ? 10 : st;
}

// 1b (role). The same scene with a real address-space limit instead of
// the filter: RLIMIT_AS at what the process has mapped (a worker that hit
// its limit; its child inherits it). Plain builds only (ASan's allocator
// and shadow need to map).
int role_epoch0_log_rlimit(const std::string& name) {
  Cache cache = Cache::open(small_config(name));
  ::mallopt(M_ARENA_MAX, 1);                 // every thread on the brk heap,
  ::mallopt(M_MMAP_THRESHOLD, 64 << 20);     // grown now and kept
  ::mallopt(M_TRIM_THRESHOLD, 256 << 20);
  ::free(std::malloc(16 << 20));
  const int rd = make_stderr_a_full_pipe();
  if (rd < 0) return 34;
  StuckMessage m{rd, [&] { (void)cache.get("absent"); }};
  m.create();
  long vm_kb = 0;
  {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("VmSize:", 0) == 0) vm_kb = std::strtol(line.c_str() + 7, nullptr, 10);
    }
  }
  if (vm_kb == 0) return 39;
  rlimit lim{};
  ::getrlimit(RLIMIT_AS, &lim);
  lim.rlim_cur = rlim_t(vm_kb) * 1024;
  if (::setrlimit(RLIMIT_AS, &lim) != 0) return 31;
  if (::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) return 31;
  if (stripe_lock::fork_epoch() != 0) return 32;  // the page was mapped already: no scene
  if (!log::debug_enabled()) return 33;
  if (const int e = m.start()) return e;
  const pid_t c = ::fork();
  if (c == 0) {
    if (!stderr_to_null()) ::_exit(3);
    (void)cache.get("absent-too");
    ::_exit(0);
  }
  const int st = finishes(c, 5s);
  if (!m.finish()) ::_exit(35);
  return st == -2 ? 10 : st;
}

// 2 (role). The same for memoize's per-handle state: a thread of a process
// without a fork page is held inside its method lookup (the test hook,
// under MemoizeState::mutex); the child's first memoized call looks its
// method up in the same MemoizeState (epoch 0 is "current" everywhere).
std::atomic<int> g_lookup{0};
void stay_in_the_lookup_until_released() {
  int nobody = 0;
  if (!g_lookup.compare_exchange_strong(nobody, 1)) return;
  while (g_lookup.load() != 2) std::this_thread::yield();
}

int role_epoch0_memoize(const std::string& name) {
  if (!deny_the_fork_page()) return 31;
  Cache cache = Cache::open(small_config(name));
  if (stripe_lock::fork_epoch() != 0) return 32;
  if (!flight::testing::set_method_lookup_hook(&stay_in_the_lookup_until_released)) return 36;
  ComputeOptions o;
  o.method = "fa10m";
  std::thread t([&] {
    try {
      (void)get_or_compute<std::string>(cache, "k0", [] { return std::string("thread"); }, o);
    } catch (const std::exception&) {  // no stripe lock without the page: io_error, after the lookup
    }
  });
  if (!within(10s, [] { return g_lookup.load() == 1; })) {
    g_lookup.store(2);
    t.join();
    return 37;
  }
  const pid_t c = ::fork();
  if (c == 0) {
    try {
      (void)get_or_compute<std::string>(cache, "k1", [] { return std::string("child"); }, o);
    } catch (const std::exception&) {  // io_error again (no page): but only after the lookup
    }
    ::_exit(0);
  }
  const int st = finishes(c, 5s);
  g_lookup.store(2);
  t.join();
  return st == -2 ? 10 : st;
}

pid_t exec_self(const char* role, const std::string& name, const char* log_level) {
  const pid_t p = ::fork();
  if (p == 0) {
    ::setenv("HC_ATTACK10_ROLE", role, 1);
    ::setenv("HC_ATTACK10_NAME", name.c_str(), 1);
    ::setenv("HOSTCACHE_TEST_HOOKS", "1", 1);
    if (log_level != nullptr) ::setenv("HOSTCACHE_LOG", log_level, 1);
    ::execl("/proc/self/exe", "test_attack_fork10", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return p;
}

// 1. The logger's sink in a child of a process that could not map the fork page.
TEST(ForkAttack10, ChildOfAProcessWithoutAForkPageLogsWhileItsParentsMessageIsStuck) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's own runtime makes the filtered mmap (ASan: DTLS_NextBlock) and dies";
#endif
  ScopedName n("fa10a");
  { Cache made = Cache::open(small_config(n.name)); }
  const pid_t h = exec_self("epoch0_log", n.name, "debug");
  ASSERT_GT(h, 0);
  const int st = finishes(h, 40s);
  if (st >= 31 && st <= 34) GTEST_SKIP() << "scene not set (role exit " << st << ")";
  EXPECT_EQ(st, 0) << "1: (10 = hung) the child took its parent's sink (epoch 0) whose mutex a "
                      "parent thread held at fork";
}

// 1b. The same, the page refused by RLIMIT_AS.
TEST(ForkAttack10, ChildOfAProcessAtItsAddressSpaceLimitLogsWhileItsParentsMessageIsStuck) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "RLIMIT_AS and a sanitizer's shadow memory do not mix";
#endif
  ScopedName n("fa10a2");
  { Cache made = Cache::open(small_config(n.name)); }
  const pid_t h = exec_self("epoch0_log_rlimit", n.name, "debug");
  ASSERT_GT(h, 0);
  const int st = finishes(h, 40s);
  if (st >= 31 && st <= 34) GTEST_SKIP() << "scene not set (role exit " << st << ")";
  EXPECT_EQ(st, 0) << "1b: (10 = hung) the child took its parent's sink (epoch 0) whose mutex a "
                      "parent thread held at fork";
}

// 2. memoize's state in a child of a process that could not map the fork page.
TEST(ForkAttack10, ChildOfAProcessWithoutAForkPageMemoizesWhileAParentThreadLooksUp) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "a sanitizer's own runtime makes the filtered mmap (ASan: DTLS_NextBlock) and dies";
#endif
  ScopedName n("fa10b");
  { Cache made = Cache::open(small_config(n.name)); }
  const pid_t h = exec_self("epoch0_memoize", n.name, nullptr);
  ASSERT_GT(h, 0);
  const int st = finishes(h, 40s);
  if (st >= 31 && st <= 36) GTEST_SKIP() << "scene not set (role exit " << st << ")";
  EXPECT_EQ(st, 0) << "2: (10 = hung) the child took its parent's MemoizeState (epoch 0) whose "
                      "mutex a parent thread held at fork";
}

// ---- 3. children forked without glibc's fork(): _Fork() and a raw clone -------------------
//
// log.cpp: "nothing runs [at fork] (a raw clone() or _Fork() child too): the
// first message of a process makes a sink of its own". The sink is new, but
// it writes through stdio (spdlog's ansicolor sink: fwrite + fflush on
// `stderr`), and stderr's FILE lock is process-local state too: glibc's
// fork() resets it in the child (fresetlockfiles), _Fork() and clone do
// not. A parent thread stuck in a library message (blocked in write(2)
// inside fwrite, holding that FILE lock) hands such a child a stderr
// locked for ever. The child sends its own stderr to /dev/null first: only
// a lock can hold it. Model: the child's warning returns.
enum class How { fork, underscore_fork, raw_clone };

pid_t make_child(How how) {
  switch (how) {
    case How::fork:
      return ::fork();
    case How::underscore_fork:
      return ::_Fork();
    case How::raw_clone:
      return pid_t(::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
  }
  return -1;
}

int child_warns_while_a_parent_thread_is_stuck_warning(const std::string& name, How how) {
  Cache cache = Cache::open(small_config(name));
  (void)compute_too_big(cache, "warm");  // logger and sink made
  const int rd = make_stderr_a_full_pipe();
  if (rd < 0) return 20;
  StuckMessage m{rd, [&] { (void)compute_too_big(cache, "k"); }};
  if (const int e = m.start()) return e;
  const pid_t c = make_child(how);
  if (c == 0) {
    if (!stderr_to_null()) ::_exit(3);
    (void)compute_too_big(cache, "child");  // a warning
    ::_exit(0);
  }
  if (c < 0) return 24;
  const int st = finishes(c, 5s);
  if (!m.finish()) ::_exit(25);
  return st == -2 ? 10 : st;
}

TEST(ForkAttack10, ForkChildWarnsWhileAParentThreadsWarningIsStuck) {
  ScopedName n("fa10c");
  const pid_t h = spawn([&] { return child_warns_while_a_parent_thread_is_stuck_warning(n.name, How::fork); });
  EXPECT_EQ(finishes(h, 40s), 0);
}

TEST(ForkAttack10, UnderscoreForkChildWarnsWhileAParentThreadsWarningIsStuck) {
  ScopedName n("fa10d");
  const pid_t h =
      spawn([&] { return child_warns_while_a_parent_thread_is_stuck_warning(n.name, How::underscore_fork); });
  EXPECT_EQ(finishes(h, 40s), 0) << "3: (10 = hung) a _Fork() child's first message waited on stderr's "
                                    "FILE lock, held by a parent thread at fork";
}

TEST(ForkAttack10, RawCloneChildWarnsWhileAParentThreadsWarningIsStuck) {
  ScopedName n("fa10e");
  const pid_t h =
      spawn([&] { return child_warns_while_a_parent_thread_is_stuck_warning(n.name, How::raw_clone); });
  EXPECT_EQ(finishes(h, 40s), 0) << "3: (10 = hung) a raw clone child's first message waited on stderr's "
                                    "FILE lock, held by a parent thread at fork";
}

// ---- 4. many threads racing a fresh child's first get() ---------------------------------
//
// In each of 30 children, 12 threads released together make the child's
// MemoizeState and sink (the CAS over the parent's copy): each builds the
// same key (the same secret), memoizes, warns. Run under ASan a loser's
// freed T used, or a winner's freed, aborts the child.
struct RaceCounts {
  std::atomic<int> wrong;
  std::atomic<int> computes;
  std::atomic<int> calls;
};

TEST(ForkAttack10, ThreadsRacingAFreshChildsFirstGetShareOneState) {
  ScopedName n("fa10f");
  Cache cache = Cache::open(small_config(n.name));
  auto* counts = static_cast<RaceCounts*>(testing::shared_memory(sizeof(RaceCounts)));
  const KeyArg user{KeyArg::Kind::text, "alice"};
  const std::string expected_user = user_token(cache, user);  // the parent's state exists
  const pid_t host = spawn([&] {
    if (!stderr_to_null()) return 3;
    for (int round = 0; round < 30; ++round) {
      const pid_t c = ::fork();
      if (c == 0) {
        std::atomic<int> ready{0};
        std::atomic<bool> go{false};
        std::vector<std::thread> ts;
        ComputeOptions o;
        o.method = "fa10race";
        for (int t = 0; t < 12; ++t) {
          ts.emplace_back([&, t] {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire)) {
            }
            if (user_token(cache, user) != expected_user) counts->wrong.fetch_add(1);
            if (t % 3 == 0) log::get().warn("racer {}", t);
            const std::string key = "r" + std::to_string(round) + ":" + std::to_string(t % 4);
            const std::string v = get_or_compute<std::string>(
                cache, key,
                [&] {
                  counts->computes.fetch_add(1);
                  return "v=" + key;
                },
                o);
            counts->calls.fetch_add(1);
            if (v != "v=" + key) counts->wrong.fetch_add(1);
          });
        }
        while (ready.load() != 12) {
        }
        go.store(true, std::memory_order_release);
        for (auto& th : ts) th.join();
        ::_exit(0);
      }
      if (const int st = finishes(c, 20s); st != 0) return 100 + round;
    }
    return 0;
  });
  ASSERT_EQ(finishes(host, 50s), 0);
  EXPECT_EQ(counts->wrong.load(), 0);
  std::uint64_t misses = 0, requests = 0;
  for (const auto& m : method_stats(cache)) {
    if (m.method == "fa10race") misses = m.misses, requests = m.requests;
  }
  EXPECT_EQ(misses, std::uint64_t(counts->computes.load()));
  EXPECT_EQ(requests, std::uint64_t(counts->calls.load()));
}

// ---- 5. a grandchild forked while a thread of its parent is inside get() -------------------
//
// A child's thread is held at the allocation of its Node (the first
// operator new inside PerProcess::get, a preemption there) while the
// child forks a grandchild: the grandchild memoizes (its own state, the
// child's unfinished Node left behind); then the held thread goes on, its
// CAS loses or wins against the child's main thread, and both see one state.
std::atomic<pid_t> g_trap_tid{0};
std::atomic<int> g_trapped{0};
std::atomic<int> g_release{0};

TEST(ForkAttack10, GrandchildForkedWhileAThreadIsInsideGetMemoizes) {
  ScopedName n("fa10g");
  Cache cache = Cache::open(small_config(n.name));
  const KeyArg user{KeyArg::Kind::text, "bob"};
  const std::string expected_user = user_token(cache, user);
  const pid_t host = spawn([&] {
    for (int round = 0; round < 10; ++round) {
      const pid_t child = ::fork();
      if (child == 0) {
        std::atomic<int> bad{0};
        std::thread x([&] {
          g_trap_tid = gettid_();
          if (user_token(cache, user) != expected_user) bad = 1;  // memo_state -> get -> new Node
        });
        if (!within(10s, [] { return g_trapped.load() != 0; })) ::_exit(30);
        const pid_t grand = ::fork();
        if (grand == 0) {
          ComputeOptions o;
          o.method = "fa10g";
          if (user_token(cache, user) != expected_user) ::_exit(4);
          const std::string v =
              get_or_compute<std::string>(cache, "g" + std::to_string(round), [] { return std::string("g"); }, o);
          ::_exit(v == "g" ? 0 : 5);
        }
        // The main thread makes the child's state while x is still held.
        const bool main_ok = user_token(cache, user) == expected_user;
        g_release = 1;
        x.join();
        const int g = finishes(grand, 20s);
        ::_exit(!main_ok || bad ? 6 : (g == 0 ? 0 : 40 + (g & 7)));
      }
      if (const int st = finishes(child, 30s); st != 0) return st;
    }
    return 0;
  });
  EXPECT_EQ(finishes(host, 50s), 0);
}

// ---- 6. a process that forks repeatedly does not grow -----------------------------------
//
// A prefork master (itself a child: its state is its own) forks 300
// workers, each of which memoizes, builds keys and warns, then exits. The
// master's heap must not grow per worker (a T per epoch made in the
// forking process itself would).
TEST(ForkAttack10, AProcessThatForksRepeatedlyDoesNotGrow) {
  ScopedName n("fa10h");
  Cache cache = Cache::open(small_config(n.name));
  const pid_t master = spawn([&] {
    if (!stderr_to_null()) return 3;
    const KeyArg user{KeyArg::Kind::text, "carol"};
    auto worker = [&](int i) {
      const pid_t c = ::fork();
      if (c == 0) {
        ComputeOptions o;
        o.method = "fa10h";
        (void)user_token(cache, user);
        (void)get_or_compute<std::string>(cache, "w" + std::to_string(i % 7), [] { return std::string("w"); }, o);
        log::get().warn("worker {}", i);
        ::_exit(0);
      }
      return finishes(c, 20s);
    };
    (void)user_token(cache, user);
    log::get().warn("master");
    for (int i = 0; i < 5; ++i) {
      if (worker(i) != 0) return 4;
    }
    const std::size_t before = mallinfo2().uordblks;
    for (int i = 0; i < 300; ++i) {
      if (worker(i) != 0) return 5;
      (void)user_token(cache, user);  // the master's own state, every time
    }
    const std::size_t after = mallinfo2().uordblks;
    // A Node<MemoizeState> alone is over 256 bytes: 300 of them, 75 KiB.
    return after <= before + 16 * 1024 ? 0 : 6;
  });
  EXPECT_EQ(finishes(master, 50s), 0);
}

// ---- 7. a child that exits normally (exit(), not _exit()) after logging -----------------
//
// The parent's sink and MemoizeState copies are left in the child
// unreferenced ("never used, never freed"). Under LeakSanitizer
// (scripts/test.sh runs ASan with detect_leaks=1) a worker that exits
// through exit() is reported as leaking them, and exits 23: a prefork
// server's own test suite under ASan fails. Model: it exits 0.
TEST(ForkAttack10, AChildThatLogsAndMemoizesThenExitsNormallyExitsZero) {
  ScopedName n("fa10i");
  const pid_t host = spawn([&] {
    if (!stderr_to_null()) return 3;
    Cache cache = Cache::open(small_config(n.name));
    const KeyArg user{KeyArg::Kind::text, "dave"};
    (void)user_token(cache, user);
    log::get().warn("parent");
    const pid_t c = ::fork();
    if (c == 0) {
      (void)user_token(cache, user);
      log::get().warn("child");
      std::exit(0);  // atexit: LeakSanitizer, if any
    }
    return finishes(c, 20s);
  });
  EXPECT_EQ(finishes(host, 40s), 0) << "7: nonzero (ASan: 1) = LeakSanitizer reported the parent's sink and MemoizeState Nodes, left in the child, as direct leaks";
}

// ---- 8. a signal handler that forks, and whose child logs, while its thread was logging ----
//
// The handler interrupts a library message stuck on a full stderr pipe
// (the thread holds its sink's mutex); it forks, and the child, still in
// the handler, logs before it exits: its own sink (PerProcess), and
// fork() reset stdio's lock. Model: the child finishes.
std::atomic<int> g_handler_child{0};

void fork_and_log_in_handler(int) {
  const pid_t c = ::fork();
  if (c == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null < 0 || ::dup2(null, 2) < 0) ::_exit(3);
    log::get().warn("from the handler's child");
    ::_exit(0);
  }
  g_handler_child.store(c > 0 ? int(c) : -1);
}

TEST(ForkAttack10, ChildForkedInASignalHandlerThatInterruptedALogWriteLogs) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan holds an async signal until the interrupted write returns: no scene";
#endif
  ScopedName n("fa10j");
  const pid_t host = spawn([&] {
    Cache cache = Cache::open(small_config(n.name));
    (void)compute_too_big(cache, "warm");
    struct sigaction sa{};
    sa.sa_handler = fork_and_log_in_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (::sigaction(SIGUSR1, &sa, nullptr) != 0) return 20;
    const int rd = make_stderr_a_full_pipe();
    if (rd < 0) return 20;
    StuckMessage m{rd, [&] { (void)compute_too_big(cache, "k"); }};
    if (const int e = m.start()) return e;
    ::syscall(SYS_tgkill, ::getpid(), m.tid.load(), SIGUSR1);
    if (!within(10s, [] { return g_handler_child.load() != 0; })) ::_exit(26);
    const int c = g_handler_child.load();
    if (c < 0) return 24;
    const int st = finishes(pid_t(c), 5s);
    if (!m.finish()) ::_exit(25);
    return st == -2 ? 10 : st;
  });
  EXPECT_EQ(finishes(host, 40s), 0);
}

}  // namespace
}  // namespace hostcache

// Holds the armed thread at its next allocation (test 5), until released (bounded).
void* operator new(std::size_t n) {
  using hostcache::g_trap_tid;
  if (g_trap_tid.load(std::memory_order_relaxed) != 0 && g_trap_tid.load() == hostcache::gettid_()) {
    g_trap_tid.store(0);
    hostcache::g_trapped.store(1);
    hostcache::within(std::chrono::seconds(10), [] { return hostcache::g_release.load() != 0; });
  }
  if (void* p = std::malloc(n != 0 ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

int main(int argc, char** argv) {
  if (const char* role = std::getenv("HC_ATTACK10_ROLE")) {
    const char* name = std::getenv("HC_ATTACK10_NAME");
    if (name == nullptr) return 2;
    try {
      if (std::strcmp(role, "epoch0_log") == 0) return hostcache::role_epoch0_log(name);
      if (std::strcmp(role, "epoch0_log_rlimit") == 0) return hostcache::role_epoch0_log_rlimit(name);
      if (std::strcmp(role, "epoch0_memoize") == 0) return hostcache::role_epoch0_memoize(name);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "role %s: %s\n", role, e.what());
      return 38;
    }
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
