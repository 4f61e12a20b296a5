// generations.h — the global generation, the tag generation table, and the
// judgement of whether an entry is still valid.
//
// clear() is one fetch_add on Header::global_gen; invalidate(tag) one fetch_add
// on the tag's slot (xxh3(tag) mod tag_slots). An entry records the
// generations it was written under and is valid only while all still match.
// Both calls are O(1) and never walk the table; the arena reclaims stale
// entries when it needs their space (invariant 2).
#pragma once

#include <hostcache/cache.h>

#include <cstdint>
#include <string_view>

#include "atomic_words.h"
#include "clock.h"
#include "layout.h"
#include "segment.h"

namespace hostcache::generations {

std::uint32_t slot_of(std::string_view tag, std::uint32_t tag_slots);
// A namespace's generation slot: in the tag table, hashed apart from tags
// (a shared slot over-invalidates, which is safe).
std::uint32_t ns_slot_of(std::string_view ns, std::uint32_t tag_slots);

// The generations to stamp an entry with, read now (acquire). `ns_slot` is
// read when has_ns.
GenerationStamp read(const Segment& segment, const std::uint32_t* slots, unsigned ntags, bool has_ns = false,
                     std::uint32_t ns_slot = 0);

void bump_global(Segment& segment);
void bump_tag(Segment& segment, std::string_view tag);
void bump_ns(Segment& segment, std::string_view ns);

enum class State { valid, expired, stale };

// Judges entries against the generations and the clock of one operation.
//
// The precise clock costs more than the rest of a hit, so it is read only
// for an entry whose expiry is within kCoarseSlackMs of the coarse clock:
// for any other, the coarse clock proves it unexpired (it lags the precise
// one by less than the slack). An entry is never judged valid at or after
// its expiry.
class Judge {
 public:
  explicit Judge(const Segment& segment) : Judge(segment, -1) { coarse_ms_ = clock::coarse_ms(); }
  // With the coarse clocks the caller has read (a get: one read for this
  // and its time-namespace check).
  Judge(const Segment& segment, const clock::Coarse& now) : Judge(segment, -1) { coarse_ms_ = now.ms; }
  // With a known precise time (tools): no clock is read.
  Judge(const Segment& segment, std::int64_t now_ms)
      : global_(&segment.header()->global_gen),
        epoch_(&segment.header()->inval_epoch),
        tags_(segment.tag_gens()),
        tag_mask_(segment.geometry().tag_slots - 1),
        coarse_ms_(now_ms),
        now_ms_(now_ms) {}

  State of(const layout::EntryHeader& h) const {
    if (h.expires_ms <= coarse_ms_ + clock::kCoarseSlackMs && h.expires_ms <= now_ms()) return State::expired;
    if (h.global_gen != words::load(*global_, std::memory_order_acquire)) return State::stale;
    if ((h.flags & layout::kFlagNamespace) != 0 &&
        h.ns_gen != words::load(tags_[h.ns_slot & tag_mask_], std::memory_order_acquire)) {
      return State::stale;
    }
    for (unsigned i = 0; i < h.ntags && i < 4; ++i) {
      if (h.tag_gen[i] != words::load(tags_[h.tag_slot[i] & tag_mask_], std::memory_order_acquire)) {
        return State::stale;
      }
    }
    return State::valid;
  }
  // The invalidation epoch (Header::inval_epoch), read now.
  std::uint64_t epoch() const { return words::load(*epoch_, std::memory_order_acquire); }
  // The precise time of this operation, read once on first use.
  std::int64_t now_ms() const {
    if (now_ms_ < 0) now_ms_ = clock::now_ms();
    return now_ms_;
  }

 private:
  const std::uint64_t* global_;
  const std::uint64_t* epoch_;
  const std::uint64_t* tags_;
  std::uint32_t tag_mask_;
  std::int64_t coarse_ms_;
  mutable std::int64_t now_ms_;
};

}  // namespace hostcache::generations
