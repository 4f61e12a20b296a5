// adversarial_support.h — what the model-based test (test_model.cpp) and the
// live-mutation fuzzer (torture/live_mutation.cpp) share: a clock shared by
// forked processes, a spinning barrier that gives up when told to, the size
// an entry takes in an arena, and a bounded log of violations written by
// children into shared memory.
//
// Besides public headers: clock.h (the test hook of the one time source) and
// layout.h for the size of an entry's header, nothing of the core.
#pragma once

#include <hostcache/cache.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "clock.h"
#include "layout.h"

namespace hostcache::testing {

// EntryHeader (layout::kHeaderBytes, 104 or 120 bytes depending on the format)
// + key + value + tags blob (a length byte per tag), padded to 8: what one
// entry takes in a stripe's arena.
inline std::size_t entry_bytes(std::size_t key, std::size_t value, const std::vector<std::string_view>& tags = {}) {
  std::size_t n = layout::kHeaderBytes + key + value;
  for (auto t : tags) n += 1 + t.size();
  return (n + 7) & ~std::size_t{7};
}

// A fake clock every forked child shares: it lives in the caller's shared
// memory (FakeClock's lives in the heap, so each child would own a copy).
// Install it before forking; any process may advance it at any moment.
class SharedClock {
 public:
  explicit SharedClock(std::int64_t* shared_word, std::int64_t start_ms = 1'000'000) : now_(shared_word) {
    std::atomic_ref<std::int64_t>(*now_).store(start_ms);
    clock::set_fake_for_testing(now_);
  }
  ~SharedClock() { clock::set_fake_for_testing(nullptr); }
  SharedClock(const SharedClock&) = delete;
  SharedClock& operator=(const SharedClock&) = delete;
  void advance(std::int64_t ms) { std::atomic_ref<std::int64_t>(*now_).fetch_add(ms); }
  std::int64_t now() const { return std::atomic_ref<std::int64_t>(*now_).load(); }

 private:
  std::int64_t* now_;
};

// A reusable barrier for n processes in shared memory (zero-filled is the
// initial state). wait() spins with sched_yield, no sleep; it returns false
// as soon as *abort is set (a sibling died: the parent says stop).
struct SpinBarrier {
  std::atomic<std::uint32_t> count;
  std::atomic<std::uint32_t> generation;

  bool wait(std::uint32_t n, const std::atomic<bool>& abort) {
    const std::uint32_t g = generation.load(std::memory_order_acquire);
    if (count.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      count.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_release);
      return true;
    }
    while (generation.load(std::memory_order_acquire) == g) {
      if (abort.load(std::memory_order_relaxed)) return false;
      sched_yield();
    }
    return true;
  }
};

// A child's bounded log, in shared memory: the first messages are kept, all
// are counted.
template <std::size_t Bytes = 16384>
struct ChildLog {
  std::atomic<std::uint64_t> messages;
  std::uint32_t used;
  char text[Bytes];

  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    messages.fetch_add(1, std::memory_order_relaxed);
    if (used + 256 >= Bytes) return;
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(text + used, Bytes - used - 2, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    used += std::uint32_t(std::min<std::size_t>(std::size_t(n), Bytes - used - 2));
    text[used++] = '\n';
    text[used] = 0;
  }
  std::string str() const { return std::string(text, used); }
};

}  // namespace hostcache::testing
