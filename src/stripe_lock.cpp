#include "stripe_lock.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <ctime>
#include <mutex>
#include <string>

#include "atomic_words.h"
#include "clock.h"
#include "stdio_fill.h"

#include <hostcache/errors.h>

namespace hostcache::stripe_lock {
namespace {

using steady = std::chrono::steady_clock;

// Busy-waiting before sleeping: a healthy owner holds a stripe for about a
// microsecond.
constexpr int kSpins = 128;
// A locker that has seen the same owner for this long asks whether it lives.
// Sleeps never last longer, so a dead owner is found within about twice this.
constexpr std::chrono::milliseconds kPoll{2};

std::atomic_ref<std::uint64_t> word_of(layout::StripeHeader& s) { return std::atomic_ref<std::uint64_t>(s.lock); }
// The futex word: the lock's low half (little-endian, asserted in layout.h).
std::uint32_t* futex_of(layout::StripeHeader& s) { return reinterpret_cast<std::uint32_t*>(&s.lock); }

void futex_wait(std::uint32_t* addr, std::uint32_t expected, steady::duration d) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  timespec ts{time_t(ns / 1000000000), long(ns % 1000000000)};
  // EAGAIN, EINTR, ETIMEDOUT: the caller looks again in every case.
  syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, nullptr, 0);
}
void futex_wake_one(std::uint32_t* addr) { syscall(SYS_futex, addr, FUTEX_WAKE, 1, nullptr, nullptr, 0); }

// ---- /proc ------------------------------------------------------------------

struct TaskStat {
  std::uint64_t id = 0;          // field 1: the thread's id in this /proc's pid namespace
  char state = 0;
  std::uint64_t start_time = 0;  // clock ticks since boot
};

// Reads a small /proc file into buf (up to cap - 1 bytes, NUL-terminated).
// False if it cannot be opened or read, or is empty (errno tells why: ESRCH
// for an empty one, a task that is gone).
bool read_proc_file(const char* path, char* buf, std::size_t cap) {
  // Never at fd 0-2 (stdio_fill.h): with a hole left, as if no descriptor
  // could be had (test_attack_fork15, StripeLockNeverOpens...).
  if (!stdio_fill::fill_holes()) {
    errno = EMFILE;
    return false;
  }
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::size_t n = 0;
  ssize_t r = 0;
  while (n < cap - 1 && (r = ::read(fd, buf + n, cap - 1 - n)) > 0) n += std::size_t(r);
  const int e = errno;
  ::close(fd);
  if (n == 0) {
    errno = r == 0 ? ESRCH : e;
    return false;
  }
  buf[n] = '\0';
  return true;
}

// Reads state and start time from a /proc/.../stat file. False if it cannot
// be opened (errno tells why) or parsed.
bool read_task_stat(const char* path, TaskStat& out) {
  char buf[1024];
  if (!read_proc_file(path, buf, sizeof buf)) return false;
  out.id = std::strtoull(buf, nullptr, 10);
  // "tid (comm) S f4 f5 ... f22=starttime": comm may hold spaces and ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ' || p[2] == '\0') {
    errno = EINVAL;
    return false;
  }
  out.state = p[2];
  p += 3;
  for (int field = 4; field <= 22; ++field) {  // ends at the start of field 22, starttime
    p = std::strchr(p, ' ');
    if (p == nullptr) {
      errno = EINVAL;
      return false;
    }
    ++p;
  }
  out.start_time = std::strtoull(p, nullptr, 10);
  return true;
}

}  // namespace

