// per_process.h — process-local state that a forked child must not inherit.
//
// A child has a copy of its parent's memory but only of the thread that
// forked: a mutex another thread held, a buffer it was appending to, stay
// that way in the child for ever. PerProcess<T> holds one T per fork epoch
// (stripe_lock::fork_epoch(), drawn anew in every child however it was
// forked, atfork handlers or not): the first use in a process whose epoch is
// not the held T's makes a T of its own, and leaves the parent's copy alone
// (never used, never freed, in the child). Nothing waits and nothing runs at
// fork. Made without a lock: threads that race each make one, and the
// losers free theirs.
//
// Users: memoize.cpp's per-handle state, log.cpp's stderr sink.
#pragma once

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
    if (n != nullptr && current(*n, stripe_lock::fork_epoch())) delete n;
  }

  // This process's T, made from `args` if it has none yet. An epoch of 0
  // (its page could not be mapped) keeps whatever T there is.
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
    return fresh.release()->value;  // what it replaced, if anything, is a parent's
  }

 private:
  struct Node {
    template <class... Args>
    explicit Node(std::uint64_t e, Args&&... args) : epoch(e), value(std::forward<Args>(args)...) {}
    const std::uint64_t epoch;
    T value;
  };
  static bool current(const Node& n, std::uint64_t epoch) { return n.epoch == epoch || epoch == 0; }

  std::atomic<Node*> node_{nullptr};
};

}  // namespace hostcache
