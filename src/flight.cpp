// flight.cpp — the single-flight protocol on FlightSlot.
//
// A key's flight lives in one of kProbe FlightSlots from slot
// (xxh3(key) & (flight_slots - 1)), flight_slots as verified at attach
// (Segment::geometry(), never the live header). FlightSlot::word is the futex
// word:
//   bits 0-1  state: free, claiming, busy, releasing
//   bit  2    confirmed (busy only): the owner has checked that no other slot
//             holds the key's flight; busy without it is *tentative*
//   bits 3-31 a sequence bumped by every new owner, so that a waiter's
//             FUTEX_WAIT on the word it saw returns as soon as anything changes.
//
// One owner per key. A claimer moves a free slot to claiming (CAS), writes the
// fields, moves it to tentative, then looks at every other candidate slot of
// the key (seq_cst loads after its seq_cst CAS). Of two concurrent claimers of
// one key, at least one sees the other (Dekker); the rule is:
//  - another slot confirmed for the key, or tentative for it at a lower
//    index: yield (free ours, then wait on that one);
//  - tentative for it at a higher index: wait until that claimer decides
//    (it yields to us if it saw us, or confirms, and then we yield).
// Waits between claimers go only from lower to higher indices, so they never
// form a cycle, and each is bounded (a dead or stalled claimer is freed).
//
// Invariants:
//  - owner_pid, key_hash and lease_until_ms are written only by the process
//    that moved the word into `claiming` or `releasing`, and mean something
//    only while the state is `busy` (readers validate them seqlock-style: the
//    word before and after reading them is the same). They are 0 when free.
//  - Every transition is a CAS on the word, so exactly one process claims a
//    free slot, takes over a dead or overrun owner, or releases it; an owner
//    that was taken over finds its CAS failing and leaves the slot alone.
//  - `claiming`, `releasing` and tentative last a few stores and loads. One
//    that lasts kTransientGraceMs means its process died (or stalled) there;
//    anyone may then free the slot. The worst case of a wrong guess is a
//    duplicate computation, never a wrong value: values come only from the
//    cache, which the caller re-reads after every wait.
//  - Nobody sleeps longer than kPollMs without re-checking the owner's pid
//    and lease, so nobody waits on a dead process; and nobody waits past its
//    own deadline (the caller's own lease), whatever the segment says: a
//    slot whose lease_until_ms is INT64_MAX and whose owner_pid is a live
//    process that never releases is taken over then.
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
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>

#include "atomic_words.h"
#include "clock.h"
#include "log.h"
#include "stripe_lock.h"
#include <hostcache/errors.h>