// How many pid namespaces the NSpid line of a /proc/.../status file lists
// (from that /proc's namespace down to the thread's own): 1 when the /proc is
// the thread's own namespace's. 0 if the file has no such line (Linux before
// 4.1), -1 if it cannot be read (errno tells why). Read line by line to its
// end, in a buffer of its own size: the Groups line before NSpid grows with
// the supplementary groups (1,400 of them put NSpid past 8 KiB, where a
// single read of 8 KiB found no such line, "before 4.1", and trusted an
// ancestor's /proc: test_attack_lock5, WorkerWithManyGroups...). A line
// longer than the buffer is skipped; NSpid's (at most 32 numbers) fits.
int nspid_levels(const char* path) {
  if (!stdio_fill::fill_holes()) {  // never at fd 0-2 (stdio_fill.h); no descriptor to be had
    errno = EMFILE;
    return -1;
  }
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[1024];
  std::size_t have = 0;   // bytes of a line not yet ended, at buf's start
  bool skipping = false;  // the line at buf's start began in an earlier, dropped chunk
  int levels = 0;
  for (bool eof = false; !eof;) {
    ssize_t r = ::read(fd, buf + have, sizeof buf - have);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      ::close(fd);
      errno = e;
      return -1;
    }
    if (r == 0) {  // a last line without its newline is a line too (have < sizeof buf here)
      if (have == 0 || skipping) break;
      buf[have] = '\n';
      r = 1;
      eof = true;
    }
    const char* line = buf;
    const char* const end = buf + have + std::size_t(r);
    for (const char* nl; (nl = static_cast<const char*>(std::memchr(line, '\n', std::size_t(end - line)))) != nullptr;
         line = nl + 1) {
      if (skipping) {
        skipping = false;
        continue;
      }
      if (nl - line >= 6 && std::memcmp(line, "NSpid:", 6) == 0) {
        for (const char* p = line + 6; p < nl;) {
          while (p < nl && (*p == ' ' || *p == '\t')) ++p;
          if (p == nl || *p < '0' || *p > '9') break;
          ++levels;
          while (p < nl && *p >= '0' && *p <= '9') ++p;
        }
        ::close(fd);
        return levels;
      }
    }
    have = std::size_t(end - line);
    if (have == sizeof buf) {  // one line fills the buffer: dropped up to its end
      have = 0;
      skipping = true;
    } else {
      std::memmove(buf, line, have);
    }
  }
  ::close(fd);
  return 0;
}

// Read through /proc/thread-self: this thread in any /proc that shows it.
// /proc/self/ns/time of a process whose first thread has exited is ENOENT
// (its pid link still reads): a worker thread there recorded "time
// namespace unknown", was let lock from a child time namespace, and its
// shifted start time read "reused id, dead" to every waiter outside: two
// holders (test_attack_lock6, HolderInAChildTimeNamespaceWhoseMainThread...).
// (/proc/thread-self: Linux 3.17.)
std::uint64_t own_ns_inode(const char* kind) {
  char path[64];
  struct stat st;
  std::snprintf(path, sizeof path, "/proc/thread-self/ns/%s", kind);
  return ::stat(path, &st) == 0 ? std::uint64_t(st.st_ino) : 0;
}

