// hostcache-mutate — live-mutation fuzzing (issue 10).
//
// One process scribbles random bytes and words over a live segment through
// its own read-write MAP_SHARED mapping of /dev/shm/hostcache.NAME (header,
// tag table, stats / flight / method slots, stripe headers including their
// first cache line, the lock, bucket arrays and arenas; biased towards the
// headers), while N worker processes run get / set / erase / get_or_compute /
// generations / stats / clear / invalidate / re-attach on it in a loop.
//
// Whoever can write the segment can change any byte of it (DESIGN.md,
// invariant 8 and "The stripe lock"), so the pass criteria are about the
// workers, not about the data:
//   - no worker dies of a signal or exits with an unexpected status;
//   - no worker makes no progress for --stall-ms (5 s): the parent's watchdog
//     kills it and reports where it was (operation, the futex it sleeps on,
//     which region of the segment that word is in, and the scribbles that
//     hit that region);
//   - every failure is a hostcache::Error (counted by code), never another
//     exception.
// Values that do not verify (make_value/verify_value) are counted, not
// failed: a hostile writer can forge a checksummed entry.
//
// Exit status: 0 when the criteria hold, 1 otherwise, 2 on bad usage.
#include <hostcache/cache.h>
#include <hostcache/memoize.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <execinfo.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "layout.h"
#include "test_support.h"

