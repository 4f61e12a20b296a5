// memoize and fork (review of 7a4fbd3: a Flight remembers the pid that
// claimed it, and release() is a no-op in any other process). Real processes
// only: everything a child forked while its parent holds (or waits on, or is
// claiming) a flight inherits must leave the parent's flight alone, and a
// flight the child does not release must block others no longer than its
// owner lives. The model: one compute per key per flight generation unless
// an owner died; every value served is one a compute produced for that key.
//
// Processes report through MAP_SHARED memory; they are synchronised through
// flags polled there (a hang guard of a minute, never a sleep that orders).
#include <gtest/gtest.h>
#include <hostcache/memoize.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "clock.h"
#include "flight.h"
#include "log.h"
#include "memoize_fixture.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;
using namespace memoize_testing;
using testing::spawn;
using testing::wait_for;

// The library reads it once, on first use: before main.
const bool kHooksOn = [] { return ::setenv("HOSTCACHE_TEST_HOOKS", "1", 1) == 0; }();

// Flags shared with every process of a test (zero-filled).
struct Flags {
  int started, finish, c_go, c_done, w_started, w_go, w_done, forked, skipped;
  int pid_owner, pid_child;  // as each sees itself (getpid())
};

class MemoizeForkTest : public MemoizeTest {
 protected:
  Flags* f_ = static_cast<Flags*>(testing::shared_memory(sizeof(Flags)));
  ~MemoizeForkTest() override { ::munmap(f_, sizeof(Flags)); }
};

struct ChildOfTheCompute {};

bool is_set(const int& flag) { return read(flag) != 0; }
// A child's wait for a flag: a hang guard, not an ordering by time.
bool await_flag(const int& flag) { return eventually([&] { return is_set(flag); }); }
void put(int& field, int v) { std::atomic_ref<int>(field).store(v); }

// ---- 1. pid namespaces: the child's getpid() can equal its parent's --------------
//
// A container: its init (pid 1 of its pid namespace) creates the segment and
// memoizes; a worker of the same container (pid 2) asks for the same key.
// The init's compute forks a sandboxed helper into a nested pid namespace
// (unshare(CLONE_NEWPID), as sandboxes do), where the helper is pid 1 too,
// and the helper unwinds through the caller's get_or_compute (the case of
// the last test of test_memoize_attack). Flight::pid == getpid() there, so
// release() frees the init's flight, still computing, and the worker
// computes the key a second time.
bool write_file(const char* path, const std::string& text) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) return false;
  const bool ok = std::fputs(text.c_str(), f) >= 0;
  return std::fclose(f) == 0 && ok;
}

TEST_F(MemoizeForkTest, AHelperForkedIntoANestedPidNamespaceNeverReleasesItsParentsFlight) {
  ScopedName inner_name{"memons"};
  ComputeOptions o;
  o.lease = 1h;  // nothing but a release hands the flight over within the test
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  const pid_t outer = spawn([&] {
    if (::unshare(CLONE_NEWUSER | CLONE_NEWPID) != 0 ||
        !write_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n") ||
        !write_file("/proc/self/setgroups", "deny") ||
        !write_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n")) {
      raise(f_->skipped);
      return 0;
    }
    const pid_t init = ::fork();  // pid 1 of the container's namespace
    if (init < 0) return 5;
    if (init == 0) {
      bool in_helper = false;
      int rc = 0;
      try {
        Cache c = Cache::open(testing::small_config(inner_name.name));
        const pid_t worker = ::fork();  // pid 2, same namespace as the segment's creator
        if (worker == 0) {
          await_flag(f_->w_go);
          set_result(1, get_or_compute<std::string>(
                            c, "k",
                            [&] {
                              bump(shared_->computes);
                              return std::string("worker");
                            },
                            o));
          ::_exit(0);
        }
        put(f_->pid_owner, ::getpid());
        set_result(0, get_or_compute<std::string>(
                          c, "k",
                          [&]() -> std::string {
                            bump(shared_->computes);
                            if (::unshare(CLONE_NEWPID) != 0) return "unshare failed";
                            const pid_t h = ::fork();
                            if (h == 0) {
                              in_helper = true;
                              put(f_->pid_child, ::getpid());
                              throw ChildOfTheCompute{};  // unwinds the parent's call
                            }
                            if (h < 0 || wait_for(h) != 0) return "helper failed";
                            raise(shared_->started);
                            raise(f_->w_go);
                            // The worker sleeps on our flight, or (freed under us) computed.
                            eventually([&] {
                              return sleeping_waiters(c) == 1 || read(shared_->computes) == 2;
                            });
                            raise(f_->w_started);  // what the worker did is visible now
                            await_flag(f_->finish);
                            return "owner";
                          },
                          o));
        rc = wait_for(worker);
      } catch (const ChildOfTheCompute&) {
        if (in_helper) ::_exit(0);
        rc = 3;
      } catch (const std::exception& e) {
        set_result(3, std::string(in_helper ? "helper" : "init") + " threw: " + e.what());
        rc = 4;
      }
      ::_exit(rc);
    }
    return wait_for(init);
  });
  ASSERT_TRUE(eventually([&] { return is_set(f_->w_started) || is_set(f_->skipped) || is_set(f_->finish); }));
  if (is_set(f_->skipped)) {
    EXPECT_EQ(finishes(outer), 0);
    GTEST_SKIP() << "no unprivileged user + pid namespaces here";
  }
  // The init is still inside its compute, alive and in its lease.
  EXPECT_EQ(read(shared_->computes), 1)
      << "the worker computed the key while its owner (pid " << read(f_->pid_owner)
      << ") still computed: the helper (pid " << read(f_->pid_child)
      << " of its nested namespace) released its parent's flight";
  raise(f_->finish);
  EXPECT_EQ(finishes(outer), 0) << result(3);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_EQ(result(0), "owner");
  EXPECT_EQ(result(1), "owner");
}

