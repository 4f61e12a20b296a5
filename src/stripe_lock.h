// stripe_lock.h — the process-shared robust mutex of each stripe.
//
// A raw pthread mutex (PTHREAD_PROCESS_SHARED, PTHREAD_MUTEX_ROBUST), not
// Boost.Interprocess's: Boost turns EOWNERDEAD into a permanently unusable
// lock, while we must repair the stripe and go on (invariant 6).
//
// When the owner died, lock() still acquires the mutex and reports it; the
// caller repairs the stripe, then calls mark_consistent() before unlock(). A
// mutex left not recoverable (someone unlocked it without marking it
// consistent) is reinitialized by exactly one process (guarded by
// StripeHeader::reinit_guard) and reported like a dead owner.
#pragma once

#include <pthread.h>

#include <cstdint>

#include "layout.h"

namespace hostcache::stripe_lock {

void init(pthread_mutex_t& mutex);

struct Acquired {
  bool owner_died = false;      // the stripe may be mid-mutation: repair it
  bool reinitialized = false;   // the mutex was not recoverable and was rebuilt
  std::uint32_t dead_pid = 0;   // the previous owner, when it recorded itself
};

// Blocks until this process holds the stripe's lock. Throws Error(io_error)
// on an unexpected pthread error.
Acquired lock(layout::StripeHeader& stripe);
// REQUIRES: lock() returned owner_died and the stripe has been repaired.
void mark_consistent(layout::StripeHeader& stripe);
void unlock(layout::StripeHeader& stripe);

// Test hook: unlocks without marking consistent, leaving the mutex not
// recoverable, as a buggy recoverer would.
void unlock_inconsistent_for_testing(layout::StripeHeader& stripe);

}  // namespace hostcache::stripe_lock
