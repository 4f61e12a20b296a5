// arena.h — each stripe's log-structured region for entries.
//
// The arena is a ring: entries are appended at `head` and reclaimed from
// `tail`; an entry never wraps (a pad entry fills the end before a wrap), so
// the ring from tail to head is a chain of entries whose sizes lead exactly
// from one to the next. `used` tells empty (0) from full (head == tail, used
// != 0). Its updates are ordered so that a writer killed anywhere leaves a
// ring the walk reads correctly: it grows head first, then used; it shrinks
// used first, then tail.
//
// That chain is the stripe's source of truth. The index and the counters are
// derived from it, which is what makes recovery after a writer's death simple:
// walk the chain, keep every entry whose checksum verifies, rebuild the index.
//
// Reclaiming (only under the stripe lock, seq odd), for the entry at tail:
//  - dead (overwritten, erased), expired or stale by generation: free it;
//  - live while dead bytes elsewhere would make room, or while the stripe
//    does not know that it holds no stale or expired entry (an eviction lap,
//    see arena.cpp): move it to head (compaction: a cache whose live data
//    fits keeps all of it);
//  - live under pressure: if referenced since last passed, clear the bit and
//    move it to head (second chance, CLOCK); otherwise evict it. In a full
//    ring the move is a rotation in place (no copy).
// A move is journaled in the stripe header (move_src, move_dst, move_size) so
// that a writer killed mid-copy costs only the entry being moved.
//
// Thread-safety: everything that writes requires the stripe lock held and the
// sequence odd. read_header/walk may run optimistically (the caller validates
// the sequence afterwards) or over a private copy of the stripe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "atomic_words.h"
#include "generations.h"
#include "layout.h"
#include "segment.h"

namespace hostcache::arena {

// A view of one stripe's three regions.
struct StripeView {
  layout::StripeHeader* hdr = nullptr;
  layout::Bucket* buckets = nullptr;
  std::uint8_t* arena = nullptr;
  std::uint64_t arena_bytes = 0;
  std::uint32_t groups = 0;  // power of two