// ---- 2. the parent dies, its forked child lives on --------------------------------
//
// The owner forks inside its compute and is killed; its child (holding a copy
// of the flight and its guard) is alive. A waiter must take the flight over
// (the owner's life is over: the child is no owner), and the child unwinding
// afterwards must not free the taker's flight.
TEST_F(MemoizeForkTest, AForkedChildThatOutlivesItsKilledOwnerNeitherHoldsNorFreesTheFlight) {
  ComputeOptions o;
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    bool in_child = false;
    try {
      get_or_compute<std::string>(cache_, "k",
                                  [&]() -> std::string {
                                    bump(shared_->computes);
                                    const pid_t c = ::fork();
                                    if (c == 0) {
                                      in_child = true;
                                      await_flag(f_->c_go);
                                      throw ChildOfTheCompute{};
                                    }
                                    put(f_->pid_child, c);
                                    raise(shared_->started);
                                    await_flag(f_->finish);  // never: killed here
                                    return "owner";
                                  },
                                  o);
    } catch (const ChildOfTheCompute&) {
      if (in_child) {
        raise(f_->c_done);  // after its guard ran
        ::_exit(0);
      }
      return 3;
    }
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return is_set(shared_->started); }));
  ASSERT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner));
  ::kill(owner, SIGKILL);
  EXPECT_EQ(wait_for(owner), 128 + SIGKILL);  // reaped: kill(pid, 0) says ESRCH
  const pid_t taker = spawn([&] {
    set_result(1, get_or_compute<std::string>(
                      cache_, "k",
                      [&] {
                        bump(shared_->computes);
                        raise(f_->w_started);
                        await_flag(f_->w_go);
                        return std::string("taker");
                      },
                      o));
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return is_set(f_->w_started); }))
      << "the dead owner's flight (its child alive) was never taken over";
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(taker));
  raise(f_->c_go);
  ASSERT_TRUE(eventually([&] { return is_set(f_->c_done); }));
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(taker))
      << "the dead owner's child freed the flight its taker holds";
  const pid_t third = spawn([&] {
    set_result(2, get_or_compute<std::string>(
                      cache_, "k",
                      [&] {
                        bump(shared_->computes);
                        return std::string("third");
                      },
                      o));
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 1 || read(shared_->computes) == 3; }));
  raise(f_->w_go);
  EXPECT_EQ(finishes(taker), 0);
  EXPECT_EQ(finishes(third), 0);
  EXPECT_EQ(read(shared_->computes), 2) << "one for the dead owner, one for its taker";
  EXPECT_EQ(result(1), "taker");
  EXPECT_EQ(result(2), "taker");
  EXPECT_TRUE(all_flights_free(cache_));
}