namespace hostcache::flight {
namespace {

using layout::FlightSlot;
using steady = std::chrono::steady_clock;

constexpr std::uint32_t kFree = 0, kClaiming = 1, kBusy = 2, kReleasing = 3;
constexpr std::uint32_t kStateMask = 3, kConfirmed = 4, kLowMask = 7, kSeqStep = 8;
constexpr std::uint32_t kProbe = 4;              // slots a key may use: two keys rarely share all
constexpr std::int64_t kPollMs = 50;             // a waiter notices a dead owner within this
constexpr std::int64_t kTransientGraceMs = 250;  // a transient state longer than this: died there

std::uint32_t state_of(std::uint32_t w) { return w & kStateMask; }
bool confirmed(std::uint32_t w) { return state_of(w) == kBusy && (w & kConfirmed) != 0; }
// The word of the next owner's flight, in state `st`.
std::uint32_t next_word(std::uint32_t w, std::uint32_t st) {
  return ((w & ~kLowMask) + kSeqStep) | st;
}
// The same flight's word in state `st`.
std::uint32_t same_flight(std::uint32_t w, std::uint32_t st) { return (w & ~kLowMask) | st; }

std::uint32_t load_word(const FlightSlot& s) {
  return words::load(s.word, std::memory_order_acquire);
}
std::uint32_t load_word_sc(const FlightSlot& s) {
  return words::load(s.word, std::memory_order_seq_cst);
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
// it gone (a prefork master does). A pid that is no process id (0, or
// negative as a pid_t: a process group, or every process) is gone.
bool process_gone(std::uint32_t pid) {
  const pid_t p = pid_t(pid);
  return p <= 0 || (kill(p, 0) == -1 && errno == ESRCH);
}

bool overdue(const Owner& o) { return process_gone(o.pid) || clock::now_ms() >= o.lease_until_ms; }

std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  return b > 0 && a > std::numeric_limits<std::int64_t>::max() - b
             ? std::numeric_limits<std::int64_t>::max()
             : a + b;
}

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

// Frees a slot whose word is still `w` (a transient state its process left).
void force_free(FlightSlot& s, std::uint32_t w, const char* why) {
  const std::uint32_t releasing = next_word(w, kReleasing);
  if (cas_word(s, w, releasing)) {
    log::get().warn("flight slot in state {} {}: freed", state_of(w), why);
    free_slot(s, releasing);
  }
}

// Waits out a claiming/releasing slot, until `deadline` at most; frees it if
// it lasts kTransientGraceMs (its process died there).
void settle(FlightSlot& s, std::uint32_t w, steady::time_point deadline) {
  if (state_of(w) == kFree || state_of(w) == kBusy) return;  // it changed as we read it
  const steady::time_point give_up = steady::now() + std::chrono::milliseconds(kTransientGraceMs);
  for (int spins = 0; load_word(s) == w; ++spins) {
    const steady::time_point now = steady::now();
    if (now >= give_up) return force_free(s, w, "for too long (its process died there)");
    if (now >= deadline) return;
    if (spins < 64) {
      sched_yield();
    } else {
      futex_wait(&s.word, w, 1);  // nobody wakes us here: a 1 ms nap, not a spin
    }
  }
}

std::atomic<testing::Hook> g_before_claim{nullptr};

}  // namespace

bool testing::hooks_allowed() noexcept {
  static const bool allowed = [] {
    const char* v = std::getenv("HOSTCACHE_TEST_HOOKS");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return allowed;
}

Flights::Flights(const Segment& segment, std::uint64_t key_hash, steady::time_point deadline)
    : slots_(segment.flight_slots()),
      mask_(segment.geometry().flight_slots == 0 ? 0 : segment.geometry().flight_slots - 1),
      probe_(std::min<std::uint32_t>(kProbe, segment.geometry().flight_slots)),
      key_hash_(key_hash),
      deadline_(deadline) {
  // A flight names its owner by pid, judged alive with kill(pid, 0): numbers
  // of one pid namespace. A process in another one would take a live owner
  // for dead (its pid is not visible there), or leave a pid that names
  // another process here; it is refused, as by the stripe lock.
  const Geometry& g = segment.geometry();
  const stripe_lock::Identity& me = stripe_lock::identity();
  if (me.pidns == 0) {
    throw Error(Errc::incompatible, "segment '" + segment.name() +
                                        "': this thread cannot read its pid namespace (/proc/thread-self/ns/pid: " +
                                        std::strerror(me.no_pidns) +
                                        "); it cannot take part in single flight (mount its pid namespace's /proc)");
  }
  if (!stripe_lock::same_namespaces(me, g.pidns_ino, g.timens_ino) || !stripe_lock::still_in_namespaces(me)) {
    throw Error(Errc::incompatible, "segment '" + segment.name() +
                                        "': this process is in another pid or time namespace than the segment's "
                                        "creator; it cannot take part in single flight");
  }
}

bool Flights::late() const { return steady::now() >= deadline_; }

Flights::Outcome Flights::acquire_or_wait(std::int64_t lease_ms, Flight& out) {
  for (;;) {
    std::uint32_t free = probe_, free_word = 0;
    bool changing = false;
    for (std::uint32_t i = 0; i < probe_ && !changing; ++i) {
      FlightSlot& s = slot(i);
      const std::uint32_t w = load_word(s);
      Owner o;
      if (state_of(w) == kFree) {
        if (free == probe_) free = i, free_word = w;
      } else if (state_of(w) != kBusy || !read_busy(s, w, o)) {
        if (late()) return Outcome::unshared;  // no more waiting on others' transients
        settle(s, w, deadline_);                // it may be becoming our key's flight
        changing = true;
      } else if (o.key_hash == key_hash_) {
        return wait(i, w, o, lease_ms, out);
      }
    }
    if (changing) continue;
    if (free == probe_) return Outcome::unshared;
    if (testing::Hook hook = g_before_claim.load(std::memory_order_acquire)) hook();
    if (claim(free, free_word, lease_ms, out) == Claim::owner) return Outcome::owner;
    if (late()) return Outcome::unshared;
    // Lost the slot, or yielded to another owner of the key: look again.
  }
}

bool Flights::try_claim(std::int64_t lease_ms, Flight& out) {
  std::uint32_t free = probe_, free_word = 0;
  for (std::uint32_t i = 0; i < probe_; ++i) {
    FlightSlot& s = slot(i);
    const std::uint32_t w = load_word(s);
    Owner o;
    if (state_of(w) == kFree) {
      if (free == probe_) free = i, free_word = w;
    } else if (state_of(w) != kBusy || !read_busy(s, w, o)) {
      return false;  // changing hands, perhaps to a refresher of our key
    } else if (o.key_hash == key_hash_) {
      return overdue(o) && claim(i, w, lease_ms, out) == Claim::owner;
    }
  }
  return free != probe_ && claim(free, free_word, lease_ms, out) == Claim::owner;
}

// CAS from `seen` (free, or busy for a takeover) to claiming, publish the
// fields as tentative, then confirm unless another slot holds the key.
Flights::Claim Flights::claim(std::uint32_t index, std::uint32_t seen, std::int64_t lease_ms,
                              Flight& out) {
  FlightSlot& s = slot(index);
  // A copy, taken before the CAS (identity() may throw): in a child forked
  // during the claim, identity() refreshes the thread's own in place.
  const stripe_lock::Identity me = stripe_lock::identity();
  // A child forked (from a signal handler) during the claim leaves the claim
  // to its parent: it stops before its next store or compare-and-swap, as
  // the stripe lock's does, and looks again as a process of its own. Had it
  // gone on, it could confirm the slot for itself with its parent's epoch,
  // and never release it (test_attack_fork5).
  auto forked = [&] { return stripe_lock::forked_since(me); };
  const bool takeover = state_of(seen) == kBusy;
  const std::uint32_t claiming = takeover ? next_word(seen, kClaiming) : same_flight(seen, kClaiming);
  if (forked() || !cas_word(s, seen, claiming)) return Claim::lost;
  if (takeover) {
    log::get().info("flight for key hash {:016x}: taking over from pid {}", key_hash_,
                    words::load(s.owner_pid));
  }
  if (forked()) return Claim::lost;
  words::store(s.key_hash, key_hash_);
  words::store(s.lease_until_ms, saturating_add(clock::now_ms(), lease_ms));
  words::store(s.owner_pid, me.pid);
  const std::uint32_t tentative = same_flight(claiming, kBusy);
  if (forked() || !cas_word(s, claiming, tentative)) return Claim::lost;  // stalled past the grace: freed
  if (another_owner(index)) {
    const std::uint32_t releasing = same_flight(tentative, kReleasing);
    if (!forked() && cas_word(s, tentative, releasing)) free_slot(s, releasing);
    return Claim::yielded;
  }
  const std::uint32_t busy = tentative | kConfirmed;
  if (forked() || !cas_word(s, tentative, busy)) return Claim::lost;  // stalled past the grace: freed
  // Forked from here on, the child's copy holds the parent's epoch: its
  // release is a no-op, and the flight stays the parent's, which releases it.
  out = Flight{&s, busy, me.generation};
  return Claim::owner;
}

// Whether another candidate slot holds (or is about to hold) the key's flight,
// so that we, holding slot `mine` tentatively, must yield. See the top of the file.
bool Flights::another_owner(std::uint32_t mine) {
  for (std::uint32_t i = 0; i < probe_; ++i) {
    if (i == mine) continue;
    FlightSlot& s = slot(i);
    if (&s == &slot(mine)) continue;  // fewer slots than kProbe
    const steady::time_point give_up = steady::now() + std::chrono::milliseconds(kTransientGraceMs);
    for (;;) {
      const std::uint32_t w = load_word_sc(s);
      if (state_of(w) == kFree) break;
      if (state_of(w) != kBusy) {  // claiming or releasing: a few stores
        if (late()) break;         // past our own lease we compute regardless
        settle(s, w, deadline_);
        continue;
      }
      Owner o;
      if (!read_busy(s, w, o)) {  // changed as we read it: look again (not forever)
        if (late()) break;
        continue;
      }
      if (o.key_hash != key_hash_) break;
      if (confirmed(w) || i < mine) return true;
      // Tentative for our key at a higher index: it yields to us if it saw
      // us, else it confirms (and then we yield). Wait for its decision.
      if (process_gone(o.pid)) {
        force_free(s, w, "tentative (its process died there)");
        continue;
      }
      if (late()) break;
      if (steady::now() >= give_up) {
        force_free(s, w, "tentative for too long");
        continue;
      }
      futex_wait(&s.word, w, 1);
    }
  }
  return false;
}

Flights::Outcome Flights::wait(std::uint32_t index, std::uint32_t w, const Owner& o,
                               std::int64_t lease_ms, Flight& out) {
  FlightSlot& s = slot(index);
  std::atomic_ref<std::uint32_t> waiters(s.waiters);
  waiters.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic_ref<std::uint32_t>& waiters;
    ~Leave() { waiters.fetch_sub(1, std::memory_order_seq_cst); }
  } leave{waiters};
  for (;;) {
    const bool late_now = late();
    if (late_now || overdue(o)) {
      if (claim(index, w, lease_ms, out) == Claim::owner) return Outcome::owner;
      // Past our own lease, we look at the cache once more, then compute unshared.
      if (late_now || late()) {
        if (spent_) return Outcome::unshared;
        spent_ = true;
      }
      return Outcome::waited;
    }
    const std::int64_t owner_left = o.lease_until_ms - clock::now_ms();  // > 0: not overdue
    const std::int64_t own_left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline_ - steady::now()).count();
    futex_wait(&s.word, w, std::clamp<std::int64_t>(std::min(owner_left, own_left), 1, kPollMs));
    if (load_word(s) != w) return Outcome::waited;
  }
}

void release(const Flight& f) {
  if (stripe_lock::identity().generation != f.epoch) return;  // a fork child's copy: the parent's flight
  const std::uint32_t releasing = same_flight(f.word, kReleasing);
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

namespace testing {
bool set_before_claim_hook(Hook hook) noexcept {
  if (!hooks_allowed()) return false;
  g_before_claim.store(hook, std::memory_order_release);
  return true;
}
}  // namespace testing

}  // namespace hostcache::flight