  // `stripe_base` points at a StripeHeader laid out per `geo` (the segment's
  // own memory, or a private copy of stripe_bytes bytes).
  static StripeView over(std::uint8_t* stripe_base, const Geometry& geo) {
    StripeView v;
    v.hdr = reinterpret_cast<layout::StripeHeader*>(stripe_base);
    v.buckets = reinterpret_cast<layout::Bucket*>(stripe_base + sizeof(layout::StripeHeader));
    v.arena = stripe_base + sizeof(layout::StripeHeader) + std::uint64_t(geo.groups_per_stripe) * 64;
    v.arena_bytes = geo.arena_bytes;
    v.groups = geo.groups_per_stripe;
    return v;
  }
};

// Bytes an entry with these lengths occupies (header + payload, 8-aligned).
// `tags_len` includes the namespace's name.
inline std::uint64_t entry_size(std::uint64_t key_len, std::uint64_t value_len, std::uint64_t tags_len) {
  return layout::align_up(layout::kHeaderBytes + key_len + value_len + tags_len, 8);
}

// The checks of an entry's header beyond its first word, shared by the two
// readers below: tags, key, flags, lengths, and a size that is exactly the
// entry_size of its lengths (so the payload lies within the entry). Each
// length is below 2^32: no sum overflows.
inline bool entry_fields_ok(const layout::EntryHeader& h, std::uint64_t arena_bytes) {
  if (h.ntags > 4 || h.key_len == 0 || (h.flags & ~layout::kKnownFlags) != 0) return false;
  if ((h.flags & layout::kFlagCompressed) == 0 ? h.orig_len != h.value_len : h.orig_len > arena_bytes) return false;
  return entry_size(h.key_len, h.value_len, std::uint64_t(h.tags_len) + h.ns_len) == h.size;
}

// Reads the header at arena offset `off` and checks it against the arena's
// bounds: 8-aligned, size in [kHeaderBytes, arena_bytes - off], magic, kind,
// payload within size; a pad must reach exactly the arena's end. Returns
// false (and leaves `out` unspecified) when any check fails. Never reads
// outside the arena. Inline: every get reads one.
inline bool read_header(const StripeView& s, std::uint64_t off, layout::EntryHeader& out) {
  using layout::kHeaderBytes;
  const std::uint64_t a = s.arena_bytes;
  if (off % 8 != 0 || off >= a || a - off < 8) return false;
  auto* dst = reinterpret_cast<unsigned char*>(&out);
  const std::uint64_t first = words::load_word(s.arena + off);
  std::memcpy(dst, &first, 8);
  if (out.magic != layout::kEntryMagic || out.size % 8 != 0 || out.size < 8 || out.size > a - off) return false;
  if (out.kind != layout::kKindEntry) [[unlikely]] {
    if (out.kind == layout::kKindPad) return off + out.size == a;
    if (out.kind != layout::kKindGap) return false;
    std::memset(dst + 8, 0, sizeof out - 8);  // one word on disk; the rest reads as zero
    return out.live == 0;
  }
  if (out.size < kHeaderBytes) return false;
  // size >= kHeaderBytes <= a - off: every byte of the header is in bounds.
  words::copy_out_fixed<kHeaderBytes - 8>(s.arena + off + 8, dst + 8);
  return out.live <= 1 && entry_fields_ok(out, a);
}

// read_header for a lookup, which only wants a live entry: the same bounds
// and checks for such an entry (anything else is false), in one load of the
// whole header and fewer branches.
inline bool read_live_header(const StripeView& s, std::uint64_t off, layout::EntryHeader& out) {
  using layout::kHeaderBytes;
  const std::uint64_t a = s.arena_bytes;
  if (off % 8 != 0 || off >= a || a - off < kHeaderBytes) return false;
  words::copy_out_fixed<kHeaderBytes>(s.arena + off, &out);
  // magic, kind and live in one compare (the first word's upper half).
  constexpr std::uint32_t kLive = std::uint32_t(layout::kEntryMagic) | (std::uint32_t(layout::kKindEntry) << 16) |
                                  (std::uint32_t{1} << 24);
  static_assert(offsetof(layout::EntryHeader, magic) == 4 && offsetof(layout::EntryHeader, kind) == 6 &&
                offsetof(layout::EntryHeader, live) == 7);
  std::uint32_t mkl;
  std::memcpy(&mkl, reinterpret_cast<const char*>(&out) + 4, 4);
  // size, once equal to an entry_size, is a multiple of 8 and at least kHeaderBytes.
  return mkl == kLive && out.size <= a - off && entry_fields_ok(out, a);
}

// Payload offsets (arena offsets) of an entry whose header was read at `off`.
inline std::uint64_t key_off(std::uint64_t off) { return off + layout::kHeaderBytes; }
inline std::uint64_t value_off(std::uint64_t off, const layout::EntryHeader& h) {
  return off + layout::kHeaderBytes + h.key_len;
}
inline std::uint64_t tags_off(std::uint64_t off, const layout::EntryHeader& h) {
  return off + layout::kHeaderBytes + h.key_len + h.value_len;
}
inline std::uint64_t ns_off(std::uint64_t off, const layout::EntryHeader& h) {
  return tags_off(off, h) + h.tags_len;
}

// Checksum of an entry image (header + payload, `h.size` bytes) in private memory.
std::uint64_t checksum_of(const std::uint8_t* image, const layout::EntryHeader& h);
// Recomputes the checksum of the entry at `off` (header already read) and
// compares it with the stored one.
bool checksum_ok(const StripeView& s, std::uint64_t off, const layout::EntryHeader& h);

// Decodes an entry's tags blob (length-prefixed strings). False if malformed.
bool read_tags(const StripeView& s, std::uint64_t off, const layout::EntryHeader& h,
               std::vector<std::string>& tags);

// Walks the ring from tail to head, calling fn(off, header) for every entry
// (pads are skipped). Returns false, with the reason in `why`, when the chain
// is broken: a header fails read_header, an entry crosses head, the walk does
// not end exactly at head, or more bytes are walked than the arena holds.
// `ring_bytes` receives the bytes walked (pads included).
bool walk(const StripeView& s, std::uint64_t tail, std::uint64_t head,
          const std::function<void(std::uint64_t, const layout::EntryHeader&)>& fn,
          std::string* why, std::uint64_t* ring_bytes);

// ---- writing: everything below REQUIRES the stripe lock held and seq odd ----

// Makes `bytes` contiguous bytes free at the arena's head, reclaiming from the
// tail as the file comment says, and returns their offset. Counts evictions,
// expired and stale reclaims in the stripe header. Returns kNoRoom, changing
// nothing, for a size that is not an entry's or exceeds the arena: every
// entry fits its stripe by construction, whatever limits a caller asked for.
inline constexpr std::uint64_t kNoRoom = ~std::uint64_t{0};
std::uint64_t make_room(const StripeView& s, std::uint64_t bytes, const generations::Judge& judge);

// Writes the entry image (`bytes` long, 8-aligned, checksummed) at `off`,
// which make_room just returned, and appends it to the ring.
void append(const StripeView& s, std::uint64_t off, const std::uint8_t* image, std::uint64_t bytes,
            const generations::Judge& judge);

// A bucket for a new entry of `hash`: an empty one among its two groups, or
// one freed by moving a resident to its other group (one cuckoo step).
// nullptr when all 16 residents' other groups are full too.
layout::Bucket* place(const StripeView& s, std::uint64_t hash);

// Rewrites the live entry at `off` (header `old`, read under this lock) in
// place with `image` if the image has its shape (size and every length
// read_header checks): no ring growth, no reclaim, no move; the eviction
// horizons follow the new entry as append's do. False, writing nothing,
// for any other image (the caller appends it instead).
bool rewrite(const StripeView& s, std::uint64_t off, const layout::EntryHeader& old, const std::uint8_t* image,
             const generations::Judge& judge);

// Gives the entry at `off` (header `h`, read under this lock) a new expiry:
// the expiry word, then the checksum, rewritten in place; the stripe's
// eviction horizons follow (touch).
void set_expiry(const StripeView& s, std::uint64_t off, const layout::EntryHeader& h, std::int64_t expires_ms);

// The entry at `off` (header `h`) stops being live: its bucket is cleared,
// live = 0, and its bytes count as dead until the tail reclaims them.
void kill(const StripeView& s, std::uint64_t off, const layout::EntryHeader& h, layout::Bucket* bucket);

// After a writer died holding the lock: settles a journaled move (keeping
// the copy that verifies), walks the ring, keeps every entry whose checksum
// verifies, drops the rest, rebuilds the index (with cuckoo steps, so that
// entries are not dropped for want of a bucket) and the accounting. Returns false (and resets the stripe, counted
// in `resets`) when the ring cannot be walked. `kept`/`dropped` count entries.
// `stop`, if given, is asked right before each store or small group of
// stores (after the reads that decide them): when it says so, repair throws
// RepairStopped and writes nothing more (a process forked in the middle of
// its parent's repair must not carry it on).
struct RepairStopped {};
bool repair(const StripeView& s, std::string* why, std::uint64_t* kept, std::uint64_t* dropped,
            const std::function<bool()>& stop = {});

// True when the ring's header fields are in bounds (head, tail, used, the
// move journal). Checked on every lock: a segment someone scribbled on is
// repaired, never followed out of bounds.
bool header_sane(const StripeView& s);

// Empties the stripe: no entries, no buckets; counters other than the
// accounting are kept.
// `stop` as for repair (asked before each group of stores).
void reset(const StripeView& s, const std::function<bool()>& stop = {});

}  // namespace hostcache::arena
