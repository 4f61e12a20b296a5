// stats.h — per-process counter slots in the segment, summed on read.
//
// Each process claims one StatsSlot (CAS on its pid) the first time it counts
// and writes only there, so counting never touches a line another process
// writes. A slot whose process is dead is folded into the header's totals and
// reused; a child of fork() notices it is a new process and claims its own
// slot. If every slot belongs to a live process, counts go to the header's
// shared totals (correct, slower).
#pragma once

#include <hostcache/stats.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "atomic_words.h"

namespace hostcache {

class Segment;

class StatsRecorder {
 public:
  // The fork epoch is the stripe lock's (stripe_lock::Identity: a word of a
  // MADV_WIPEONFORK page, zero in every child however it was made, raw
  // clone() and _Fork included): a recorder whose epoch differs knows its
  // slot belongs to its parent and claims its own. The page is looked up at
  // the first count; while it cannot be mapped, counts go to the shared
  // totals.
  explicit StatsRecorder(Segment* segment) : segment_(segment) {}
  StatsRecorder(const StatsRecorder&) = delete;
  StatsRecorder& operator=(const StatsRecorder&) = delete;
  ~StatsRecorder();  // releases the slot (folding it) when this process owns it

  void hit() { std::atomic_ref<std::uint64_t>(*counter(0)).fetch_add(1, std::memory_order_relaxed); }
  void miss() { std::atomic_ref<std::uint64_t>(*counter(1)).fetch_add(1, std::memory_order_relaxed); }

  // Sums every slot, the folded totals and the stripes' counters.
  static Stats read(const Segment& segment);

 private:
  // 0 hits, 1 misses. Inline: every get counts.
  std::uint64_t* counter(int which) {
    if (epoch_.load(std::memory_order_acquire) != current_epoch()) [[unlikely]] return claim(which);
    return published(which);
  }
  std::uint64_t current_epoch() const {
    const std::uint64_t* word = fork_word_.load(std::memory_order_acquire);
    return word != nullptr ? words::load(*word) : kNoEpoch;
  }
  static constexpr std::uint64_t kNoEpoch = ~0ull - 1;  // no fork page: never a slot
  // The counter of the slot published for this recorder's epoch.
  std::uint64_t* published(int which) const {
    return which == 0 ? hits_.load(std::memory_order_relaxed) : misses_.load(std::memory_order_relaxed);
  }
  // Claims this process's slot, or lets the thread already claiming it in
  // this epoch do so: no lock, so that a fork while another thread claims
  // cannot leave the child waiting for a thread it does not have. Until the
  // slot is published, counts go to the shared totals.
  std::uint64_t* claim(int which);
  Segment* segment_;
  std::atomic<const std::uint64_t*> fork_word_{nullptr};  // stripe_lock::Identity::fork_word, once known
  std::atomic<std::uint64_t> claiming_{~0ull};  // the fork epoch a thread of this process is claiming for
  std::atomic<std::uint64_t> epoch_{~0ull};  // fork epoch the slot was claimed in
  std::atomic<std::uint64_t*> hits_{nullptr};
  std::atomic<std::uint64_t*> misses_{nullptr};
  std::int64_t slot_ = -1;                   // our slot, -1 for the shared totals
  std::uint32_t pid_ = 0;
};

}  // namespace hostcache