namespace {

using namespace hostcache;
using hostcache::testing::make_value;
using hostcache::testing::verify_value;

constexpr int kMaxWorkers = 32;
constexpr int kErrcCount = 32;     // > number of Errc values
constexpr int kRing = 8192;        // scribbles remembered
constexpr int kMaxFailures = 64;   // failure reports kept
constexpr int kHealthKeys = 64;    // set+get round trips after the run

enum Region : int {
  kHeaderGeometry,  // bytes [0, offsetof(global_gen))
  kHeaderGen,       // global_gen line and folded stats line
  kTagTable,
  kStatsSlots,
  kFlightSlots,
  kMethodSlots,
  kStripeLockLine,  // first cache line of a stripe header: the lock
  kStripeHeaderRest,
  kBuckets,
  kArena,
  kRegions
};
const char* const kRegionNames[kRegions] = {"header (geometry)", "header (global_gen/folded)", "tag table",
                                            "stats slots",       "flight slots",              "method slots",
                                            "stripe lock line",  "stripe header (rest)",      "bucket array",
                                            "arena"};

enum Op : int { kGet, kSet, kErase, kCompute, kStats, kClear, kInvalidate, kGenerations, kAttach, kOps };
const char* const kOpNames[kOps] = {"get", "set", "erase", "get_or_compute", "stats", "clear", "invalidate",
                                    "generations", "attach"};

struct Geometry {
  std::uint64_t bytes, tags_off, stats_off, flights_off, methods_off, stripes_off, stripe_bytes, arena_bytes;
  std::uint32_t stripes, groups;
};

struct Scribble {
  std::int64_t t_ns;
  std::uint64_t off;
  std::uint64_t value;
  std::uint8_t width;
  std::uint8_t region;
  std::uint16_t stripe;
};

struct Worker {
  std::atomic<pid_t> pid;
  std::atomic<std::uint64_t> progress;  // ops completed
  std::atomic<int> op;                  // current op, -1 between ops
  std::atomic<std::int64_t> op_start_ns;
  // Written by the worker's SIGSEGV/SIGBUS handler before it dies.
  std::atomic<int> fault_signal;
  std::uint64_t fault_addr;
  std::int64_t fault_offset;  // in the segment, -1 when the address is not in it
  int frames;
  void* frame[24];
};

struct Board {
  std::atomic<bool> go, stop;
  std::atomic<std::uint64_t> ops[kOps];
  std::atomic<std::uint64_t> hits, misses, bad_values, computes;
  std::atomic<std::uint64_t> errors[kErrcCount];        // hostcache::Error by code
  std::atomic<std::uint64_t> errors_by_op[kOps][kErrcCount];
  char first_error[kErrcCount][160];                    // what() of the first Error of each code
  std::atomic<int> first_error_taken[kErrcCount];
  std::atomic<std::uint64_t> storms, forged_locks;
  std::int64_t forged_at_ns[16];
  std::uint32_t forged_stripe[16];
  std::atomic<std::uint64_t> set_refusals[kErrcCount];  // Errc returned by set()
  std::atomic<std::uint64_t> other_exceptions;
  char other_what[256];
  std::atomic<std::uint64_t> scribbles, per_region[kRegions];
  std::atomic<std::uint64_t> ring_n;
  Scribble ring[kRing];
  Worker workers[kMaxWorkers];
  // final stats, read by a child (it may crash on a corrupt segment)
  Stats final_stats;
  std::atomic<int> final_ok;
  std::atomic<std::uint64_t> health_ok, health_busy, health_done, health_errors[kErrcCount];
};

Board* g_board = nullptr;

std::int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// ---- the scribbler ------------------------------------------------------------

struct Span {
  std::uint64_t from, to;
};

Span span_of(const Geometry& g, Region r, std::uint32_t stripe) {
  const std::uint64_t base = g.stripes_off + std::uint64_t(stripe) * g.stripe_bytes;
  const std::uint64_t buckets = base + sizeof(layout::StripeHeader);
  const std::uint64_t arena = buckets + std::uint64_t(g.groups) * 64;
  switch (r) {
    case kHeaderGeometry: return {0, offsetof(layout::Header, global_gen)};
    case kHeaderGen: return {offsetof(layout::Header, global_gen), sizeof(layout::Header)};
    case kTagTable: return {g.tags_off, g.stats_off};
    case kStatsSlots: return {g.stats_off, g.flights_off};
    case kFlightSlots: return {g.flights_off, g.methods_off};
    case kMethodSlots: return {g.methods_off, g.stripes_off};
    case kStripeLockLine: return {base, base + 64};
    case kStripeHeaderRest: return {base + 64, buckets};
    case kBuckets: return {buckets, arena};
    case kArena: return {arena, std::min(arena + g.arena_bytes, base + g.stripe_bytes)};
    default: return {0, 0};
  }
}

// Which region (and stripe) a segment offset lies in.
std::pair<Region, std::uint32_t> region_of(const Geometry& g, std::uint64_t off) {
  for (int r = kHeaderGeometry; r <= kMethodSlots; ++r) {
    const Span s = span_of(g, Region(r), 0);
    if (off >= s.from && off < s.to) return {Region(r), 0};
  }
  if (off >= g.stripes_off) {
    const std::uint32_t stripe = std::uint32_t((off - g.stripes_off) / g.stripe_bytes);
    for (int r = kStripeLockLine; r <= kArena; ++r) {
      const Span s = span_of(g, Region(r), stripe);
      if (off >= s.from && off < s.to) return {Region(r), stripe};
    }
  }
  return {kRegions, 0};
}

// Storms of random scribbles (storm_ms) alternate with quiet periods
// (quiet_ms) in which nothing is written, so that what the last storm left
// behind persists long enough for a hang to show. Every other quiet period
// starts with one forged lock word: the first 4 bytes of a random stripe's
// lock line set to the pid of a live thread that will never unlock it (the
// fuzzer's parent).
int scribbler(const std::string& path, const Geometry& g, std::uint64_t seed, int rate_per_s, int storm_ms,
              int quiet_ms) {
  const int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) return 10;
  void* m = ::mmap(nullptr, g.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return 11;
  auto* base = static_cast<std::uint8_t*>(m);
  std::mt19937_64 rng(seed ^ 0xdeadbeefcafef00dull);
  // Weights, per mille: headers and stripe headers first.
  const int weights[kRegions] = {120, 60, 60, 40, 80, 40, 220, 150, 110, 120};
  const std::int64_t pause_ns = rate_per_s > 0 ? 1'000'000'000 / rate_per_s : 0;
  // Every 200 ms the header's geometry is put back as it was, so that attach
  // meets a few fresh scribbles at a time rather than only a broken magic.
  constexpr std::size_t kGeo = offsetof(layout::Header, global_gen);
  std::uint8_t pristine[kGeo];
  std::memcpy(pristine, base, kGeo);
  std::int64_t next_heal = now_ns() + 200'000'000;
  std::vector<std::uint8_t> pristine_locks(std::size_t(g.stripes) * 64);
  for (std::uint32_t i = 0; i < g.stripes; ++i) {
    std::memcpy(&pristine_locks[i * 64], base + span_of(g, kStripeLockLine, i).from, 64);
  }
  while (!g_board->go.load()) sched_yield();
  std::int64_t storm_end = now_ns() + std::int64_t(storm_ms) * 1'000'000;
  int quiet_index = 0;
  while (!g_board->stop.load()) {
    if (quiet_ms > 0 && now_ns() >= storm_end) {
      // The lock lines as they were at the start (unlocked), so that the
      // forged word below is the only damage to them.
      for (std::uint32_t i = 0; i < g.stripes; ++i) {
        std::uint8_t* line = base + span_of(g, kStripeLockLine, i).from;
        for (int b = 0; b < 64; ++b) std::atomic_ref<std::uint8_t>(line[b]).store(pristine_locks[i * 64 + b]);
      }
      if (quiet_index++ % 2 == 0) {
        const std::uint32_t stripe = std::uint32_t(rng() % g.stripes);
        const std::uint64_t off = span_of(g, kStripeLockLine, stripe).from;
        const std::uint32_t tid = std::uint32_t(::getppid());
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(base + off)).store(tid);
        const std::uint64_t k = g_board->forged_locks.fetch_add(1);
        if (k < 16) {
          g_board->forged_at_ns[k] = now_ns();
          g_board->forged_stripe[k] = stripe;
        }
        const std::uint64_t n = g_board->ring_n.fetch_add(1);
        g_board->ring[n % kRing] = Scribble{now_ns(), off, tid, 4, std::uint8_t(kStripeLockLine), std::uint16_t(stripe)};
      }
      const std::int64_t quiet_end = now_ns() + std::int64_t(quiet_ms) * 1'000'000;
      while (!g_board->stop.load() && now_ns() < quiet_end) {
        timespec ts{0, 10'000'000};
        ::nanosleep(&ts, nullptr);
      }
      storm_end = now_ns() + std::int64_t(storm_ms) * 1'000'000;
      g_board->storms.fetch_add(1);
      continue;
    }
    if (now_ns() >= next_heal) {
      for (std::size_t i = 0; i < kGeo; ++i) std::atomic_ref<std::uint8_t>(base[i]).store(pristine[i], std::memory_order_relaxed);
      next_heal += 200'000'000;
    }
    int pick = int(rng() % 1000), r = 0;
    while (r < kRegions - 1 && pick >= weights[r]) pick -= weights[r++];
    const std::uint32_t stripe = std::uint32_t(rng() % g.stripes);
    const Span s = span_of(g, Region(r), stripe);
    if (s.to <= s.from + 8) continue;
    const std::uint64_t choice = rng() % 8;
    std::uint64_t value = rng();
    switch (rng() % 6) {  // values that hurt: small, huge, all ones, near-offsets, pids
      case 0: value &= 0xff; break;
      case 1: value = ~std::uint64_t{0}; break;
      case 2: value = std::uint64_t(::getppid()) | (value & 0xffffffff00000000ull); break;
      case 3: value %= g.stripe_bytes; break;
      default: break;
    }
    std::uint64_t off;
    std::uint8_t width;
    if (choice < 5) {  // an aligned word
      off = (s.from + (rng() % ((s.to - s.from) / 8)) * 8);
      width = (rng() % 2) ? 8 : 4;
      if (width == 8) {
        std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(base + off)).store(value, std::memory_order_relaxed);
      } else {
        off += (rng() % 2) * 4;
        std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(base + off))
            .store(std::uint32_t(value), std::memory_order_relaxed);
      }
    } else {  // a byte
      off = s.from + rng() % (s.to - s.from);
      width = 1;
      std::atomic_ref<std::uint8_t>(base[off]).store(std::uint8_t(value), std::memory_order_relaxed);
    }
    const std::uint64_t n = g_board->ring_n.fetch_add(1);
    g_board->ring[n % kRing] = Scribble{now_ns(), off, value, width, std::uint8_t(r), std::uint16_t(stripe)};
    g_board->scribbles.fetch_add(1);
    g_board->per_region[r].fetch_add(1);
    if (pause_ns > 0) {
      timespec ts{0, long(pause_ns)};
      ::nanosleep(&ts, nullptr);
    }
  }
  return 0;
}