// ---- 3. the soft-expiry refresh: try_claim, recheck_and_compute ------------------
//
// The refresher of a stale value forks inside its compute; the child unwinds.
// The refresh is still the parent's: another caller in the window must get
// the old value at once, not refresh a second time.
TEST_F(MemoizeForkTest, AChildForkedInsideARefreshNeverReleasesItsParentsRefresh) {
  shared_->now_ms = 1'000'000;
  clock::set_fake_for_testing(&shared_->now_ms);
  struct Restore {
    ~Restore() { clock::set_fake_for_testing(nullptr); }
  } restore;
  ComputeOptions o;
  o.set.ttl = 10s;
  o.stale_while_revalidate = 60s;
  o.lease = 1h;
  auto plain = [&](const char* v) {
    return [&, v] {
      bump(shared_->computes);
      return std::string(v);
    };
  };
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", plain("v1"), o), "v1");
  std::atomic_ref<std::int64_t>(shared_->now_ms).fetch_add(10'000);  // past the ttl, in the window
  const pid_t refresher = spawn([&] {
    bool in_child = false;
    try {
      const std::string r = get_or_compute<std::string>(
          cache_, "k",
          [&]() -> std::string {
            bump(shared_->computes);
            const pid_t c = ::fork();
            if (c == 0) {
              in_child = true;
              throw ChildOfTheCompute{};
            }
            if (wait_for(c) != 0) return "child failed";
            raise(shared_->started);
            await_flag(f_->finish);
            return "v2";
          },
          o);
      return r == "v2" ? 0 : 1;
    } catch (const ChildOfTheCompute&) {
      if (in_child) ::_exit(0);
      return 3;
    }
  });
  ASSERT_TRUE(eventually([&] { return is_set(shared_->started); }));
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(refresher))
      << "the child's unwinding released the refresh flight";
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", plain("second refresh"), o), "v1");
  EXPECT_EQ(read(shared_->computes), 2);
  raise(f_->finish);
  EXPECT_EQ(finishes(refresher), 0);
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", plain("v3"), o), "v2");
  EXPECT_EQ(read(shared_->computes), 2);
  EXPECT_TRUE(all_flights_free(cache_));
}

// ---- 4. a fork between the scan and the claim ------------------------------------
//
// The process forks after choosing the free slot and before its CAS (the
// test hook): parent and child race one claim from the same word. Exactly
// one of them owns (and computes), the other waits for it.
int g_forked_at_claim = 0;
pid_t g_claim_child = -1;  // in the parent: the child's pid; 0 in the child
void fork_before_claim() {
  if (g_forked_at_claim++ != 0) return;
  g_claim_child = ::fork();
}

TEST_F(MemoizeForkTest, AForkBetweenScanAndClaimLeavesOneOwnerAndOneCompute) {
  ComputeOptions o;
  o.lease = 1h;
  const pid_t p = spawn([&] {
    if (!flight::testing::set_before_claim_hook(&fork_before_claim)) return 7;
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&] {
          bump(shared_->computes);
          // The other one must be asleep on our flight before we finish.
          if (!eventually([&] { return sleeping_waiters(cache_) == 1; })) return std::string("alone");
          return std::string(g_claim_child == 0 ? "by child" : "by parent");
        },
        o);
    if (g_claim_child == 0) {
      set_result(1, r);
      return 0;
    }
    set_result(0, r);
    return g_claim_child > 0 && wait_for(g_claim_child) == 0 ? 0 : 4;
  });
  EXPECT_EQ(finishes(p), 0);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_TRUE(result(0) == "by child" || result(0) == "by parent") << result(0);
  EXPECT_EQ(result(0), result(1));
  EXPECT_TRUE(all_flights_free(cache_));
  EXPECT_EQ(sleeping_waiters(cache_), 0u);
}

