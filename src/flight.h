// flight.h — cross-process single flight over the segment's FlightSlots.
//
// When several processes miss the same key at once, one claims the key's
// flight and computes; the others sleep on the slot's futex word until it is
// released, its owner dies, or a lease runs out (then one of them takes it
// over). memoize.cpp drives it; the protocol and its invariants are described
// in flight.cpp.
//
// Every wait is bounded by the caller: by its own deadline (the steady-clock
// time its own lease ends), whatever the segment says about the owner.
//
// Thread-safety: a Flights is a per-call object; any number of threads and
// processes run the protocol on the same slots concurrently.
#pragma once

#include <chrono>
#include <cstdint>

#include "layout.h"
#include "segment.h"

namespace hostcache::flight {

// A flight this process holds.
struct Flight {
  layout::FlightSlot* slot = nullptr;
  std::uint32_t word = 0;  // the slot's word while we hold it
  std::uint64_t epoch = 0; // the fork epoch of the process that claimed it (stripe_lock::Identity::generation)
};

// The fields of a busy flight, read consistently.
struct Owner {
  std::uint32_t pid = 0;
  std::uint64_t key_hash = 0;
  std::int64_t lease_until_ms = 0;
};

// The key's candidate slots, from one segment.
class Flights {
 public:
  // `deadline`: the caller's own lease end; past it, nothing here waits.
  Flights(const Segment& segment, std::uint64_t key_hash,
          std::chrono::steady_clock::time_point deadline);

  enum class Outcome {
    owner,     // we hold the key's flight: compute, store, release
    waited,    // the owner finished, failed, died or overran: look at the cache again
    unshared,  // every candidate slot computes another key, or our own lease is spent
               // waiting: compute without single flight
  };

  // Claims the key's flight, or sleeps (in bounded futex waits) until the
  // process computing the key is done, dead (kill(pid, 0) == ESRCH), past its
  // lease or past our own deadline; a waiter that takes a flight over is owner.
  Outcome acquire_or_wait(std::int64_t lease_ms, Flight& out);

  // Claims the key's flight only if nobody computes the key now (a dead or
  // overrun owner is taken over). Never sleeps on an owner.
  bool try_claim(std::int64_t lease_ms, Flight& out);

 private:
  enum class Claim { owner, lost, yielded };
  layout::FlightSlot& slot(std::uint32_t i) const { return slots_[(key_hash_ + i) & mask_]; }
  bool late() const;
  Claim claim(std::uint32_t index, std::uint32_t seen, std::int64_t lease_ms, Flight& out);
  bool another_owner(std::uint32_t mine);
  Outcome wait(std::uint32_t index, std::uint32_t w, const Owner& o, std::int64_t lease_ms,
               Flight& out);

  layout::FlightSlot* slots_;
  std::uint32_t mask_;
  std::uint32_t probe_;
  std::uint64_t key_hash_;
  std::chrono::steady_clock::time_point deadline_;
  bool spent_ = false;  // our deadline passed and we looked at the cache once more
};

// Frees the flight and wakes its waiters; nothing if it was taken over, or
// in a process forked while its parent held it (a child of the compute that
// returned into the caller's stack: the flight, still computing, is the
// parent's). The fork epoch tells them apart, not the pid number: a child in
// a nested pid namespace may have its parent's.
void release(const Flight& flight);

// Releases a flight (if any) when the scope ends, exceptions included.
struct ReleaseGuard {
  const Flight* flight;
  ~ReleaseGuard() {
    if (flight != nullptr) release(*flight);
  }
};

// True when nobody holds the slot (tests, tools).
bool is_free(const layout::FlightSlot& slot);
// The owner of a busy slot, if it is busy now (tests, tools).
bool busy_owner(const layout::FlightSlot& slot, Owner& owner);

namespace testing {
// Called in acquire_or_wait between the scan that chose a free slot and the
// CAS that claims it, so that a test can interleave other processes there.
// Ignored (returns false) unless HOSTCACHE_TEST_HOOKS=1 was in the
// environment when the library first looked (once per process).
using Hook = void (*)();
bool set_before_claim_hook(Hook hook) noexcept;
// Whether HOSTCACHE_TEST_HOOKS=1 was in the environment (read once).
bool hooks_allowed() noexcept;
// Called in memoize's method lookup (memoize.cpp) while it holds the
// handle's process-local lock on its table of method slots, so that a test
// can fork there. Ignored (returns false) as above.
bool set_method_lookup_hook(Hook hook) noexcept;
}  // namespace testing

}  // namespace hostcache::flight
