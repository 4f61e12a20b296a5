// thread_scratch.h — per-thread buffers that stay usable while their thread exits.
//
// A function-local thread_local is built at a thread's first call and
// destroyed at the thread's exit before every thread_local built earlier. A
// caller's own thread_local whose destructor calls the cache (a per-thread
// context that flushes through it as its thread ends) would then use
// destroyed buffers (test_attack_alias, ThreadExit). thread_scratch<Tag>()
// gives the thread's T while it lives and, once it is destroyed, the caller's
// `fallback` (a T for that call alone: slower, never wrong).
#pragma once

#include <optional>

namespace hostcache::detail {

// Tag: a type of the calling file's own (an anonymous-namespace struct), one
// per buffer, so that two buffers never share a T.
template <class Tag, class T>
T& thread_scratch(std::optional<T>& fallback) {
  static thread_local bool gone = false;  // trivially destructible: readable to the thread's very end
  struct Slot {
    T value{};
    ~Slot() { gone = true; }
  };
  if (gone) [[unlikely]] return fallback.emplace();
  static thread_local Slot slot;
  return slot.value;
}

}  // namespace hostcache::detail