// ---- the workers --------------------------------------------------------------

void count_error(const Error& e, int op) {
  const int c = std::min(int(e.code()), kErrcCount - 1);
  g_board->errors[c].fetch_add(1);
  g_board->errors_by_op[op][c].fetch_add(1);
  if (g_board->first_error_taken[c].exchange(1) == 0) {
    std::snprintf(g_board->first_error[c], sizeof g_board->first_error[c], "%s: %s", kOpNames[op], e.what());
  }
}

Cache* g_master = nullptr;

// Config::lock_timeout where the library has it (a bounded wait for a stripe
// lock held by a live thread); nothing where it does not.
template <class C>
void set_lock_timeout(C& config, std::chrono::milliseconds ms) {
  if constexpr (requires { config.lock_timeout; }) config.lock_timeout = ms;
}
bool g_skip[kOps] = {};  // --skip OP  // opened by the parent before any scribble; workers inherit it (prefork)

std::uint64_t g_map_lo = 0, g_map_hi = 0;  // this worker's mapping of the segment

// The segment's mapping in /proc/PID/maps, found by inode: the segment is
// created under a temporary name and linked, so the path shown may differ.
bool mapping_of(const std::string& maps_path, const std::string& shm_path, std::uint64_t& lo, std::uint64_t& hi) {
  struct stat st{};
  if (::stat(shm_path.c_str(), &st) != 0) return false;
  std::ifstream maps(maps_path);
  std::string line;
  while (std::getline(maps, line)) {
    std::uint64_t a = 0, b = 0, off = 0, ino = 0;
    char perms[8], dev[16];
    if (std::sscanf(line.c_str(), "%" SCNx64 "-%" SCNx64 " %7s %" SCNx64 " %15s %" SCNu64, &a, &b, perms, &off, dev,
                    &ino) != 6) {
      continue;
    }
    if (ino == std::uint64_t(st.st_ino) && off == 0 && line.find("/dev/shm/") != std::string::npos) {
      lo = a;
      hi = b;
      return true;
    }
  }
  return false;
}
int g_slot = -1;

