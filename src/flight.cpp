// flight.cpp — the single-flight protocol on FlightSlot.
//
// A key's flight lives in one of kProbe FlightSlots from slot
// (xxh3(key) & (flight_slots - 1)). FlightSlot::word is the futex word:
//   bits 0-1  state: free, claiming, busy, releasing
//   bits 2-31 a sequence bumped by every new owner, so that a waiter's
//             FUTEX_WAIT on the word it saw returns as soon as anything changes.
// Invariants:
//  - owner_pid, key_hash and lease_until_ms are written only by the process
//    that moved the word into `claiming` or `releasing`, and mean something
//    only while the state is `busy` (readers validate them seqlock-style: the
//    word before and after reading them is the same). They are 0 when free.
//  - Every transition is a CAS on the word, so exactly one process claims a
//    free slot, takes over a dead or overrun owner, or releases it; an owner
//    that was taken over finds its CAS failing and leaves the slot alone.
//  - `claiming` and `releasing` last a few stores. One that lasts
//    kTransientGraceMs means its process died there; anyone may then free the
//    slot. (A process stalled that long between two stores is treated as
//    dead: the worst case is a duplicate computation or a waiter waiting on
//    the wrong flight for one poll, never a wrong value: values come only
//    from the cache, which the caller re-reads after every wait.)
//  - Nobody sleeps longer than kPollMs without re-checking the owner's pid and
//    lease, so nobody waits on a dead process.
//  - `waiters` counts sleepers so that a release without them makes no
//    syscall. A waiter killed while asleep leaves it one too high: the only
//    cost is a needless FUTEX_WAKE per release of that slot.
// The futex is shared (no FUTEX_PRIVATE_FLAG): the word lives in a mapping
// shared by processes.
#include "flight.h"

#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <ctime>

#include "atomic_words.h"
#include "clock.h"
#include "log.h"

