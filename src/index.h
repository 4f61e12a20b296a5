// index.h — the bucket array of each stripe: key hash -> entry offset.
//
// Buckets come in groups of 8 (one cache line). A key may live in one of two
// groups, g1 from the hash's low bits and g2 from bits 32 and up, so a probe
// reads at most two cache lines: the probe bound is 16 buckets, always. When
// both groups are full, set() evicts one of the 16 (the coldest) to make
// room: the index never overflows and never chains.
//
// Both groups full (rare: the index has a bucket per 80 arena bytes, more
// than the smallest entries need) first tries to move one of the 16 to its
// other group (one cuckoo step, arena.cpp's place()); only then is one evicted.
//
//   bucket (64 bits): [ref:1][fingerprint:23][offset/8 + 1:40]   0 = empty
//
// Readers load buckets with relaxed atomics (the stripe's seq validates what
// they saw) and may set the ref bit with a compare-and-swap from the value
// they saw — the one write a reader makes, only when the bit is clear. A ref
// bit set on a bucket that a writer has since reused for the same offset
// marks another entry hot: harmless.
#pragma once

#include <cstdint>

#include "atomic_words.h"
#include "layout.h"

namespace hostcache::index {

struct Probe {
  std::uint32_t g1 = 0;
  std::uint32_t g2 = 0;      // == g1 when the stripe has one group
  std::uint64_t fingerprint = 0;
};

// Groups need not be a power of two (the index is sized to the arena, not
// rounded down): a 32-bit value maps onto [0, groups) by multiply-and-shift.
// g1 comes from the hash's low half; g2 from a multiplicative remix of the
// whole hash, because the high bits also choose the stripe and would
// otherwise confine g2 to a slice of the groups; the fingerprint comes from
// bits 32-54, which g1 does not use.
inline std::uint32_t fold(std::uint32_t v, std::uint32_t groups) {
  return std::uint32_t((std::uint64_t(v) * groups) >> 32);
}

inline Probe probe(std::uint64_t hash, std::uint32_t groups) {
  Probe p;
  p.g1 = fold(std::uint32_t(hash), groups);
  p.g2 = fold(std::uint32_t((hash * 0x9E3779B97F4A7C15ull) >> 32), groups);
  if (p.g2 == p.g1) p.g2 = p.g1 + 1 < groups ? p.g1 + 1 : 0;
  p.fingerprint = (hash >> 32) & layout::kFingerprintMask;
  return p;
}

inline layout::Bucket encode(std::uint64_t off, std::uint64_t fingerprint) {
  return (fingerprint << layout::kFingerprintShift) | ((off >> 3) + 1);
}
inline std::uint64_t fingerprint_of(layout::Bucket b) {
  return (b >> layout::kFingerprintShift) & layout::kFingerprintMask;
}
// The entry offset a non-empty bucket names; false if it lies outside the arena.
inline bool offset_of(layout::Bucket b, std::uint64_t arena_bytes, std::uint64_t& off) {
  std::uint64_t units = b & layout::kOffsetMask;
  if (units == 0) return false;
  off = (units - 1) << 3;
  return off + layout::kHeaderBytes <= arena_bytes;
}

inline layout::Bucket load(const layout::Bucket& b) { return words::load(b); }
inline void store(layout::Bucket& b, layout::Bucket v) { words::store(b, v); }

// Marks a bucket referenced, writing only if the bit is clear, and only if
// the bucket still holds what the reader saw: a blind fetch_or could land on
// a bucket a writer has just emptied and leave a bucket that is "ref bit, no
// entry" (the SIGKILL storm's checker caught exactly that).
inline void touch(layout::Bucket& b, layout::Bucket seen) {
  if ((seen & layout::kRefBit) == 0) {
    std::atomic_ref<layout::Bucket>(b).compare_exchange_strong(seen, seen | layout::kRefBit,
                                                               std::memory_order_relaxed);
  }
}

// A bit per bucket of the group `grp` (bit i: bucket i) that may hold
// `fingerprint`: every such bucket has its bit set; an empty bucket's may be
// set too. A candidate must be re-read with load() and checked before use
// (the vector path reads the group 16 bytes at a time, optimistically: the
// stripe's sequence validates it, as every optimistic read).
inline unsigned candidates(const layout::Bucket* grp, std::uint64_t fingerprint) {
  static_assert(layout::kGroupSlots == 8 && layout::kFingerprintShift == 40, "the lanes below");
#if defined(HOSTCACHE_WORDS_SIMD)
  const auto* p = reinterpret_cast<const std::uint8_t*>(grp);
  // Bits 32-63 of each bucket, in order: ref (31), fingerprint (8-30), offset's top (0-7).
  auto highs = [](__m128i lo, __m128i hi) {
    return _mm_castps_si128(_mm_shuffle_ps(_mm_castsi128_ps(lo), _mm_castsi128_ps(hi), _MM_SHUFFLE(3, 1, 3, 1)));
  };
  const __m128i h0 = highs(words::load16(p), words::load16(p + 16));
  const __m128i h1 = highs(words::load16(p + 32), words::load16(p + 48));
  const __m128i mask = _mm_set1_epi32(int(layout::kFingerprintMask << 8));
  const __m128i want = _mm_set1_epi32(int(fingerprint << 8));
  const int m0 = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(h0, mask), want)));
  const int m1 = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(h1, mask), want)));
  return unsigned(m0) | (unsigned(m1) << 4);
#else
  unsigned m = 0;
  for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
    const layout::Bucket b = load(grp[i]);
    if (b != 0 && fingerprint_of(b) == fingerprint) m |= 1u << i;
  }
  return m;
#endif
}

// The group of 8 buckets `g` of a stripe's bucket array.
inline layout::Bucket* group(layout::Bucket* buckets, std::uint32_t g) {
  return buckets + std::uint64_t(g) * layout::kGroupSlots;
}

// REQUIRES lock. The bucket naming entry `off` among the key's two groups, or nullptr.
layout::Bucket* find_by_offset(layout::Bucket* buckets, std::uint32_t groups, std::uint64_t hash,
                               std::uint64_t off);
// REQUIRES lock. An empty bucket among the key's two groups, or nullptr.
layout::Bucket* find_empty(layout::Bucket* buckets, std::uint32_t groups, std::uint64_t hash);

}  // namespace hostcache::index