// ---- 5. the child returns normally through the caller's get_or_compute -----------
//
// It stores what it computed (a value of this key's compute) but leaves the
// flight to its parent: a waiter sleeps until the parent's release and then
// reads the parent's value; nobody computes a second time.
TEST_F(MemoizeForkTest, AChildReturningNormallyFromTheComputeLeavesTheFlightToItsParent) {
  ComputeOptions o;
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    bool in_child = false;
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&]() -> std::string {
          bump(shared_->computes);
          const pid_t c = ::fork();
          if (c == 0) {
            in_child = true;
            return "child";  // on through its copy of the caller's get_or_compute
          }
          if (wait_for(c) != 0) return "child failed";
          raise(shared_->started);
          await_flag(f_->finish);
          return "owner";
        },
        o);
    if (in_child) {
      set_result(2, r);
      ::_exit(0);
    }
    set_result(0, r);
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return is_set(shared_->started); }));
  EXPECT_EQ(result(2), "child");
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner))
      << "the child's return through get_or_compute released its parent's flight";
  const pid_t waiter = spawn([&] {
    set_result(1, get_or_compute<std::string>(
                      cache_, "k",
                      [&] {
                        bump(shared_->computes);
                        return std::string("waiter");
                      },
                      o));
    raise(f_->w_done);
    return 0;
  });
  // It sleeps on the flight, or was served the child's value at once, or computed.
  ASSERT_TRUE(eventually([&] {
    return sleeping_waiters(cache_) == 1 || is_set(f_->w_done) || read(shared_->computes) == 2;
  }));
  raise(f_->finish);
  EXPECT_EQ(finishes(owner), 0);
  EXPECT_EQ(finishes(waiter), 0);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_EQ(result(0), "owner");
  EXPECT_TRUE(result(1) == "owner" || result(1) == "child") << result(1);
  EXPECT_EQ(get_or_compute<std::string>(cache_, "k", [] { return std::string("late"); }, o), "owner");
  EXPECT_TRUE(all_flights_free(cache_));
}

// ---- 6. the child asks for the key its parent is computing -----------------------
//
// A helper forked inside the compute calls get_or_compute for the same key:
// it must wait for its (live, in-lease) parent, not take the flight over on
// the strength of the copy it holds, and read the parent's value.
TEST_F(MemoizeForkTest, AChildOfTheComputeAskingForTheKeyWaitsForItsParent) {
  ComputeOptions o;
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    bool in_child = false;
    pid_t helper = -1;
    const std::string r = get_or_compute<std::string>(
        cache_, "k",
        [&]() -> std::string {
          bump(shared_->computes);
          helper = ::fork();
          if (helper == 0) {
            in_child = true;
            set_result(2, get_or_compute<std::string>(
                              cache_, "k",
                              [&] {
                                bump(shared_->computes);
                                return std::string("helper");
                              },
                              o));
            ::_exit(0);
          }
          raise(shared_->started);
          await_flag(f_->finish);
          return "owner";
        },
        o);
    if (in_child) ::_exit(9);  // never: the helper exits above
    set_result(0, r);
    return helper > 0 && wait_for(helper) == 0 ? 0 : 4;
  });
  ASSERT_TRUE(eventually([&] { return is_set(shared_->started); }));
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 1 || read(shared_->computes) == 2; }));
  EXPECT_EQ(flight_owner(cache_, "k"), std::uint32_t(owner));
  raise(f_->finish);
  EXPECT_EQ(finishes(owner), 0);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_EQ(result(0), "owner");
  EXPECT_EQ(result(2), "owner");
  EXPECT_TRUE(all_flights_free(cache_));
  EXPECT_EQ(sleeping_waiters(cache_), 0u);
}

// ---- 7. fork while another thread waits on a flight ------------------------------
//
// The child has no copy of the waiting thread, so no second `Leave`: the
// count of sleepers stays exact (one per sleeping thread of every process),
// and every waiter, the child too, wakes with the owner's value.
TEST_F(MemoizeForkTest, AForkWhileAThreadWaitsKeepsTheSleeperCountExact) {
  ComputeOptions o;
  o.lease = 1h;
  const pid_t owner = spawn([&] {
    set_result(0, get_or_compute<std::string>(
                      cache_, "k",
                      [&] {
                        bump(shared_->computes);
                        raise(shared_->started);
                        await_flag(f_->finish);
                        return std::string("owner");
                      },
                      o));
    return 0;
  });
  ASSERT_TRUE(eventually([&] { return is_set(shared_->started); }));
  const pid_t host = spawn([&] {
    std::thread t([&] {
      set_result(1, get_or_compute<std::string>(
                        cache_, "k",
                        [&] {
                          bump(shared_->computes);
                          return std::string("thread");
                        },
                        o));
    });
    if (!eventually([&] { return sleeping_waiters(cache_) == 1; })) {
      raise(f_->finish);
      t.join();
      return 5;
    }
    const pid_t c = ::fork();
    if (c == 0) {
      put(f_->pid_child, ::getpid());
      set_result(2, get_or_compute<std::string>(
                        cache_, "k",
                        [&] {
                          bump(shared_->computes);
                          return std::string("child");
                        },
                        o));
      ::_exit(0);
    }
    raise(f_->forked);
    t.join();
    return wait_for(c);
  });
  ASSERT_TRUE(eventually([&] { return is_set(f_->forked); }));
  ASSERT_TRUE(eventually([&] { return sleeping_waiters(cache_) == 2 || read(shared_->computes) > 1; }));
  EXPECT_EQ(sleeping_waiters(cache_), 2u);
  raise(f_->finish);
  EXPECT_EQ(finishes(owner), 0);
  EXPECT_EQ(finishes(host), 0);
  EXPECT_EQ(read(shared_->computes), 1);
  EXPECT_EQ(result(0), "owner");
  EXPECT_EQ(result(1), "owner");
  EXPECT_EQ(result(2), "owner");
  EXPECT_TRUE(all_flights_free(cache_));
  EXPECT_EQ(sleeping_waiters(cache_), 0u);
}