namespace hostcache::flight {
namespace {

using layout::FlightSlot;
using steady = std::chrono::steady_clock;

constexpr std::uint32_t kFree = 0, kClaiming = 1, kBusy = 2, kReleasing = 3;
constexpr std::uint32_t kStateMask = 3, kSeqStep = 4;
constexpr std::uint32_t kProbe = 4;               // slots a key may use: two keys rarely share all
constexpr std::int64_t kPollMs = 50;              // a waiter notices a dead owner within this
constexpr std::int64_t kTransientGraceMs = 1000;  // claiming/releasing longer than this: died there

std::uint32_t state_of(std::uint32_t w) { return w & kStateMask; }
// The word of the next owner's flight, in state `st`.
std::uint32_t next_word(std::uint32_t w, std::uint32_t st) {
  return ((w & ~kStateMask) + kSeqStep) | st;
}

std::uint32_t load_word(const FlightSlot& s) {
  return words::load(s.word, std::memory_order_acquire);
}
bool cas_word(FlightSlot& s, std::uint32_t expected, std::uint32_t desired) {
  return std::atomic_ref<std::uint32_t>(s.word).compare_exchange_strong(expected, desired,
                                                                        std::memory_order_seq_cst);
}

void futex_wait(std::uint32_t* word, std::uint32_t expected, std::int64_t ms) {
  timespec ts{time_t(ms / 1000), long(ms % 1000) * 1000000L};
  // EAGAIN, EINTR, ETIMEDOUT: the caller re-checks in every case.
  syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, nullptr, 0);
}
void futex_wake_all(std::uint32_t* word) {
  syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// A zombie still answers kill(0): its parent must reap it before waiters see
// it gone (a prefork master does).
bool process_gone(std::uint32_t pid) {
  return pid == 0 || (kill(pid_t(pid), 0) == -1 && errno == ESRCH);
}

bool overdue(const Owner& o) { return process_gone(o.pid) || clock::now_ms() >= o.lease_until_ms; }

bool read_busy(const FlightSlot& s, std::uint32_t w, Owner& o) {
  o.pid = words::load(s.owner_pid);
  o.key_hash = words::load(s.key_hash);
  o.lease_until_ms = words::load(s.lease_until_ms);
  std::atomic_thread_fence(std::memory_order_acquire);
  return words::load(s.word) == w;
}

// From `releasing` (held by us): clears the fields, frees the slot, wakes sleepers.
void free_slot(FlightSlot& s, std::uint32_t releasing) {
  words::store(s.owner_pid, 0u);
  words::store(s.key_hash, std::uint64_t{0});
  words::store(s.lease_until_ms, std::int64_t{0});
  // seq_cst store, then seq_cst load of waiters; a waiter increments waiters
  // (seq_cst) before FUTEX_WAIT re-reads the word: one of us sees the other.
  words::store(s.word, next_word(releasing, kFree), std::memory_order_seq_cst);
  if (words::load(s.waiters, std::memory_order_seq_cst) != 0) futex_wake_all(&s.word);
}

// Waits out a claiming/releasing slot; frees it if its process died there.
void settle(FlightSlot& s, std::uint32_t w) {
  if (state_of(w) == kFree || state_of(w) == kBusy) return;  // it changed as we read it
  const steady::time_point give_up = steady::now() + std::chrono::milliseconds(kTransientGraceMs);
  while (load_word(s) == w) {
    if (steady::now() >= give_up) {
      std::uint32_t releasing = next_word(w, kReleasing);
      if (cas_word(s, w, releasing)) {
        log::get().warn("flight slot stuck in state {} (its process died): freed", state_of(w));
        free_slot(s, releasing);
      }
      return;
    }
    sched_yield();
  }
}

}  // namespace

Flights::Flights(const Segment& segment, std::uint64_t key_hash)
    : slots_(segment.flight_slots()),
      mask_(segment.header()->flight_slots - 1),
      probe_(std::min<std::uint32_t>(kProbe, segment.header()->flight_slots)),
      key_hash_(key_hash) {}

Flights::Outcome Flights::acquire_or_wait(std::int64_t lease_ms, Flight& out) {
  for (;;) {
    FlightSlot* free = nullptr;
    std::uint32_t free_word = 0;
    bool changing = false;
    for (std::uint32_t i = 0; i < probe_ && !changing; ++i) {
      FlightSlot& s = slot(i);
      const std::uint32_t w = load_word(s);
      Owner o;
      if (state_of(w) == kFree) {
        if (free == nullptr) free = &s, free_word = w;
      } else if (state_of(w) != kBusy || !read_busy(s, w, o)) {
        settle(s, w);  // it may be becoming our key's flight: look again
        changing = true;
      } else if (o.key_hash == key_hash_) {
        return wait(s, w, o, lease_ms, out);
      }
    }
    if (changing) continue;
    if (free == nullptr) return Outcome::unshared;
    if (claim(*free, free_word, lease_ms, out)) return Outcome::owner;
  }
}

bool Flights::try_claim(std::int64_t lease_ms, Flight& out) {
  FlightSlot* free = nullptr;
  std::uint32_t free_word = 0;
  for (std::uint32_t i = 0; i < probe_; ++i) {
    FlightSlot& s = slot(i);
    const std::uint32_t w = load_word(s);
    Owner o;
    if (state_of(w) == kFree) {
      if (free == nullptr) free = &s, free_word = w;
    } else if (state_of(w) != kBusy || !read_busy(s, w, o)) {
      return false;  // changing hands, perhaps to a refresher of our key
    } else if (o.key_hash == key_hash_) {
      return overdue(o) && claim(s, w, lease_ms, out);
    }
  }
  return free != nullptr && claim(*free, free_word, lease_ms, out);
}

// CAS from `seen` (free, or busy for a takeover) to claiming, then publish.
bool Flights::claim(FlightSlot& s, std::uint32_t seen, std::int64_t lease_ms, Flight& out) {
  const bool takeover = state_of(seen) == kBusy;
  const std::uint32_t claiming = takeover ? next_word(seen, kClaiming) : (seen | kClaiming);
  if (!cas_word(s, seen, claiming)) return false;
  if (takeover) {
    log::get().info("flight for key hash {:016x}: taking over from pid {}", key_hash_,
                    words::load(s.owner_pid));
  }
  words::store(s.key_hash, key_hash_);
  words::store(s.lease_until_ms, clock::now_ms() + lease_ms);
  words::store(s.owner_pid, std::uint32_t(getpid()));
  const std::uint32_t busy = (claiming & ~kStateMask) | kBusy;
  if (!cas_word(s, claiming, busy)) return false;  // we stalled past the grace and were freed
  out = Flight{&s, busy};
  return true;
}

Flights::Outcome Flights::wait(FlightSlot& s, std::uint32_t w, const Owner& o,
                               std::int64_t lease_ms, Flight& out) {
  std::atomic_ref<std::uint32_t> waiters(s.waiters);
  waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic_ref<std::uint32_t>& waiters;
    ~Leave() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{waiters};
  for (;;) {
    if (overdue(o)) return claim(s, w, lease_ms, out) ? Outcome::owner : Outcome::waited;
    const std::int64_t left = o.lease_until_ms - clock::now_ms();
    futex_wait(&s.word, w, std::clamp<std::int64_t>(left, 1, kPollMs));
    if (load_word(s) != w) return Outcome::waited;
  }
}

void release(const Flight& f) {
  const std::uint32_t releasing = (f.word & ~kStateMask) | kReleasing;
  if (!cas_word(*f.slot, f.word, releasing)) return;  // taken over: someone else's now
  free_slot(*f.slot, releasing);
}

bool is_free(const FlightSlot& slot) {
  return state_of(load_word(slot)) == kFree && words::load(slot.owner_pid) == 0;
}

bool busy_owner(const FlightSlot& slot, Owner& owner) {
  const std::uint32_t w = load_word(slot);
  return state_of(w) == kBusy && read_busy(slot, w, owner);
}

}  // namespace hostcache::flight
