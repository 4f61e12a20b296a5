#include "generations.h"

#include <xxhash.h>

#include "atomic_words.h"
#include "crash_point.h"
#include "log.h"

namespace hostcache::generations {

std::uint32_t slot_of(std::string_view tag, std::uint32_t tag_slots) {
  return std::uint32_t(XXH3_64bits(tag.data(), tag.size())) & (tag_slots - 1);
}

std::uint32_t ns_slot_of(std::string_view ns, std::uint32_t tag_slots) {
  return std::uint32_t(XXH3_64bits_withSeed(ns.data(), ns.size(), 0x6e616d65u)) & (tag_slots - 1);
}

GenerationStamp read(const Segment& segment, const std::uint32_t* slots, unsigned ntags, bool has_ns,
                     std::uint32_t ns_slot) {
  GenerationStamp stamp;
  if (has_ns) stamp.ns = words::load(segment.tag_gens()[ns_slot & (segment.geometry().tag_slots - 1)], std::memory_order_acquire);
  stamp.global = words::load(segment.header()->global_gen, std::memory_order_acquire);
  stamp.ntags = ntags;
  for (unsigned i = 0; i < ntags; ++i) {
    stamp.tags[i] = words::load(segment.tag_gens()[slots[i] & (segment.geometry().tag_slots - 1)], std::memory_order_acquire);
  }
  return stamp;
}

namespace {
// After the generation: a stripe that reads the new epoch then sees the new
// generation too. A process killed in between costs eviction quality only
// (stale entries found later), never a stale hit.
void bump_epoch(Segment& segment) {
  std::atomic_ref<std::uint64_t>(segment.header()->inval_epoch).fetch_add(1, std::memory_order_seq_cst);
}
}  // namespace

void bump_global(Segment& segment) {
  HOSTCACHE_CRASH_POINT("clear.before_bump");
  std::atomic_ref<std::uint64_t>(segment.header()->global_gen).fetch_add(1, std::memory_order_seq_cst);
  HOSTCACHE_CRASH_POINT("clear.after_bump");
  bump_epoch(segment);
  log::get().debug("clear '{}'", segment.name());
}

void bump_tag(Segment& segment, std::string_view tag) {
  const std::uint32_t slot = slot_of(tag, segment.geometry().tag_slots);
  HOSTCACHE_CRASH_POINT("invalidate.before_bump");
  std::atomic_ref<std::uint64_t>(segment.tag_gens()[slot]).fetch_add(1, std::memory_order_seq_cst);
  HOSTCACHE_CRASH_POINT("invalidate.after_bump");
  bump_epoch(segment);
  log::get().debug("invalidate '{}' tag '{}' (slot {})", segment.name(), tag, slot);
}

}  // namespace hostcache::generations

namespace hostcache::generations {

void bump_ns(Segment& segment, std::string_view ns) {
  const std::uint32_t slot = ns_slot_of(ns, segment.geometry().tag_slots);
  std::atomic_ref<std::uint64_t>(segment.tag_gens()[slot]).fetch_add(1, std::memory_order_seq_cst);
  bump_epoch(segment);
  log::get().debug("clear '{}' namespace '{}' (slot {})", segment.name(), ns, slot);
}

}  // namespace hostcache::generations
