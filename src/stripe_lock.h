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
// not reused, except within one tick of the start time (10 ms: a thread that
// got the dead holder's id within the tick it was born in wears its very
// word; that takes control of pid allocation, and leaves a window only while
// a locker's judgement is pending: README, known limits). There is no
// second object to reinitialize and no guard to give back.
//
// Scope: liveness is judged with thread ids and start times, so every
// process locking a segment must share one pid namespace and one time
// namespace: segment.cpp refuses a read-write attach from another, and
// stripe.cpp refuses to lock from a process that moved to another after
// attaching (a child forked into a new namespace), and a waiter whose
// process moved since (setns) judges no owner. Known limit: a holder
// killed because another thread of its process called execve() leaves the
// new program with its thread id and start time; the lock then looks held
// by a live owner, and lockers get Errc::busy after lock_timeout until that
// program exits. Under hidepid=2 an owner hidden from /proc is judged by
// kill(tid, 0) alone (a reused id looks alive: busy, never two holders).
//
// Thread-safety: any number of threads and processes call lock/unlock on the
// same word. Not reentrant. A thread that finds its own identity in the word
// judges it like any other owner's, alive: it never takes it over (the word
// may be worn by a child of clone(CLONE_VM), which shares its memory, or by a
// thread that reused a dead holder's id within its start time's tick).
#pragma once

#include <chrono>
#include <cstdint>

#include "atomic_words.h"
#include "layout.h"

namespace hostcache::stripe_lock {

// The initial (free) value of a lock word.
void init(std::uint64_t& word);

// The lock word's waiters bit (a holder's word is its identity word, with
// or without it).
inline constexpr std::uint64_t kWaiters = std::uint64_t{1} << 31;
// Whether a lock word names a holder.
inline bool held(std::uint64_t lock_word) { return (lock_word & ~kWaiters) != 0; }

struct Acquired {
  bool acquired = false;        // false: the deadline passed while a live owner held it
  bool owner_died = false;      // taken over from a dead owner: the stripe may be mid-mutation
  std::uint32_t dead_tid = 0;   // the dead owner's thread id
  std::uint32_t dead_pid = 0;   // its process, when it recorded itself (diagnostics)
  std::uint32_t holder_tid = 0; // when !acquired: the live owner
  bool forked = false;          // when !acquired: this process was forked as it took the lock (its parent's)
  bool moved = false;           // when !acquired: this process moved to another pid or time namespace
};

// This thread's identity as a lock owner (its word: thread id and start
// time) and its process's pid and namespaces. Recomputed on first use after
// a fork; the reference stays valid for the thread's life. A critical section
// takes it once and passes it to lock, unlock and same_namespaces, instead of
// each looking it up (a thread-local access in a shared library).
struct Identity {
  std::uint64_t generation = 0;  // the fork epoch it was computed in
  // The fork epoch's word (the MADV_WIPEONFORK page's), valid for the
  // process's life: a caller that checks it often loads it inline.
  const std::uint64_t* fork_word = nullptr;
  std::uint64_t word = 0;       // 0: no descriptor or memory to read the start time (no_birth: errno); lock refuses
  int no_birth = 0;
  std::uint32_t pid = 0;
  // Inodes of /proc/thread-self/ns/pid and .../time. pidns 0: this thread
  // cannot read its pid namespace (no_pidns: errno) and takes no lock;
  // timens 0: a kernel without time namespaces.
  std::uint64_t pidns = 0, timens = 0;
  int no_pidns = 0;
};
// Throws Error(io_error) if the page that tells a forked child from its
// parent cannot be mapped (tried again on the next call).
const Identity& identity();

// This process's fork epoch: a number drawn anew in every child, however
// it was forked (the MADV_WIPEONFORK page's), for process-local state that
// a child must not inherit from threads it has no copy of (log.cpp's sink).
// 0 if the page cannot be mapped (tried again on the next call).
std::uint64_t fork_epoch() noexcept;

// Whether this process was forked after `me` was computed (its fork epoch is
// no longer the current one): `me` is then the parent's. A critical section
// that finds itself in a child (a fork from a signal handler or a callback
// while its thread held the lock) must leave the lock and the sequence
// alone: they are its parent's.
inline bool forked_since(const Identity& me) { return words::load(*me.fork_word) != me.generation; }

// Takes the stripe's lock, waiting until `deadline` at most. Throws
// Error(io_error) if this thread's start time could not be read from /proc
// for want of descriptors or memory (tried again on the next call): a lock
// word without it could not be judged once its thread died and its id was
// reused.
Acquired lock(layout::StripeHeader& stripe, std::chrono::steady_clock::time_point deadline);
// The same, waiting `timeout` at most from the first failed attempt.
Acquired lock(layout::StripeHeader& stripe, std::chrono::milliseconds timeout);
void unlock(layout::StripeHeader& stripe);
// The same, with this thread's identity() already in hand. Neither records
// nor releases anything in a child forked since `me` was computed (see
// forked_since; lock then returns !acquired with `forked` set). A caller
// whose section may call identity() again in such a child (which refreshes
// the thread's Identity in place to the child's own) passes a copy, as
// stripe::Locked does.
Acquired lock(layout::StripeHeader& stripe, const Identity& me, std::chrono::milliseconds timeout);
void unlock(layout::StripeHeader& stripe, const Identity& me);

// The identity word this thread writes when it holds a lock (tests).
std::uint64_t self_word();

// Liveness of the owner named by a lock word (tests, tools).
enum class Life { alive, dead };
// Judged by /proc when it is this thread's own pid namespace's (it shows
// this thread under its own id), else by the kernel's answers alone.
Life owner_life(std::uint64_t word);
Life owner_life(std::uint64_t word, const Identity& me);

// Whether this thread's pid and time namespaces (inodes of
// /proc/thread-self/ns/pid and .../time) are the given ones, a segment
// creator's: thread ids and start times mean nothing across them. False
// when either pid namespace is unknown (0): a thread that cannot read its
// own takes no lock.
bool same_namespaces(std::uint64_t pidns, std::uint64_t timens);

// Whether this process is still in the namespaces `me` records: read
// again (two stats) once the gap between its monotonic and wall clocks has
// changed at all since the last time, which a move into another time
// namespace does at once (its offset); otherwise the last answer stands.
bool still_in_namespaces(const Identity& me);
// The same test for a reader, against the segment's time namespace, from
// the gap of a clock::coarse() it has read: false when this process is now
// in another one, or cannot tell (no /proc that shows this thread; a kernel
// without time namespaces, where only the time namespace is unreadable, is
// unmoved).
bool time_namespace_unmoved(std::uint64_t timens, std::int64_t gap_ns);

// The inode of this thread's namespace of `kind` ("pid", "time"), 0 with
// errno when it cannot be read (no /proc, one that does not show this
// thread, or, for "time", a kernel without time namespaces).
std::uint64_t own_ns_inode(const char* kind);

// How many pid namespaces the NSpid line of a /proc/PID/status file names
// (1: that /proc is the thread's own namespace's); 0 without such a line
// (Linux before 4.1), -1 when the file cannot be read. For the judgement
// above; declared here for its tests.
int nspid_levels(const char* path);
bool same_namespaces(const Identity& me, std::uint64_t pidns, std::uint64_t timens);

// The owner's thread id in a lock word (0 when free).
inline std::uint32_t tid_of(std::uint64_t word) { return std::uint32_t(word) & 0x7fffffffu; }

}  // namespace hostcache::stripe_lock
