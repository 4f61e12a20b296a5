// stripe_lock.h — the lock word of each stripe: the library's own, holding no
// pointers.
//
// The lock is StripeHeader::lock, one 64-bit word: 0 when free, else the
// owner's identity — its thread id and its birth stamp (the low 32 bits of
// the thread's start time, from /proc) — and a waiters bit. Its low 32 bits
// are the futex word contended lockers sleep on (FUTEX_WAIT with a short
// timeout, never a pointer followed, never a list walked). Whoever can write
// the segment can write this word; the worst it can do is make a locker wait
// (bounded by the caller's deadline) or make it take the lock over and repair
// the stripe.
//
// Dead owners. A locker that has waited one poll interval (a few ms) for the
// same owner asks the kernel whether that owner still exists: /proc/TID/stat
// missing, a zombie, or a start time other than the birth stamp (the tid was
// reused) means it died holding the lock. The locker then takes the lock over
// with one compare-and-swap from the exact word it judged: of several lockers
// that judged the same dead owner, exactly one succeeds; the others see a new
// word (a live owner: the rebuilder) and wait for it. A word equal to the one
// judged can only still be the dead owner's, since a thread's identity is
// never reused. There is no second object to reinitialize and no guard to
// give back, so no two processes can ever hold the lock at once.
//
// Scope: liveness is judged with thread ids, so every process locking a
// segment must share one pid namespace; segment.cpp refuses a read-write
// attach from another one.
//
// Thread-safety: any number of threads and processes call lock/unlock on the
// same word. Not reentrant: a thread that finds its own identity in the word
// while it holds no stripe lock treats the word as scribbled and takes over.
#pragma once

#include <chrono>
#include <cstdint>

#include "layout.h"

namespace hostcache::stripe_lock {

// The initial (free) value of a lock word.
void init(std::uint64_t& word);

struct Acquired {
  bool acquired = false;        // false: the deadline passed while a live owner held it
  bool owner_died = false;      // taken over from a dead owner: the stripe may be mid-mutation
  std::uint32_t dead_tid = 0;   // the dead owner's thread id
  std::uint32_t dead_pid = 0;   // its process, when it recorded itself (diagnostics)
  std::uint32_t holder_tid = 0; // when !acquired: the live owner
};

// Takes the stripe's lock, waiting until `deadline` at most.
Acquired lock(layout::StripeHeader& stripe, std::chrono::steady_clock::time_point deadline);
void unlock(layout::StripeHeader& stripe);

// The identity word this thread writes when it holds a lock (tests).
std::uint64_t self_word();

// Liveness of the owner named by a lock word (tests, tools).
enum class Life { alive, dead };
Life owner_life(std::uint64_t word);

// The owner's thread id in a lock word (0 when free).
inline std::uint32_t tid_of(std::uint64_t word) { return std::uint32_t(word) & 0x7fffffffu; }

}  // namespace hostcache::stripe_lock
