#include "index.h"

namespace hostcache::index {

layout::Bucket* find_by_offset(layout::Bucket* buckets, std::uint32_t groups, std::uint64_t hash,
                               std::uint64_t off) {
  const Probe p = probe(hash, groups);
  const layout::Bucket want = encode(off, p.fingerprint);
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = group(buckets, g);
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
      if ((load(grp[i]) & ~layout::kRefBit) == want) return &grp[i];
    }
  }
  return nullptr;
}

layout::Bucket* find_empty(layout::Bucket* buckets, std::uint32_t groups, std::uint64_t hash) {
  // The emptier of the two groups: balancing the load (two choices) keeps
  // groups from filling long before the index does.
  const Probe p = probe(hash, groups);
  layout::Bucket* best = nullptr;
  int best_free = 0;
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = group(buckets, g);
    layout::Bucket* first = nullptr;
    int free = 0;
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
      if (load(grp[i]) == 0) {
        if (first == nullptr) first = &grp[i];
        ++free;
      }
    }
    if (free > best_free) {
      best = first;
      best_free = free;
    }
  }
  return best;
}

}  // namespace hostcache::index