namespace {

// This thread's stat as /proc shows it now, if that /proc is this thread's
// own pid namespace's: /proc/thread-self is this thread under its own id
// (`tid`, from gettid), and its NSpid line names one namespace. A /proc of
// another pid namespace numbers threads otherwise (a sandbox's mount
// namespace: test_attack_lock3), and an ancestor's shows this thread under
// its own id when the two numbers coincide, with two NSpid levels
// (test_attack_lock4). False otherwise, errno ESRCH for a /proc that is
// not this thread's (or what the read failed with: EMFILE...).
bool own_thread_stat(std::uint32_t tid, TaskStat& st) {
  if (!read_task_stat("/proc/thread-self/stat", st)) return false;
  if (st.id != tid) {
    errno = ESRCH;
    return false;
  }
  const int levels = nspid_levels("/proc/thread-self/status");
  if (levels < 0) return false;
  if (levels > 1) {
    errno = ESRCH;
    return false;
  }
  return true;
}

// ---- this thread's identity --------------------------------------------------
//
// Cached per thread, and recomputed in a child after any fork: a page
// mapped MADV_WIPEONFORK reads zero in every child, however it was forked
// (fork(), _Fork(), a raw clone syscall: atfork handlers alone miss the last
// two, and a child that kept its parent thread's identity would take its
// parent's lock over as "scribbled with our own identity").

struct ForkPage {
  std::uint64_t generation;  // 0 in a fresh child: recompute
};

// The page, mapped on first use. A failure is not remembered: the next
// call tries again (a full address space may have room later), and until
// one succeeds self() refuses, rather than let every child keep its
// parent's identity.
ForkPage* fork_page() {
  static std::atomic<ForkPage*> page{nullptr};
  ForkPage* p = page.load(std::memory_order_acquire);
  if (p != nullptr) return p;
  void* m = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  const bool wiped = ::madvise(m, 4096, MADV_WIPEONFORK) == 0;
  if (!page.compare_exchange_strong(p, static_cast<ForkPage*>(m), std::memory_order_acq_rel)) {
    ::munmap(m, 4096);  // another thread's page won
    return p;
  }
  if (!wiped) {
    // Before Linux 4.14: atfork handlers are the fallback (fork() only).
    pthread_atfork(nullptr, nullptr, [] { words::store(fork_page()->generation, std::uint64_t{0}); });
  }
  return static_cast<ForkPage*>(m);
}

std::uint64_t fresh_generation() {
  static std::atomic<std::uint64_t> counter{0};
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::uint64_t g = (std::uint64_t(::getpid()) << 40) ^ (std::uint64_t(ts.tv_nsec) << 8) ^
                          std::uint64_t(ts.tv_sec) ^ counter.fetch_add(1);
  return g == 0 ? 1 : g;
}


// The page's epoch, drawn on first use in each process.
std::uint64_t epoch_of(ForkPage& page) {
  std::uint64_t gen = words::load(page.generation);
  if (gen == 0) {
    std::uint64_t zero = 0;
    const std::uint64_t mine = fresh_generation();
    gen = std::atomic_ref<std::uint64_t>(page.generation).compare_exchange_strong(zero, mine) ? mine : zero;
  }
  return gen;
}

// The default (general-dynamic) TLS model: initial-exec would save a
// __tls_get_addr per lock, but a library loaded by dlopen then needs glibc's
// static TLS surplus, and under Python it was already used up ("cannot
// allocate memory in static TLS block" importing the module).
thread_local Identity t_self;

const Identity& self() {
  ForkPage* page = fork_page();
  if (page == nullptr) {
    const int e = errno;
    throw Error(Errc::io_error, std::string("cannot map the page that tells a forked child from its parent (mmap: ") +
                                    std::strerror(e) + "); no stripe lock is taken without it");
  }
  const std::uint64_t gen = epoch_of(*page);
  // A word of 0 is an identity whose start time could not be read, a pidns
  // of 0 one whose pid namespace could not: tried again on every call until
  // they can (before, a thread refused for want of /proc stayed refused
  // after /proc was mounted, until its process forked: test_attack_lock7,
  // ThreadRefusedForWantOfProcLocksOnceProcIsMounted).
  if (t_self.generation != gen || t_self.word == 0 || t_self.pidns == 0) {
    const auto tid = std::uint32_t(::syscall(SYS_gettid));
    std::uint32_t birth = 0;
    TaskStat st;
    t_self.no_birth = 0;
    // The start time from /proc/thread-self, which is this thread in any
    // /proc that shows it at all (the kernel resolves it, not a number):
    // through an ancestor's /proc, /proc/self/task/TID was another thread
    // of this process (the one whose outer number is this thread's inner
    // one), and a word with that thread's start time was judged "reused id,
    // dead" by every waiter with a /proc of its own, while its owner lived:
    // two holders (test_attack_lock5, HolderWhoseBirthWasReadThroughAn
    // AncestorProc...).
    if (read_task_stat("/proc/thread-self/stat", st)) {
      birth = std::uint32_t(st.start_time);
    } else {
      // Out of descriptors or memory for now (a worker whose descriptor
      // table is full), or a stat file that does not read (a file bound
      // over it, no /proc). A word without its start time could never be
      // told from a stranger that reused the id after this thread died
      // holding a lock: the stripe would stay busy for as long as that
      // stranger lives (test_attack_lock2, AThreadThatCannotReadItsStart
      // TimeTakesNoLock; test_attack_lock7, HolderWithoutABirthStamp...:
      // birth 0 was kept for anything but EMFILE, ENFILE and ENOMEM). Tried
      // again on the next call.
      t_self.no_birth = errno != 0 ? errno : EIO;
    }
    t_self.word = t_self.no_birth != 0 ? 0 : (std::uint64_t(birth) << 32) | (tid & 0x7fffffffu);
    t_self.pid = std::uint32_t(::getpid());
    t_self.pidns = own_ns_inode("pid");
    t_self.no_pidns = t_self.pidns == 0 ? errno : 0;
    t_self.timens = own_ns_inode("time");  // 0 on a kernel without time namespaces (before 5.6)
    t_self.fork_word = &page->generation;
    t_self.generation = gen;
  }
  return t_self;
}

// Whether this process is in another pid or time namespace than when `me`
// was computed (read afresh: waits that judge an owner ask, and
// still_in_namespaces).
bool moved_since(const Identity& me) {
  return own_ns_inode("pid") != me.pidns || own_ns_inode("time") != me.timens;
}

// CLOCK_MONOTONIC_COARSE less CLOCK_REALTIME_COARSE, in ns: a move into
// another time namespace shifts the first by the namespace's offset and not
// the second. Otherwise it is the kernel's wall-to-monotonic offset, which
// only a wall-clock step (or a leap second) changes: NTP's slew moves both
// clocks alike. Both advance at the same tick, so a tick between the two
// reads shows a change too, and costs one needless re-read.
std::int64_t clock_gap_ns() { return clock::coarse().gap_ns; }

// The gap when this process last found its time namespace unmoved. One per
// process: setns into a time namespace is refused to a multi-threaded one
// (EUSERS), and a child in another one differs from its inherited gap.
constexpr std::int64_t kGapUnknown = std::numeric_limits<std::int64_t>::min();
std::atomic<std::int64_t> g_clock_gap{kGapUnknown};

// Any change, to the nanosecond: with a slack of 1 ms, a move under 1 ms
// behind served entries after their expiry and one ahead stamped expiries
// 1 ms past their TTL (test_attack_lock9, MoveBehindUnderOneMillisecond...,
// MoveAheadUnderOneMillisecond...).
bool gap_unchanged(std::int64_t gap) {
  const std::int64_t last = g_clock_gap.load(std::memory_order_relaxed);
  return last != kGapUnknown && gap == last;
}

// What lock returns in a child forked (from a signal handler) while its
// thread was taking a lock: it takes nothing, records nothing (the lock, its
// owner and its counters are the parent's) and says so.
Acquired forked_out() {
  Acquired a;
  a.forked = true;
  return a;
}

// A fork just after the CAS leaves the child with its parent's acquisition.
Acquired took(layout::StripeHeader& s, const Identity& me) {
  if (forked_since(me)) return forked_out();
  words::store(s.owner_pid, me.pid);
  Acquired a;
  a.acquired = true;
  return a;
}

Acquired took_over(layout::StripeHeader& s, const Identity& me, std::uint64_t dead_word) {
  if (forked_since(me)) return forked_out();
  Acquired a;
  a.acquired = true;
  a.owner_died = true;
  a.dead_tid = tid_of(dead_word);
  a.dead_pid = words::load(s.owner_pid);
  words::store(s.owner_pid, me.pid);
  words::store(s.takeovers, words::load(s.takeovers) + 1);
  return a;
}

// Every compare-and-swap that could take the word is preceded by a fork
// check: a child forked while its thread waited here (from a signal
// handler) and scheduled after its parent has come and gone must not take
// the lock under the parent's name, which would leave it held by a live
// thread with nobody inside.
Acquired lock_slow(layout::StripeHeader& s, const Identity& me, steady::time_point deadline) {
  auto w = word_of(s);
  for (int i = 0; i < kSpins; ++i) {
    words::cpu_relax();
    std::uint64_t v = w.load(std::memory_order_relaxed);
    if (forked_since(me)) return forked_out();
    if (v == 0 && w.compare_exchange_weak(v, me.word, std::memory_order_acquire, std::memory_order_relaxed)) {
      return took(s, me);
    }
  }
  std::uint64_t watched = 0;  // the owner we are timing
  steady::time_point since{};
  bool judged = false;  // `watched` was judged in this call
  for (;;) {
    std::uint64_t v = w.load(std::memory_order_relaxed);
    if (forked_since(me)) return forked_out();
    if (v == 0) {
      // We may have been woken in another's place: keep the waiters bit.
      if (w.compare_exchange_strong(v, me.word | kWaiters, std::memory_order_acquire, std::memory_order_relaxed)) {
        return took(s, me);
      }
      continue;
    }
    const std::uint64_t owner = v & ~kWaiters;
    const steady::time_point now = steady::now();
    // Our own word is judged like any other, and it reads alive: it may be
    // worn by someone inside (a thread that reused a dead holder's id within
    // its start time's tick, while another locker's judgement of that dead
    // holder is still pending: taking it over "as scribbled" let both in;
    // or a child of clone(CLONE_VM), which shares this thread's memory and
    // with it this identity). Scribbled by a writer, it costs a timeout, as
    // any live thread's word does (test_attack_lock2).
    if (owner != watched) {
      watched = owner;
      since = now;
      judged = false;
    }
    // Judged once watched for kPoll, and at the deadline at the latest: a
    // lock_timeout under kPoll returned busy before any judgement, and a
    // dead owner's stripe stayed busy to every such locker
    // (test_attack_lock6, DeadHolderIsRecoveredEvenWithALockTimeout...).
    if (now - since >= kPoll || (now >= deadline && !judged)) {
      judged = true;
      // A process that moved to another pid or time namespace since its
      // identity was computed (setns(CLONE_NEWTIME) moves the caller) reads
      // every other thread's start time shifted: it would judge live owners
      // dead. It judges nobody (test_attack_lock2, ProcessThatSetnsInto...).
      if (moved_since(me)) {
        Acquired a;
        a.holder_tid = tid_of(owner);
        a.moved = true;
        return a;
      }
      if (owner_life(owner, me) == Life::dead) {
        if (forked_since(me)) return forked_out();  // forked while /proc was read
        // Exactly one of the lockers that judged this word wins the CAS; a
        // dead owner can never write the word again, so equal means still his.
        if (w.compare_exchange_strong(v, me.word | kWaiters, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
          return took_over(s, me, v);
        }
        judged = false;  // the word moved (a waiters bit, a new owner): judged again
        continue;
      }
      since = now;
    }
    if (now >= deadline) {
      Acquired a;
      a.holder_tid = tid_of(owner);
      return a;
    }
    if ((v & kWaiters) == 0) {
      if (!w.compare_exchange_strong(v, v | kWaiters, std::memory_order_relaxed)) continue;
      v |= kWaiters;
    }
    futex_wait(futex_of(s), std::uint32_t(v), std::min<steady::duration>(kPoll, deadline - now));
  }
}

}  // namespace

void init(std::uint64_t& word) { words::store(word, std::uint64_t{0}, std::memory_order_release); }

std::uint64_t self_word() { return self().word; }

const Identity& identity() { return self(); }

std::uint64_t fork_epoch() noexcept {
  ForkPage* page = fork_page();
  return page == nullptr ? 0 : epoch_of(*page);
}

bool same_namespaces(std::uint64_t pidns, std::uint64_t timens) { return same_namespaces(self(), pidns, timens); }

// Namespaces are read again (two stats of /proc: more than a set's whole
// write, so not every time) when the gap between this process's monotonic
// and wall clocks has changed since they were last, as a move
// into another time namespace moves it by the namespace's offset. Before,
// a process that moved after its first lock kept locking uncontended (only
// a wait judged, and asked moved_since) and stamped expiries from the
// shifted clock: an entry of 200 ms lived 1,000 s (test_attack_lock7,
// ProcessThatMovedToAnotherTimeNamespace...); then, with a re-read only
// every 100 ms of that clock, an offset under 100 ms was never seen
// (test_attack_lock8, MoveIntoATimeNamespaceLessThan100msAhead...).
bool still_in_namespaces(const Identity& me) {
  const std::int64_t gap = clock_gap_ns();
  if (gap_unchanged(gap)) return true;
  if (moved_since(me)) return false;
  g_clock_gap.store(gap, std::memory_order_relaxed);
  return true;
}

bool time_namespace_unmoved(std::uint64_t timens, std::int64_t gap) {
  if (gap_unchanged(gap)) return true;
  const std::uint64_t mine = own_ns_inode("time");
  if (mine != 0 && mine != timens) return false;
  // Unreadable: unmoved only on a kernel without time namespaces, where the
  // pid namespace reads. Without a /proc that shows this thread nothing can
  // be told, and the gap is not taken as checked: a child forked into a
  // time namespace 100 s behind, in a mount namespace without /proc, served
  // an entry expired on the host (test_attack_lock9, ChildOfAMovedProcessWithoutProc...).
  if (mine == 0 && own_ns_inode("pid") == 0) return false;
  g_clock_gap.store(gap, std::memory_order_relaxed);
  return true;
}

// A pid namespace that could not be read, the thread's (no /proc, or
// another namespace's /proc that does not show it) or the segment's
// creator's, is never the same: before, 0 meant "unknown, let it lock", and a
// thread of a child pid namespace without /proc locked with a number that
// named nobody outside ("dead" to every waiter there), or judged an outer
// holder by kill() of an outer number (ESRCH in its namespace: "dead"):
// two holders (test_attack_lock6). Time namespaces compare exactly: 0 on
// both sides is a kernel without them.
bool same_namespaces(const Identity& me, std::uint64_t pidns, std::uint64_t timens) {
  return me.pidns != 0 && pidns == me.pidns && timens == me.timens;
}

namespace {
// The owner's life as the kernel tells it without a descriptor (no /proc to
// be read, or none that can be trusted): kill(tid, 0) finds the thread, but
// finds a zombie too (a process killed and not yet reaped by its parent:
// before, a waiter with a full descriptor table waited its whole timeout on
// one, test_attack_lock3); move_pages of no pages (a probe that reads and
// changes nothing, and is allowed where reading the thread's /proc is) then
// fails with EINVAL for a thread that has no memory any more: it exited.
// A thread we may not inspect (another uid: kill and move_pages both answer
// EPERM; before, a killed holder of another uid, seen through a hidepid=2
// /proc, kept its stripe busy until it was reaped: test_attack_lock5,
// HiddenKilledUnreapedHolder...) is asked through a pidfd, which polls
// readable once the thread has exited and needs no permission: the thread's
// own (PIDFD_THREAD, Linux 6.9), else its process's (a thread-group leader).
// Any other answer (ENOSYS without NUMA, EPERM under a seccomp filter, no
// descriptor to be had) leaves kill's "alive". A reused id looks alive.
bool exited_by_pidfd(std::uint32_t tid) {
  constexpr unsigned kPidfdThread = O_EXCL;  // PIDFD_THREAD (linux/pidfd.h of 6.9; Debian 12's headers lack it)
  if (!stdio_fill::fill_holes()) return false;  // never at fd 0-2 (stdio_fill.h); no descriptor: "alive"
  int fd = int(::syscall(SYS_pidfd_open, pid_t(tid), kPidfdThread));
  if (fd < 0 && errno == EINVAL) fd = int(::syscall(SYS_pidfd_open, pid_t(tid), 0u));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  const bool exited = ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
  ::close(fd);
  return exited;
}

// Whether the thread has no memory left (it exited: a zombie), asked
// through process_vm_readv, which needs neither a descriptor nor permission
// for that answer: the kernel takes the target's memory before it checks
// the caller's right to it, so a thread without any answers ESRCH, and a
// live one EPERM (another uid) or EFAULT (address 0). Before, a waiter of
// another uid with a full descriptor table (no pidfd) read a killed,
// unreaped holder as alive for as long as it stayed a zombie
// (test_attack_lock6, ZombieHolderIsRecoveredByAWaiterOfAnotherUid...). It
// also answers where move_pages cannot (ENOSYS without NUMA, a seccomp
// filter's EPERM).
bool exited_by_vm(std::uint32_t tid) {
  char byte;
  iovec local{&byte, 1};
  iovec remote{nullptr, 1};
  return ::process_vm_readv(pid_t(tid), &local, 1, &remote, 1, 0) < 0 && errno == ESRCH;
}

Life life_by_kernel(std::uint32_t tid) {
  if (::kill(pid_t(tid), 0) != 0 && errno == ESRCH) return Life::dead;
  if (::syscall(SYS_move_pages, pid_t(tid), 0ul, nullptr, nullptr, nullptr, 0) == 0) return Life::alive;
  const int e = errno;
  if (e == EINVAL) return Life::dead;
  if (exited_by_vm(tid)) return Life::dead;
  if (e == EPERM && exited_by_pidfd(tid)) return Life::dead;
  return Life::alive;
}

// Whether /proc, as this thread sees it now, is its own pid namespace's: it
// shows this thread under the id it has (and, when its identity has a start
// time, with that start time), and its NSpid line names one namespace. A
// /proc of another pid namespace (a worker whose mount namespace has one: a
// sandbox) numbers threads otherwise, and /proc/TID there is somebody else:
// a live holder's id named another process with another start time, "dead",
// and two processes held one stripe (test_attack_lock3,
// WaiterSeeingAForeignProc...). A /proc of an ancestor namespace (unshare
// --pid without --mount-proc) shows this thread, and under its own id when
// the two numbers coincide: NSpid lists two levels there
// (test_attack_lock4). Asked at every judgement, not once per process: the
// mount namespace may change (setns) after the first. On a kernel without
// NSpid (before 4.1) the id and start time alone decide.
bool proc_shows(const Identity& me) {
  TaskStat st;
  if (!own_thread_stat(tid_of(me.word), st)) return false;
  const auto birth = std::uint32_t(me.word >> 32);
  return birth == 0 || std::uint32_t(st.start_time) == birth;
}
}  // namespace

Life owner_life(std::uint64_t word) { return owner_life(word, self()); }

Life owner_life(std::uint64_t word, const Identity& me) {
  const std::uint32_t tid = tid_of(word);
  const auto birth = std::uint32_t(word >> 32);
  if (tid == 0) return Life::dead;  // nobody has thread id 0: scribbled
  // No /proc, or one that is not ours: the thread id alone.
  if (!proc_shows(me)) return life_by_kernel(tid);
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", tid);
  TaskStat st;
  if (!read_task_stat(path, st)) {
    // Gone from /proc, hidden from us (hidepid=2, a process that is not
    // dumpable), or unreadable here (EMFILE: this process's descriptor table
    // is full; before, such a waiter never took a dead owner over:
    // test_attack_lock2, WaiterWithAFullDescriptorTableStillTakesOverADeadOwner):
    // only the kernel's answers tell dead from alive then. A live thread is
    // alive; its birth cannot be checked (a reused id looks alive).
    return life_by_kernel(tid);
  }
  if (st.state == 'Z' || st.state == 'X' || st.state == 'x') return Life::dead;  // exited, not yet reaped
  if (birth != 0 && std::uint32_t(st.start_time) != birth) return Life::dead;   // the id was reused
  return Life::alive;
}

namespace {
// One CAS on a free word: the uncontended lock, which reads no clock.
bool try_free(layout::StripeHeader& s, const Identity& me) {
  if (forked_since(me)) return false;  // lock_slow says so
  std::uint64_t expected = 0;
  return word_of(s).compare_exchange_strong(expected, me.word, std::memory_order_acquire,
                                            std::memory_order_relaxed);
}
}  // namespace

// No lock without a birth stamp (see self()).
void require_word(const Identity& me) {
  if (me.word != 0) return;
  throw Error(Errc::io_error, std::string("cannot read this thread's start time from /proc (") +
                                  std::strerror(me.no_birth) + "); no stripe lock is taken without it");
}

Acquired lock(layout::StripeHeader& s, steady::time_point deadline) {
  const Identity& me = self();
  require_word(me);
  return try_free(s, me) ? took(s, me) : lock_slow(s, me, deadline);
}

Acquired lock(layout::StripeHeader& s, std::chrono::milliseconds timeout) { return lock(s, self(), timeout); }

Acquired lock(layout::StripeHeader& s, const Identity& me, std::chrono::milliseconds timeout) {
  require_word(me);
  return try_free(s, me) ? took(s, me) : lock_slow(s, me, steady::now() + timeout);
}

void unlock(layout::StripeHeader& s) { unlock(s, self()); }

void unlock(layout::StripeHeader& s, const Identity& me) {
  auto w = word_of(s);
  std::uint64_t v = w.load(std::memory_order_relaxed);
  // Only our own word is released: one that changed under us (scribbled by
  // a writer of the segment) is left to the next locker to judge, with the
  // owner_pid that goes with it.
  // In a child forked inside the section (or inside this call), `me` and
  // `v` are its parent's, which may hold the stripe again by now.
  if ((v & ~kWaiters) != me.word || forked_since(me)) return;
  words::store(s.owner_pid, 0u);
  while ((v & ~kWaiters) == me.word && !forked_since(me)) {
    if (w.compare_exchange_weak(v, 0, std::memory_order_release, std::memory_order_relaxed)) {
      if (v & kWaiters) futex_wake_one(futex_of(s));
      return;
    }
  }
}

}  // namespace hostcache::stripe_lock
