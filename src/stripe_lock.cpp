#include "stripe_lock.h"

#include <hostcache/errors.h>

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <string>

#include "atomic_words.h"

namespace hostcache::stripe_lock {

void init(pthread_mutex_t& mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int rc = pthread_mutex_init(&mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  if (rc != 0) throw Error(Errc::io_error, std::string("pthread_mutex_init: ") + std::strerror(rc));
}

namespace {

bool pid_dead(std::uint32_t pid) { return pid != 0 && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH; }

// The owner's thread id, from the robust mutex's lock word (glibc keeps the
// owner's TID in its low 30 bits).
std::uint32_t owner_tid(pthread_mutex_t& m) {
  return std::atomic_ref<int>(m.__data.__lock).load(std::memory_order_relaxed) & 0x3fffffff;
}

// Locks, but wakes every second to ask whether the lock is held by a thread
// that exists. A robust mutex is released by the kernel when its owner dies;
// one whose lock word names no living thread (scribbled over, or its robust
// list was lost) would block forever, so it is reported as not recoverable
// and rebuilt like one.
int lock_or_detect_stuck(pthread_mutex_t& m) {
  for (;;) {
    timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 1;
    int rc = pthread_mutex_timedlock(&m, &deadline);
    if (rc == EDEADLK) return ENOTRECOVERABLE;  // the word names us, yet we hold no stripe lock: scribbled
    if (rc != ETIMEDOUT) return rc;
    const std::uint32_t tid = owner_tid(m);
    if (tid != 0 && pid_dead(tid)) return ENOTRECOVERABLE;
  }
}

}  // namespace

Acquired lock(layout::StripeHeader& s) {
  const auto me = std::uint32_t(::getpid());
  for (;;) {
    int rc = lock_or_detect_stuck(s.lock);
    if (rc == 0 || rc == EOWNERDEAD) {
      Acquired a;
      a.owner_died = rc == EOWNERDEAD;
      a.dead_pid = words::load(s.owner_pid);
      words::store(s.owner_pid, me);
      return a;
    }
    if (rc != ENOTRECOVERABLE) throw Error(Errc::io_error, std::string("stripe lock: ") + std::strerror(rc));
    // Not recoverable: one process rebuilds the mutex; the others wait for it.
    std::uint32_t holder = 0;
    if (std::atomic_ref<std::uint32_t>(s.reinit_guard).compare_exchange_strong(holder, me)) {
      init(s.lock);
      rc = pthread_mutex_lock(&s.lock);
      words::store(s.reinit_guard, 0u, std::memory_order_release);
      if (rc != 0 && rc != EOWNERDEAD) {
        throw Error(Errc::io_error, std::string("stripe lock after reinit: ") + std::strerror(rc));
      }
      Acquired a;
      a.owner_died = true;
      a.reinitialized = true;
      a.dead_pid = words::load(s.owner_pid);
      words::store(s.owner_pid, me);
      return a;
    }
    if (pid_dead(holder)) {
      std::atomic_ref<std::uint32_t>(s.reinit_guard).compare_exchange_strong(holder, 0u);
    }
    sched_yield();
  }
}

void mark_consistent(layout::StripeHeader& s) { pthread_mutex_consistent(&s.lock); }

void unlock(layout::StripeHeader& s) {
  words::store(s.owner_pid, 0u);
  pthread_mutex_unlock(&s.lock);
}

void unlock_inconsistent_for_testing(layout::StripeHeader& s) {
  words::store(s.owner_pid, 0u);
  pthread_mutex_unlock(&s.lock);
}

}  // namespace hostcache::stripe_lock