// ---- 8. fork while another thread looks its method up -----------------------------
//
// get_or_compute finds its method's statistics slot through a table the
// handle keeps, behind a process-local mutex (no stripe lock is held
// there). A thread of the parent inside that lookup when another thread
// forks leaves the child a copy of the mutex, locked by a thread that does
// not exist there: the child's first memoized call blocked for ever
// (tests/python/test_attack_py.py, ...KeyBuildingInThreadsWhileForking, hung
// on CI). The hook holds the parent's thread inside the lookup while its
// process forks; the child must memoize, and be counted under the method.
std::atomic<int> g_lookup{0};  // 0: nobody yet; 1: a thread is held inside; 2: forked

void stay_in_the_lookup_until_forked() {
  int nobody = 0;
  if (!g_lookup.compare_exchange_strong(nobody, 1)) return;  // the first call only
  while (g_lookup.load() != 2) std::this_thread::yield();
}

TEST_F(MemoizeForkTest, AChildForkedWhileAThreadLooksItsMethodUpMemoizes) {
  const pid_t host = spawn([&] {
    if (!flight::testing::set_method_lookup_hook(&stay_in_the_lookup_until_forked)) return 7;
    ComputeOptions o;
    o.method = "m";
    std::thread t([&] {
      set_result(0, get_or_compute<std::string>(cache_, "k0", [] { return std::string("thread"); }, o));
    });
    if (!eventually([] { return g_lookup.load() == 1; })) {
      g_lookup.store(2);
      t.join();
      return 5;
    }
    const pid_t c = ::fork();
    if (c == 0) {
      set_result(1, get_or_compute<std::string>(cache_, "k1", [] { return std::string("child"); }, o));
      ::_exit(0);
    }
    g_lookup.store(2);
    t.join();
    return finishes(c, 20s);
  });
  ASSERT_EQ(finishes(host), 0);
  EXPECT_EQ(result(0), "thread");
  EXPECT_EQ(result(1), "child");
  const auto stats = stats_of(cache_, "m");
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->misses, 2u);
  EXPECT_TRUE(all_flights_free(cache_));
}

// ---- 9. fork while another thread logs ----------------------------------------------
//
// The library's logger writes under spdlog's console mutex. A child forked
// while another thread of its parent was inside a log call inherited that
// mutex locked, and its first warning blocked for ever. One thread warns
// without pause (stderr to /dev/null) while its process forks 200 children,
// each of which warns once and exits: every one must finish.
TEST_F(MemoizeForkTest, AChildForkedWhileAThreadLogsCanLog) {
  const pid_t host = spawn([&] {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null < 0 || ::dup2(null, 2) < 0) return 6;
    std::atomic<bool> stop{false};
    std::thread t([&] {
      for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) log::get().warn("a warning {}", i);
    });
    int hung = 0;
    for (int i = 0; i < 200 && hung == 0; ++i) {
      const pid_t c = ::fork();
      if (c == 0) {
        log::get().warn("a child's warning");
        ::_exit(0);
      }
      if (finishes(c, 20s) != 0) ++hung;
    }
    stop.store(true);
    t.join();
    return hung;
  });
  EXPECT_EQ(finishes(host), 0);
}

}  // namespace
}  // namespace hostcache