// Records where the worker faulted (and the stack) for the parent, then dies
// of the same signal.
void on_fault(int sig, siginfo_t* info, void*) {
  Worker& me = g_board->workers[g_slot];
  const auto addr = std::uint64_t(reinterpret_cast<std::uintptr_t>(info->si_addr));
  me.fault_addr = addr;
  me.fault_offset = addr >= g_map_lo && addr < g_map_hi ? std::int64_t(addr - g_map_lo) : -1;
  me.frames = ::backtrace(me.frame, 24);
  me.fault_signal.store(sig);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void find_mapping(const std::string& shm_path) { mapping_of("/proc/self/maps", shm_path, g_map_lo, g_map_hi); }

int worker(const std::string& name, int slot, std::uint64_t seed) {
  Worker& me = g_board->workers[slot];
  Cache* cache = g_master;
  g_slot = slot;
  find_mapping("/dev/shm/hostcache." + name);
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
  ::sigaction(SIGSEGV, &sa, nullptr);
  ::sigaction(SIGBUS, &sa, nullptr);
  ::sigaction(SIGFPE, &sa, nullptr);
  ::sigaction(SIGABRT, &sa, nullptr);  // glibc's own assertions on a scribbled mutex
  std::mt19937_64 rng(seed * 1000003 + std::uint64_t(slot) * 7919 + std::uint64_t(::getpid()));
  const char* tags[] = {"m.a", "m.b", "m.c", "m.d", "m.e"};
  std::string v;
  while (!g_board->go.load()) sched_yield();
  for (std::uint64_t i = 0; !g_board->stop.load(); ++i) {
    const unsigned r = unsigned(rng() % 1000);
    int op = r < 400   ? kGet
             : r < 640 ? kSet
             : r < 730 ? kErase
             : r < 830 ? kCompute
             : r < 870 ? kStats
             : r < 880 ? kClear
             : r < 930 ? kInvalidate
             : r < 990 ? kGenerations
                       : kAttach;
    if (g_skip[op]) continue;
    me.op.store(op);
    me.op_start_ns.store(now_ns());
    const std::string key = "k" + std::to_string(rng() % 2000);
    try {
      switch (op) {
        case kGet:
          if (cache->get(key, v)) {
            g_board->hits.fetch_add(1);
            if (!verify_value(key, v)) g_board->bad_values.fetch_add(1);
          } else {
            g_board->misses.fetch_add(1);
          }
          break;
        case kSet: {
          SetOptions o;
          o.ttl = std::chrono::milliseconds(rng() % 4 == 0 ? 50 + rng() % 500 : 600'000);
          const unsigned ntags = unsigned(rng() % 3);
          for (unsigned t = 0; t < ntags; ++t) o.tags.push_back(tags[rng() % 5]);
          const Errc e = cache->set(key, make_value(key, rng(), 20 + rng() % 2000), o);
          if (e != Errc::ok) g_board->set_refusals[std::min(int(e), kErrcCount - 1)].fetch_add(1);
          break;
        }
        case kErase: cache->erase(key); break;
        case kCompute: {
          ComputeOptions o;
          o.lease = std::chrono::milliseconds(1000);
          o.set.tags = {tags[rng() % 5]};
          const std::string got = get_or_compute<std::string>(
              *cache, "c" + key,
              [&] {
                g_board->computes.fetch_add(1);
                return make_value("c" + key, rng(), 40 + rng() % 200);
              },
              o);
          if (!verify_value("c" + key, got)) g_board->bad_values.fetch_add(1);
          break;
        }
        case kStats: (void)cache->stats(); break;
        case kClear: cache->clear(); break;
        case kInvalidate: cache->invalidate(tags[rng() % 5]); break;
        case kGenerations: (void)cache->generations({tags[rng() % 5], tags[rng() % 5]}); break;
        case kAttach: {  // a fresh handle must validate what it maps
          Cache fresh = Cache::attach(name);
          (void)fresh.get(key, v);
          break;
        }
      }
    } catch (const Error& e) {
      count_error(e, op);
    } catch (const std::exception& e) {
      if (g_board->other_exceptions.fetch_add(1) == 0) {
        std::snprintf(g_board->other_what, sizeof g_board->other_what, "%s: %s", kOpNames[op], e.what());
      }
    }
    g_board->ops[op].fetch_add(1);
    me.op.store(-1);
    me.progress.fetch_add(1);
  }
  return 0;
}

// ---- diagnosis of a stuck or crashed worker -------------------------------------

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The futex syscall a stuck process is in, and the segment region of its word.
std::string where_stuck_syscall(pid_t pid, const std::string& shm_path, const Geometry& g) {
  std::string out;
  std::string sys = read_file("/proc/" + std::to_string(pid) + "/syscall");
  while (!sys.empty() && (sys.back() == '\n')) sys.pop_back();
  const std::string wchan = read_file("/proc/" + std::to_string(pid) + "/wchan");
  out += "syscall [" + sys + "] wchan [" + wchan + "]";
  std::istringstream ss(sys);
  long nr = -1;
  std::string arg1;
  if (!(ss >> nr >> arg1)) return out + " (spinning in user space?)";
  if (nr != 202) return out + " (not a futex wait)";  // x86-64 futex
  const std::uint64_t addr = std::strtoull(arg1.c_str(), nullptr, 16);
  std::uint64_t lo = 0, hi = 0;
  if (mapping_of("/proc/" + std::to_string(pid) + "/maps", shm_path, lo, hi) && addr >= lo && addr < hi) {
    const std::uint64_t off = addr - lo;
    const auto [region, stripe] = region_of(g, off);
    char buf[200];
    std::snprintf(buf, sizeof buf, "; futex word at segment offset %" PRIu64 " = %s%s", off,
                  region < kRegions ? kRegionNames[region] : "?",
                  region >= kStripeLockLine && region < kRegions ? (" of stripe " + std::to_string(stripe)).c_str() : "");
    out += buf;
    // Scribbles that hit that cache line.
    const std::uint64_t line_lo = off & ~std::uint64_t{63};
    const std::uint64_t n = g_board->ring_n.load();
    int shown = 0;
    for (std::uint64_t i = n; i > 0 && i + kRing > n && shown < 4; --i) {
      const Scribble& s = g_board->ring[(i - 1) % kRing];
      if ((s.off & ~std::uint64_t{63}) == line_lo) {
        std::snprintf(buf, sizeof buf, "\n      scribbled there: offset %" PRIu64 " width %u value 0x%" PRIx64 " (%.3f s ago)",
                      s.off, unsigned(s.width), s.value, double(now_ns() - s.t_ns) / 1e9);
        out += buf;
        ++shown;
      }
    }
    if (shown == 0) out += "\n      (no scribble on that cache line among the last " + std::to_string(kRing) + ")";
    return out;
  }
  return out + " (futex address not in the segment's mapping)";
}

// The stack of a stuck process, from gdb when there is one (the first few
// hangs only: it takes a second or two). HOSTCACHE_MUTATE_GDB=0 turns it off.
std::string gdb_stack(pid_t pid) {
  static int calls = 0;
  const char* env = std::getenv("HOSTCACHE_MUTATE_GDB");
  if ((env && std::strcmp(env, "0") == 0) || calls++ >= 4 || ::access("/usr/bin/gdb", X_OK) != 0) return "";
  const std::string cmd = "timeout 20 /usr/bin/gdb -p " + std::to_string(pid) +
                          " -batch -nx -ex 'set print frame-arguments none' -ex bt 2>/dev/null | grep '^#'";
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char line[512];
    for (int n = 0; std::fgets(line, sizeof line, f) && n < 14; ++n) out += std::string("        ") + line;
    ::pclose(f);
  }
  return out.empty() ? "" : "\n      stack (gdb):\n" + out;
}

// Where a stuck worker sleeps: the futex (or other) syscall it is in, the
// segment region that address falls in, and its stack.
std::string where_stuck(pid_t pid, const std::string& shm_path, const Geometry& g) {
  return where_stuck_syscall(pid, shm_path, g) + gdb_stack(pid);
}

std::string recent_scribbles(int k) {
  std::string out;
  const std::uint64_t n = g_board->ring_n.load();
  char buf[200];
  for (std::uint64_t i = n; i > 0 && i + std::uint64_t(k) > n; --i) {
    const Scribble& s = g_board->ring[(i - 1) % kRing];
    std::snprintf(buf, sizeof buf, "      %-26s stripe %-3u offset %-9" PRIu64 " width %u value 0x%016" PRIx64 " (%.3f s ago)\n",
                  kRegionNames[s.region], unsigned(s.stripe), s.off, unsigned(s.width), s.value,
                  double(now_ns() - s.t_ns) / 1e9);
    out += buf;
  }
  return out;
}

void usage(FILE* f) {
  std::fprintf(f,
               "usage: hostcache-mutate [--seconds N] [--seed S] [--workers N] [--capacity BYTES]\n"
               "                        [--stripes N] [--rate SCRIBBLES_PER_S] [--stall-ms MS]\n"
               "                        [--storm-ms MS] [--quiet-ms MS] [--skip OP]...\n"
               "  One process scribbles random bytes/words over a live segment (headers, tag\n"
               "  table, stats/flight/method slots, stripe headers and their lock line, buckets,\n"
               "  arenas) while N workers run get/set/erase/get_or_compute/stats/clear/\n"
               "  invalidate/attach on it. Fails (exit 1) if a worker dies of a signal, throws\n"
               "  anything but hostcache::Error, or makes no progress for --stall-ms.\n"
               "  Storms of scribbles (--storm-ms) alternate with quiet periods (--quiet-ms,\n"
               "  0: never quiet) so that damage persists; every other quiet period begins\n"
               "  with one lock word forged to name a live thread that never unlocks.\n"
               "  --skip OP leaves out one operation (get set erase get_or_compute stats clear\n"
               "  invalidate generations attach), e.g. to look past a known crash.\n"
               "  defaults: --seconds 20 --seed 1 --workers 4 --capacity 4194304 --stripes 4\n"
               "            --rate 2000 --stall-ms 5000 --storm-ms 1000 --quiet-ms 6000\n");
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 20, workers = 4, rate = 2000, stall_ms = 5000, storm_ms = 1000, quiet_ms = 6000;
  std::uint64_t seed = 1, capacity = 4u << 20;
  unsigned stripes = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        usage(stderr);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(stdout);
      return 0;
    } else if (a == "--seconds") {
      seconds = std::atoi(next());
    } else if (a == "--seed") {
      seed = std::strtoull(next(), nullptr, 0);
    } else if (a == "--workers") {
      workers = std::atoi(next());
    } else if (a == "--capacity") {
      capacity = std::strtoull(next(), nullptr, 0);
    } else if (a == "--stripes") {
      stripes = unsigned(std::atoi(next()));
    } else if (a == "--rate") {
      rate = std::atoi(next());
    } else if (a == "--skip") {
      const std::string what = next();
      bool known = false;
      for (int o = 0; o < kOps; ++o) {
        if (what == kOpNames[o]) g_skip[o] = known = true;
      }
      if (!known) {
        std::fprintf(stderr, "--skip: unknown operation %s\n", what.c_str());
        return 2;
      }
    } else if (a == "--storm-ms") {
      storm_ms = std::atoi(next());
    } else if (a == "--quiet-ms") {
      quiet_ms = std::atoi(next());
    } else if (a == "--stall-ms") {
      stall_ms = std::atoi(next());
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }
  if (workers < 1 || workers > kMaxWorkers || seconds < 1 || stall_ms < 100) {
    usage(stderr);
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  g_board = static_cast<Board*>(hostcache::testing::shared_memory(sizeof(Board)));
  const std::string name = hostcache::testing::unique_name("mutate");
  Config cfg = hostcache::testing::small_config(name, capacity, stripes);
  // A forged lock word naming a live thread costs a wait of lock_timeout per
  // lock; a memoized call takes several: keep them well inside the watchdog.
  set_lock_timeout(cfg, std::chrono::milliseconds(200));
  Geometry g{};
  std::string path;
  std::optional<Cache> master(Cache::open(cfg));
  g_master = &*master;
  std::uint8_t pristine_header[sizeof(layout::Header)];
  {
    Cache& cache = *master;
    // Some data for the workers to find.
    for (int k = 0; k < 2000; k += 2) {
      const std::string key = "k" + std::to_string(k);
      cache.set(key, make_value(key, 1, 100));
    }
    path = "/dev/shm/hostcache." + name;
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
      std::perror(path.c_str());
      return 1;
    }
    layout::Header h;
    if (::pread(fd, &h, sizeof h, 0) != ssize_t(sizeof h)) return 1;
    std::memcpy(pristine_header, &h, sizeof h);
    ::close(fd);
    g = Geometry{h.segment_bytes, h.tags_off,    h.stats_off,    h.flights_off, h.methods_off,
                 h.stripes_off,   h.stripe_bytes, h.arena_bytes, h.stripe_count, h.groups_per_stripe};
  }
  std::printf("hostcache-mutate: segment %s, %" PRIu64 " B, %u stripes of %" PRIu64 " B (arena %" PRIu64
              "), %d workers, %d s, seed %" PRIu64 ", %d scribbles/s\n",
              name.c_str(), g.bytes, g.stripes, g.stripe_bytes, g.arena_bytes, workers, seconds, seed, rate);
  std::fflush(stdout);

  std::vector<std::string> failures;
  const std::int64_t t0 = now_ns();
  auto fail = [&](std::string what) {
    // One line now (a later hang of this tool still leaves a trace), all of it at the end.
    std::fprintf(stderr, "[mutate +%.1f s] %s\n", double(now_ns() - t0) / 1e9, what.substr(0, what.find('\n')).c_str());
    if (failures.size() < kMaxFailures) failures.push_back(std::move(what));
  };
  int crashes = 0, hangs = 0, bad_exits = 0, respawns = 0;
  std::map<int, int> crash_signals;
  std::map<std::string, int> crash_kinds;  // "op | signal | top frame" -> count

  auto start_worker = [&](int slot) {
    Worker& w = g_board->workers[slot];
    w.progress.store(0);
    w.op.store(-1);
    w.op_start_ns.store(now_ns());
    w.fault_signal.store(0);
    w.frames = 0;
    const pid_t pid = hostcache::testing::spawn([&, slot] { return worker(name, slot, seed + std::uint64_t(respawns)); });
    w.pid.store(pid);
  };
  for (int s = 0; s < workers; ++s) start_worker(s);
  const pid_t scribbler_pid = hostcache::testing::spawn([&] { return scribbler(path, g, seed, rate, storm_ms, quiet_ms); });
  g_board->go.store(true);

  const std::int64_t end = t0 + std::int64_t(seconds) * 1'000'000'000;
  std::vector<std::uint64_t> last_progress(std::size_t(workers), 0);
  std::vector<std::int64_t> last_change(std::size_t(workers), t0);
  auto describe_worker = [&](int slot) {
    const Worker& w = g_board->workers[slot];
    const int op = w.op.load();
    char buf[160];
    std::snprintf(buf, sizeof buf, "worker %d (pid %d) in %s for %.1f s after %" PRIu64 " ops", slot, int(w.pid.load()),
                  op >= 0 ? kOpNames[op] : "(between ops)", double(now_ns() - w.op_start_ns.load()) / 1e9,
                  w.progress.load());
    return std::string(buf);
  };
  auto reap = [&](bool respawn) {
    for (int s = 0; s < workers; ++s) {
      const pid_t pid = g_board->workers[s].pid.load();
      if (pid <= 0) continue;
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) != pid) continue;
      if (WIFSIGNALED(st)) {
        ++crashes;
        ++crash_signals[WTERMSIG(st)];
        const Worker& w = g_board->workers[s];
        const int op = w.op.load();
        std::string where = "?";
        std::string stack;
        if (w.fault_signal.load() != 0 && w.frames > 2) {
          char** names = ::backtrace_symbols(w.frame, w.frames);
          // frame 0 is the handler, 1 the signal trampoline
          where = names ? names[2] : "?";
          for (int f = 2; names && f < w.frames && f < 16; ++f) stack += std::string("        ") + names[f] + "\n";
          std::free(names);
        }
        std::string key = std::string(op >= 0 ? kOpNames[op] : "-") + " | " + strsignal(WTERMSIG(st)) + " | " + where;
        if (crash_kinds[key]++ == 0) {
          char buf[200];
          if (w.fault_signal.load() == SIGABRT) {
            std::snprintf(buf, sizeof buf, "abort() (an assertion in the library or libc)");
          } else if (w.fault_signal.load() != 0) {
            if (w.fault_offset >= 0) {
              const auto [region, stripe] = region_of(g, std::uint64_t(w.fault_offset));
              std::snprintf(buf, sizeof buf, "fault address 0x%" PRIx64 " = segment offset %" PRId64 " (%s, stripe %u)",
                            w.fault_addr, w.fault_offset, region < kRegions ? kRegionNames[region] : "?", stripe);
            } else {
              std::snprintf(buf, sizeof buf, "fault address 0x%" PRIx64 " (outside the segment's mapping)", w.fault_addr);
            }
          } else {
            std::snprintf(buf, sizeof buf, "no fault record");
          }
          fail("CRASH (first of its kind): " + describe_worker(s) + " died of signal " + std::to_string(WTERMSIG(st)) +
               " (" + strsignal(WTERMSIG(st)) + "); " + buf + "\n      stack:\n" + stack +
               "      last scribbles before it:\n" + recent_scribbles(8));
        }
        g_board->workers[s].pid.store(0);
      } else if (WEXITSTATUS(st) != 0) {
        ++bad_exits;
        fail("EXIT: " + describe_worker(s) + " exited with status " + std::to_string(WEXITSTATUS(st)));
        g_board->workers[s].pid.store(0);
      } else {
        g_board->workers[s].pid.store(0);
      }
      if (respawn && respawns < 500) {
        ++respawns;
        start_worker(s);
        last_progress[std::size_t(s)] = 0;
        last_change[std::size_t(s)] = now_ns();
      }
    }
  };
  while (now_ns() < end) {
    timespec ts{0, 50'000'000};
    ::nanosleep(&ts, nullptr);
    reap(true);
    const std::int64_t t = now_ns();
    for (int s = 0; s < workers; ++s) {
      Worker& w = g_board->workers[s];
      const std::uint64_t p = w.progress.load();
      if (p != last_progress[std::size_t(s)]) {
        last_progress[std::size_t(s)] = p;
        last_change[std::size_t(s)] = t;
        continue;
      }
      if (t - last_change[std::size_t(s)] < std::int64_t(stall_ms) * 1'000'000) continue;
      const pid_t pid = w.pid.load();
      if (pid <= 0) continue;
      ++hangs;
      char at[32];
      std::snprintf(at, sizeof at, "at +%.1f s: ", double(t - t0) / 1e9);
      fail("HANG " + std::string(at) + describe_worker(s) + ", no progress for " + std::to_string(stall_ms) + " ms; " +
           where_stuck(pid, path, g));
      ::kill(pid, SIGKILL);
      int st = 0;
      ::waitpid(pid, &st, 0);
      w.pid.store(0);
      if (respawns < 500) {
        ++respawns;
        start_worker(s);
      }
      last_progress[std::size_t(s)] = 0;
      last_change[std::size_t(s)] = now_ns();
    }
  }
  g_board->stop.store(true);
  {
    int st = 0;
    ::waitpid(scribbler_pid, &st, 0);
  }
  // Workers get stall_ms to finish their last op.
  const std::int64_t deadline = now_ns() + std::int64_t(stall_ms) * 1'000'000;
  for (;;) {
    reap(false);
    bool any = false;
    for (int s = 0; s < workers; ++s) any = any || g_board->workers[s].pid.load() > 0;
    if (!any) break;
    if (now_ns() > deadline) {
      for (int s = 0; s < workers; ++s) {
        const pid_t pid = g_board->workers[s].pid.load();
        if (pid <= 0) continue;
        ++hangs;
        fail("HANG (at stop): " + describe_worker(s) + "; " + where_stuck(pid, path, g));
        ::kill(pid, SIGKILL);
        int st = 0;
        ::waitpid(pid, &st, 0);
        g_board->workers[s].pid.store(0);
      }
      break;
    }
    timespec ts{0, 10'000'000};
    ::nanosleep(&ts, nullptr);
  }

  // The segment's own account, read by a child through the inherited handle
  // (a corrupt segment may crash it), after the header's geometry is put back.
  {
    const int fd = ::open(path.c_str(), O_RDWR);
    if (fd >= 0) {
      (void)!::pwrite(fd, pristine_header, offsetof(layout::Header, global_gen), 0);
      ::close(fd);
    }
  }
  const pid_t reader = hostcache::testing::spawn([&] {
    try {
      // Health after the run: does the segment still serve? (the lock lines
      // and the rest are as the last storm and forge left them)
      // A fresh handle (the header's geometry was put back) with a short lock
      // wait, so that a forged lock word costs 200 ms per operation.
      std::optional<Cache> fresh;
      try {
        Config c = cfg;
        set_lock_timeout(c, std::chrono::milliseconds(200));
        fresh.emplace(Cache::open(c));
      } catch (const Error&) {
      }
      Cache& h = fresh ? *fresh : *g_master;
      for (int k = 0; k < kHealthKeys; ++k) {
        const std::string key = "health" + std::to_string(k);
        try {
          const Errc e = h.set(key, make_value(key, 1, 64));
          if (e == Errc::ok && h.get(key).has_value()) g_board->health_ok.fetch_add(1);
          if (e != Errc::ok) g_board->health_errors[std::min(int(e), kErrcCount - 1)].fetch_add(1);
        } catch (const Error& e) {
          g_board->health_errors[std::min(int(e.code()), kErrcCount - 1)].fetch_add(1);
        }
        g_board->health_done.fetch_add(1);
      }
      g_board->final_stats = h.stats();
      g_board->final_ok.store(1);
    } catch (const Error& e) {
      g_board->final_ok.store(2);
      std::snprintf(g_board->other_what + 128, 128, "%s", e.what());
    }
    return 0;
  });
  int reader_status = -1;
  std::uint64_t health_seen = 0;
  for (std::int64_t until = now_ns() + std::int64_t(stall_ms) * 1'000'000;;) {
    int st = 0;
    if (::waitpid(reader, &st, WNOHANG) == reader) {
      reader_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      break;
    }
    if (const std::uint64_t d = g_board->health_done.load(); d != health_seen) {  // progress
      health_seen = d;
      until = now_ns() + std::int64_t(stall_ms) * 1'000'000;
    }
    if (now_ns() > until) {
      ++hangs;
      fail("HANG (health check after the run): set/get/stats on the segment made no progress for " +
           std::to_string(stall_ms) + " ms; " + where_stuck(reader, path, g));
      ::kill(reader, SIGKILL);
      ::waitpid(reader, &st, 0);
      reader_status = 128 + SIGKILL;
      break;
    }
    timespec ts{0, 10'000'000};
    ::nanosleep(&ts, nullptr);
  }
  Cache::remove(name);
  // The parent's handle is not closed: its destructor would touch the
  // scribbled segment in this process.

  // ---- summary ----
  std::uint64_t total_ops = 0;
  for (auto& o : g_board->ops) total_ops += o.load();
  std::printf("ops %" PRIu64 " (", total_ops);
  for (int o = 0; o < kOps; ++o) std::printf("%s%s %" PRIu64, o ? ", " : "", kOpNames[o], g_board->ops[o].load());
  std::printf(")\nhits %" PRIu64 " misses %" PRIu64 " computes %" PRIu64 " values that did not verify %" PRIu64
              " (counted, not failed)\n",
              g_board->hits.load(), g_board->misses.load(), g_board->computes.load(), g_board->bad_values.load());
  std::printf("scribbles %" PRIu64 ":", g_board->scribbles.load());
  for (int r = 0; r < kRegions; ++r) std::printf("%s %s %" PRIu64, r ? "," : "", kRegionNames[r], g_board->per_region[r].load());
  std::printf("\nhostcache::Error thrown, by code:");
  bool anyerr = false;
  for (int e = 0; e < kErrcCount; ++e) {
    if (const std::uint64_t n = g_board->errors[e].load()) {
      std::printf(" %s %" PRIu64, to_string(Errc(e)), n);
      anyerr = true;
    }
  }
  std::printf("%s\n", anyerr ? "" : " none");
  for (int e = 0; e < kErrcCount; ++e) {
    if (!g_board->errors[e].load()) continue;
    std::printf("  %s by op:", to_string(Errc(e)));
    for (int o = 0; o < kOps; ++o) {
      if (const std::uint64_t n = g_board->errors_by_op[o][e].load()) std::printf(" %s %" PRIu64, kOpNames[o], n);
    }
    std::printf("; first: %s\n", g_board->first_error[e]);
  }
  std::printf("storms %" PRIu64 ", forged lock words %" PRIu64 ":", g_board->storms.load() + 1, g_board->forged_locks.load());
  for (std::uint64_t k = 0; k < std::min<std::uint64_t>(16, g_board->forged_locks.load()); ++k) {
    std::printf(" [stripe %u at +%.1f s]", g_board->forged_stripe[k], double(g_board->forged_at_ns[k] - t0) / 1e9);
  }
  std::printf("\nset() refusals, by code:");
  anyerr = false;
  for (int e = 0; e < kErrcCount; ++e) {
    if (const std::uint64_t n = g_board->set_refusals[e].load()) {
      std::printf(" %s %" PRIu64, to_string(Errc(e)), n);
      anyerr = true;
    }
  }
  std::printf("%s\nother exceptions %" PRIu64 "%s%s\n", anyerr ? "" : " none", g_board->other_exceptions.load(),
              g_board->other_exceptions.load() ? ", first: " : "", g_board->other_exceptions.load() ? g_board->other_what : "");
  if (g_board->final_ok.load() == 1) {
    const Stats& s = g_board->final_stats;
    std::printf("segment stats: sets %" PRIu64 " gets %" PRIu64 " evictions %" PRIu64 " recoveries (repairs) %" PRIu64
                " resets %" PRIu64 " entries %" PRIu64 " bytes_used %" PRIu64 "\n",
                s.sets, s.gets, s.evictions, s.recoveries, s.resets, s.entries, s.bytes_used);
  } else if (g_board->final_ok.load() == 2) {
    std::printf("segment stats: stats() threw: %s\n", g_board->other_what + 128);
  } else {
    std::printf("segment stats: the reader exited with status %d\n", reader_status);
    if (reader_status >= 128 && reader_status != 128 + SIGKILL) fail("CRASH: reading stats() of the scribbled segment died of signal " +
                                   std::to_string(reader_status - 128));
  }
  std::printf("health after the run: %" PRIu64 " of %d set+get round trips ok", g_board->health_ok.load(), kHealthKeys);
  for (int e = 0; e < kErrcCount; ++e) {
    if (const std::uint64_t n = g_board->health_errors[e].load()) std::printf(", %s %" PRIu64, to_string(Errc(e)), n);
  }
  std::printf("\n");
  if (g_board->other_exceptions.load()) fail("exceptions other than hostcache::Error were thrown");
  std::printf("crashes %d", crashes);
  for (auto [sig, n] : crash_signals) std::printf(" [%s x%d]", strsignal(sig), n);
  std::printf(", hangs %d, bad exits %d, respawns %d\n", hangs, bad_exits, respawns);
  for (const auto& [k, n] : crash_kinds) std::printf("  crash kind x%d: %s\n", n, k.c_str());
  for (const auto& f : failures) std::printf("  %s\n", f.c_str());
  const bool ok = failures.empty();
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  std::fflush(stdout);
  ::_exit(ok ? 0 : 1);
}
