// stripe_copy.h — a consistent private copy of one stripe, for inspection.
//
// The inspector never locks and never writes. It copies a stripe word by
// word (relaxed atomics, as atomic_words.h requires) between two acquire
// readings of the stripe's sequence: equal and even means nobody wrote in
// between, so the copy is one instant of the stripe and can be parsed with
// the arena helpers without any further care for writers. A stripe that stays
// busy is given up on after a bounded wait and reported.
//
// The geometry comes from the segment, so it is not trusted for sizes: a
// stripe larger than CopyLimits::max_stripe is never allocated or copied
// (only its header is), and every whole copy (retries included) is charged
// to CopyLimits::max_total, so one inspection allocates at most max_stripe
// bytes and copies at most max_total, whatever the header claims.
//
// Thread-safety: a StripeCopy is one thread's scratch buffer.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "arena.h"
#include "atomic_words.h"
#include "layout.h"
#include "segment.h"

namespace hostcache::inspect {

// Waiting uses the steady clock, never clock::now_ms(): a test's frozen fake
// clock must not turn a bounded retry into an endless one.
using Steady = std::chrono::steady_clock;

// How long busy stripes are waited for. A writer keeps a stripe's sequence
// odd for microseconds; one odd for milliseconds belongs to a dead writer (or
// the memory is garbage). The total keeps a segment of 1024 garbage stripes
// from taking seconds: once it is spent, each stripe gets a few tries only.
struct BusyBudget {
  Steady::duration per_stripe = std::chrono::milliseconds(20);
  Steady::duration total = std::chrono::milliseconds(500);
  Steady::duration spent{};
};

// What whole copies may cost: the largest stripe copied, and the bytes copied
// in all (`spent` counts them).
struct CopyLimits {
  std::uint64_t max_stripe = 256ull << 20;
  std::uint64_t max_total = 4ull << 30;
  std::uint64_t spent = 0;
};

enum class Took {
  copied,       // the copy is one instant of the stripe
  busy,         // it stayed busy for the whole budget; seq() says what was seen
  too_large,    // whole: the stripe is larger than max_stripe; nothing copied
  over_budget,  // whole: copying it would pass max_total; nothing copied
};

// A private, 8-aligned copy of one stripe (or of its header only).
class StripeCopy {
 public:
  explicit StripeCopy(const Segment& seg) : seg_(seg) {}

  // Copies stripe `i` (whole, or its header only) between two equal, even
  // readings of its sequence, within `limits` (whole copies only).
  Took take(std::uint32_t i, bool whole, BusyBudget& budget, CopyLimits& limits) {
    const std::uint64_t stripe_bytes = seg_.geometry().stripe_bytes;
    if (whole && stripe_bytes > limits.max_stripe) return Took::too_large;
    if (whole && (limits.spent > limits.max_total || stripe_bytes > limits.max_total - limits.spent)) {
      return Took::over_budget;
    }
    const std::uint8_t* src = seg_.stripe_base(i);
    const auto& live = *reinterpret_cast<const layout::StripeHeader*>(src);
    const std::size_t n = whole ? std::size_t(stripe_bytes / 8) : sizeof(layout::StripeHeader) / 8;
    if (buf_.size() < n) buf_.resize(n);
    const Steady::time_point start = Steady::now();
    const std::uint64_t first = words::load(live.seq, std::memory_order_acquire);
    moving_ = false;
    for (int attempt = 0;; ++attempt) {
      const std::uint64_t before = words::load(live.seq, std::memory_order_acquire);
      seq_ = before;
      moving_ = moving_ || before != first;
      if ((before & 1) == 0) {
        if (whole) {
          // Every attempt is charged: a stripe that keeps moving cannot make
          // the retries cost more than the budget allows.
          if (stripe_bytes > limits.max_total - std::min(limits.spent, limits.max_total)) {
            return Took::over_budget;
          }
          limits.spent += stripe_bytes;
        }
        // The first line (the lock word, its owner) is not copied: it changes
        // without the sequence, and nothing parsed from the copy needs it.
        for (std::size_t w = kSkipWords; w < n; ++w) buf_[w] = words::load_word(src + 8 * w);
        // Seqlock reader: the fence keeps the relaxed copy before the second reading.
        std::atomic_thread_fence(std::memory_order_acquire);
        seq_ = words::load(live.seq, std::memory_order_acquire);
        if (seq_ == before) return Took::copied;
      }
      if (attempt < 4) continue;
      const Steady::duration waited = Steady::now() - start;
      if (waited >= budget.per_stripe || budget.spent + waited >= budget.total) {
        budget.spent += waited;
        return Took::busy;
      }
      if (attempt < 64) {
        sched_yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  }

  // hdr().lock and hdr().owner_pid are not part of the copy; read the live header.
  arena::StripeView view() {
    return arena::StripeView::over(reinterpret_cast<std::uint8_t*>(buf_.data()), seg_.geometry());
  }
  const layout::StripeHeader& hdr() const {
    return *reinterpret_cast<const layout::StripeHeader*>(buf_.data());
  }
  std::uint64_t seq() const { return seq_; }
  // After Took::busy: the sequence moved, so its writers are alive (the
  // stripe is hot), rather than stuck odd (a writer slow or dead).
  bool moving() const { return moving_; }

 private:
  static constexpr std::size_t kSkipWords = layout::kCacheLine / 8;
  static_assert(offsetof(layout::StripeHeader, seq) == layout::kCacheLine,
                "everything after the lock line is copied");
  const Segment& seg_;
  std::vector<std::uint64_t> buf_;  // uint64_t: the copy is 8-aligned like the stripe
  std::uint64_t seq_ = 0;
  bool moving_ = false;
};

}  // namespace hostcache::inspect
