// per_process.h — process-local state that a forked child must not inherit.
//
// A child has a copy of its parent's memory but only of the thread that
// forked: a mutex another thread held, a buffer it was appending to, stay
// that way in the child for ever. PerProcess<T> holds one T per process:
// the first use in a process that did not make the held T makes a T of its
// own, and leaves the parent's copy alone (never used, never freed, in the
// child). Nothing waits and nothing runs at fork. Made without a lock:
// threads that race each make one, and the losers free theirs.
//
// Which process made a T: its fork epoch (stripe_lock::fork_epoch(), drawn
// anew in every child however it was forked, atfork handlers or not), one
// load. A process whose fork page could not be mapped (ENOMEM: RLIMIT_AS, a
// full address space) has epoch 0, and so has its child, which cannot map
// one either: there the pid tells them apart, a system call per use
// (test_attack_fork10, ChildOfAProcessWithoutAForkPage...). A pid is
// unique among the living only: a descendant made by a raw clone (no
// atfork handlers run) that is given the pid of a dead epoch-0 ancestor
// takes that ancestor's T, held mutex and all (test_attack_fork11, DISABLED_
// GrandchildWithADeadAncestorsPid...: forced with clone3's set_tid; open,
// and needing a failed mmap, a raw clone and pid reuse at once). A T made at
// epoch 0 is replaced once the page maps, and left alive (another thread
// may still use it): one T more, once, in such a process.
//
// Users: memoize.cpp's per-handle state, log.cpp's stderr sink.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

#include "stripe_lock.h"

namespace hostcache {

template <class T>
class PerProcess {
 public:
  PerProcess() = default;
  PerProcess(const PerProcess&) = delete;
  PerProcess& operator=(const PerProcess&) = delete;
  ~PerProcess() {
    Node* n = node_.load(std::memory_order_acquire);
    if (n == nullptr) return;
    if (made_here(*n, stripe_lock::fork_epoch())) {
      delete n;
    } else {
      abandon(n);
    }
  }

  // This process's T, made from `args` if it has none yet.
  template <class... Args>
  T& get(Args&&... args) {
    const std::uint64_t epoch = stripe_lock::fork_epoch();
    Node* n = node_.load(std::memory_order_acquire);
    if (n != nullptr && current(*n, epoch)) return n->value;
    auto fresh = std::make_unique<Node>(epoch, std::forward<Args>(args)...);
    while (!node_.compare_exchange_weak(n, fresh.get(), std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
      if (n != nullptr && current(*n, epoch)) return n->value;  // another thread's won
    }
    if (n != nullptr) abandon(n);  // a parent's, or this process's from epoch 0
    return fresh.release()->value;
  }

 private:
  struct Node {
    template <class... Args>
    explicit Node(std::uint64_t e, Args&&... args)
        : epoch(e), pid(e == 0 ? ::getpid() : 0), value(std::forward<Args>(args)...) {}
    const std::uint64_t epoch;
    const pid_t pid;  // who made it, where the epoch cannot tell (epoch 0)
    Node* next_abandoned = nullptr;
    T value;
  };
  // Whether `n` is the T of the process whose epoch is `epoch`.
  static bool current(const Node& n, std::uint64_t epoch) {
    if (epoch != 0) return n.epoch == epoch;
    return n.epoch == 0 && n.pid == ::getpid();
  }
  // ... or was made by it before its fork page mapped.
  static bool made_here(const Node& n, std::uint64_t epoch) {
    return current(n, epoch) || (n.epoch == 0 && n.pid == ::getpid());
  }
  // Left alive, and kept reachable: LeakSanitizer reported it, unreferenced,
  // in a child that exits normally (test_attack_fork10, AChildThatLogsAnd
  // Memoizes...). A lock-free push, not __lsan_ignore_object, which takes a
  // lock of the sanitizer's that a child forked meanwhile would inherit held.
  static void abandon(Node* n) {
    Node* head = abandoned_.load(std::memory_order_relaxed);
    do {
      n->next_abandoned = head;
    } while (!abandoned_.compare_exchange_weak(head, n, std::memory_order_release, std::memory_order_relaxed));
  }
  static inline std::atomic<Node*> abandoned_{nullptr};

  std::atomic<Node*> node_{nullptr};
};

}  // namespace hostcache
