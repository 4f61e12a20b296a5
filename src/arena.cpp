#include "arena.h"

// Inlined xxHash: a get hashes a short key, where a call into the shared
// library costs as much as the hash itself.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <optional>

#include "atomic_words.h"
#include "thread_scratch.h"

#if defined(HOSTCACHE_XXH3_AVX2)
namespace hostcache::detail {
std::uint64_t xxh3_seeded_avx2(const void* data, std::size_t len, std::uint64_t seed);  // xxh3_avx2.cpp
}
#endif

namespace hostcache::arena {

using layout::EntryHeader;
using layout::kHeaderBytes;


std::uint64_t checksum_of(const std::uint8_t* image, const EntryHeader& h) {
  const std::uint64_t len = kHeaderBytes - layout::kChecksumFrom + h.key_len + h.value_len + h.tags_len + h.ns_len;
  const std::uint64_t seed = (std::uint64_t(h.size) << 32) | (std::uint64_t(h.kind) << 16) | h.magic;
#if defined(HOSTCACHE_XXH3_AVX2)
  // Past 240 bytes XXH3 runs its vector loop: twice as wide with AVX2.
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (len > 240 && avx2) return detail::xxh3_seeded_avx2(image + layout::kChecksumFrom, len, seed);
#endif
  return XXH3_64bits_withSeed(image + layout::kChecksumFrom, len, seed);
}

namespace {
struct ChecksumImageTag {};
struct ExpiryImageTag {};
}  // namespace

bool checksum_ok(const StripeView& s, std::uint64_t off, const EntryHeader& h) {
  std::optional<std::vector<std::uint64_t>> own;
  std::vector<std::uint64_t>& image = detail::thread_scratch<ChecksumImageTag>(own);
  image.resize(h.size / 8);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = words::load_word(s.arena + off + 8 * i);
  return checksum_of(reinterpret_cast<const std::uint8_t*>(image.data()), h) == h.checksum;
}

bool read_tags(const StripeView& s, std::uint64_t off, const EntryHeader& h, std::vector<std::string>& tags) {
  tags.clear();
  std::string blob(h.tags_len, '\0');
  words::copy_out(s.arena, tags_off(off, h), h.tags_len, blob.data());
  std::size_t p = 0;
  while (p < blob.size()) {
    std::size_t n = static_cast<unsigned char>(blob[p]);
    if (n == 0 || p + 1 + n > blob.size()) return false;
    tags.emplace_back(blob.substr(p + 1, n));
    p += 1 + n;
  }
  return tags.size() == h.ntags;
}

bool walk(const StripeView& s, std::uint64_t tail, std::uint64_t head,
          const std::function<void(std::uint64_t, const EntryHeader&)>& fn, std::string* why,
          std::uint64_t* ring_bytes) {
  const std::uint64_t a = s.arena_bytes;
  auto broken = [why](std::string w) {
    if (why) *why = std::move(w);
    return false;
  };
  if (tail >= a || head >= a || tail % 8 != 0 || head % 8 != 0) {
    return broken("head " + std::to_string(head) + " or tail " + std::to_string(tail) + " out of bounds");
  }
  // used == 0: empty, whatever head and tail say (used drops to 0 before
  // they are reset). head == tail otherwise: the ring is full.
  const std::uint64_t used = words::load(s.hdr->used);
  std::uint64_t p = tail, walked = 0;
  bool first = used != 0 && head == tail;
  while (used != 0 && (p != head || first)) {
    first = false;
    EntryHeader h;
    if (!read_header(s, p, h)) return broken("unreadable entry header at offset " + std::to_string(p));
    if (p < head && p + h.size > head) {
      return broken("entry at offset " + std::to_string(p) + " crosses head " + std::to_string(head));
    }
    walked += h.size;
    if (walked > a) return broken("ring longer than the arena");
    if (h.kind != layout::kKindPad) fn(p, h);  // entries, and gaps (dead, live == 0)
    p += h.size;
    if (p == a) p = 0;
  }
  if (ring_bytes) *ring_bytes = walked;
  return true;
}

}  // namespace hostcache::arena

// ---- writing -----------------------------------------------------------------

#include "crash_point.h"
#include "index.h"

namespace hostcache::arena {
namespace {

using words::load;
using words::store;

void bump(std::uint64_t& counter) { store(counter, load(counter) + 1); }

// Releases `size` bytes at the tail. `used` shrinks first: a writer killed in
// between leaves a ring that still includes the entry, which the walk recounts.
void advance_tail(const StripeView& s, std::uint64_t size) {
  std::uint64_t tail = load(s.hdr->tail) + size;
  if (tail == s.arena_bytes) tail = 0;
  const std::uint64_t used = load(s.hdr->used) - size;
  store(s.hdr->used, used);
  if (used == 0) {  // empty: restart at 0, the longest contiguous run
    tail = 0;
    store(s.hdr->head, std::uint64_t{0});
  }
  store(s.hdr->tail, tail);
}

// Clears the live byte of an entry leaving the ring, so that no walk, however
// confused, could bring it back.
void retire(const StripeView& s, std::uint64_t off) {
  words::store_word(s.arena + off, words::load_word(s.arena + off) & ~(std::uint64_t{0xff} << 56));
}

// Closes the free run [off, off + size) just before the tail: the ring is then
// full and the tail entry can be rotated in place (move_tail_to_head).
void write_gap(const StripeView& s, std::uint64_t off, std::uint64_t size) {
  EntryHeader gap{};
  gap.size = std::uint32_t(size);
  gap.magic = layout::kEntryMagic;
  gap.kind = layout::kKindGap;
  std::uint64_t w;
  std::memcpy(&w, &gap, 8);
  words::store_word(s.arena + off, w);
  const std::uint64_t head = off + size;
  store(s.hdr->head, head == s.arena_bytes ? 0 : head);  // head before used, as everywhere
  store(s.hdr->used, load(s.hdr->used) + size);
  store(s.hdr->dead_bytes, load(s.hdr->dead_bytes) + size);
}

void write_pad(const StripeView& s, std::uint64_t off) {
  EntryHeader pad{};
  pad.size = std::uint32_t(s.arena_bytes - off);
  pad.magic = layout::kEntryMagic;
  pad.kind = layout::kKindPad;
  std::uint64_t w;
  std::memcpy(&w, &pad, 8);
  words::store_word(s.arena + off, w);
  HOSTCACHE_CRASH_POINT("alloc.after_pad");
  // head before used: the ring grows only once head says so.
  store(s.hdr->head, std::uint64_t{0});
  store(s.hdr->used, load(s.hdr->used) + pad.size);
}

// Moves the live entry at the tail (`src`, validated by the caller) to the
// head. When the ring is full (head == tail) the entry is rotated in place:
// it becomes the newest without a copy. A copy never overlaps its source:
// when the free run before the tail is shorter than the entry, the run is
// closed with a gap and the entry rotated in place instead, so that at every
// instant an intact copy of it exists (invariant 6: a writer killed here
// costs nothing). Returns false, having reset the stripe, for a head that a
// writer of the segment moved out of bounds under the lock.
bool move_tail_to_head(const StripeView& s, std::uint64_t src, const EntryHeader& h, layout::Bucket* bucket,
                       bool keep_ref) {
  const std::uint64_t a = s.arena_bytes;
  std::uint64_t head = load(s.hdr->head);
  if (head >= a || head % 8 != 0) {
    reset(s);
    return false;
  }
  if (head > src && a - head < h.size) {
    write_pad(s, head);
    head = 0;
  }
  if (head < src && src - head < h.size) {
    write_gap(s, head, src - head);
    head = src;
  }
  // Now the entry fits at head without touching its source: in [head, a)
  // with head > src, or in [head, src) with room, or head == src (in place).
  store(s.hdr->move_src, src);
  store(s.hdr->move_dst, head);
  store(s.hdr->move_size, std::uint64_t(h.size));
  HOSTCACHE_CRASH_POINT("move.journaled");
  if (head != src) words::move_down(s.arena + head, s.arena + src, h.size);
  HOSTCACHE_CRASH_POINT("move.copied");
  layout::Bucket b = index::encode(head, index::fingerprint_of(index::load(*bucket)));
  if (keep_ref) b |= index::load(*bucket) & layout::kRefBit;
  index::store(*bucket, b);
  const std::uint64_t new_head = head + h.size, new_tail = src + h.size;
  store(s.hdr->head, new_head == a ? 0 : new_head);
  store(s.hdr->tail, new_tail == a ? 0 : new_tail);
  HOSTCACHE_CRASH_POINT("move.committed");
  store(s.hdr->move_size, std::uint64_t{0});
  return true;
}

// ---- eviction laps -------------------------------------------------------------
//
// dead_bytes counts only entries known dead (overwritten, erased). Expired and
// stale entries are garbage too, but nobody knows where they are until the
// tail reaches them. So when the entry at the tail is live and no dead bytes
// are known, the stripe asks whether it has passed every entry since the last
// invalidation and before the earliest expiry it saw (`known_clean`). If not,
// it runs a lap: it moves live entries to the head (compaction, keeping their
// ref bits) until it has passed the whole ring, freeing whatever turns out
// stale or expired on the way. A lap that ends records the epoch it began at
// and the earliest expiry it saw; until an invalidation or that expiry, the
// stripe is clean and evicts the coldest live entry directly.

bool known_clean(const StripeView& s, const generations::Judge& judge) {
  return load(s.hdr->clean_epoch) == judge.epoch() + 1 && judge.now_ms() < load(s.hdr->clean_until_ms);
}

void start_lap(const StripeView& s, const generations::Judge& judge) {
  if (load(s.hdr->lap_left) != 0) return;
  store(s.hdr->lap_epoch, judge.epoch());
  store(s.hdr->lap_until_ms, std::numeric_limits<std::int64_t>::max());
  store(s.hdr->lap_left, std::max<std::uint64_t>(load(s.hdr->used), 8));
}

// An entry in the ring now expires at `expires_ms` (appended, or touched):
// the clean horizon moves, and so does the horizon of a lap under way, which
// may have passed the entry already with another expiry.
void note_expiry(const StripeView& s, std::int64_t expires_ms) {
  store(s.hdr->clean_until_ms, std::min(load(s.hdr->clean_until_ms), expires_ms));
  if (load(s.hdr->lap_left) != 0) store(s.hdr->lap_until_ms, std::min(load(s.hdr->lap_until_ms), expires_ms));
}

// An entry of `size` bytes leaves the tail; `expires_ms` if it stays in the
// ring (moved to the head), INT64_MAX if it leaves it.
void lap_pass(const StripeView& s, std::uint64_t size, std::int64_t expires_ms) {
  std::uint64_t left = load(s.hdr->lap_left);
  if (left == 0) return;
  store(s.hdr->lap_until_ms, std::min(load(s.hdr->lap_until_ms), expires_ms));
  left = left > size ? left - size : 0;
  store(s.hdr->lap_left, left);
  if (left == 0) {
    store(s.hdr->clean_until_ms, load(s.hdr->lap_until_ms));
    store(s.hdr->clean_epoch, load(s.hdr->lap_epoch) + 1);
  }
}

// Processes the entry at the tail: frees it, moves it, or evicts it.
void reclaim_one(const StripeView& s, const generations::Judge& judge, std::uint64_t& moved) {
  const std::uint64_t tail = load(s.hdr->tail);
  EntryHeader h;
  if (!read_header(s, tail, h)) {
    // Only memory corruption gets here (a writer holding the lock keeps the
    // ring well formed): start the stripe afresh rather than follow garbage.
    reset(s);
    return;
  }
  if (h.kind == layout::kKindPad || h.live == 0) {
    if (h.kind != layout::kKindPad) store(s.hdr->dead_bytes, load(s.hdr->dead_bytes) - std::min<std::uint64_t>(h.size, load(s.hdr->dead_bytes)));
    lap_pass(s, h.size, std::numeric_limits<std::int64_t>::max());
    advance_tail(s, h.size);
    return;
  }
  layout::Bucket* bucket = index::find_by_offset(s.buckets, s.groups, h.hash, tail);
  const generations::State state = judge.of(h);
  if (bucket != nullptr && state == generations::State::valid) {
    const bool dead_known = load(s.hdr->dead_bytes) > 0;
    const bool unknown = !dead_known && !known_clean(s, judge);
    const bool hot = (index::load(*bucket) & layout::kRefBit) != 0;
    // Compaction keeps the ref bit; a second chance spends it.
    if ((dead_known || unknown || hot) && moved < 2 * s.arena_bytes) {
      if (unknown) start_lap(s, judge);
      lap_pass(s, h.size, h.expires_ms);
      if (move_tail_to_head(s, tail, h, bucket, dead_known || unknown)) moved += h.size;
      return;
    }
  }
  lap_pass(s, h.size, std::numeric_limits<std::int64_t>::max());
  HOSTCACHE_CRASH_POINT("evict.before_unlink");
  retire(s, tail);
  if (bucket == nullptr) {  // live but unindexed: only a repair can tell; treat as dead
    advance_tail(s, h.size);
    return;
  }
  index::store(*bucket, 0);
  store(s.hdr->entries, load(s.hdr->entries) - 1);
  if (state == generations::State::expired) {
    bump(s.hdr->expired);
  } else if (state == generations::State::stale) {
    bump(s.hdr->stale);
  } else {
    bump(s.hdr->evictions);
  }
  advance_tail(s, h.size);
  HOSTCACHE_CRASH_POINT("evict.after_unlink");
}

}  // namespace

std::uint64_t make_room(const StripeView& s, std::uint64_t bytes, const generations::Judge& judge) {
  const std::uint64_t a = s.arena_bytes;
  if (bytes > a || bytes < layout::kHeaderBytes || bytes % 8 != 0) return kNoRoom;  // callers check first
  std::uint64_t moved = 0;
  for (;;) {
    const std::uint64_t used = load(s.hdr->used);
    if (used == 0) {
      store(s.hdr->head, std::uint64_t{0});
      store(s.hdr->tail, std::uint64_t{0});
      return 0;  // bytes <= arena_bytes: checked above
    }
    // Read once and checked before use, every turn: a writer of the segment
    // may change them even while we hold the lock.
    const std::uint64_t head = load(s.hdr->head), tail = load(s.hdr->tail);
    if (head >= a || tail >= a || head % 8 != 0 || tail % 8 != 0 || used > a) {
      reset(s);
      continue;
    }
    if (head > tail) {  // data [tail, head); free [head, a) and [0, tail)
      if (a - head >= bytes) return head;
      write_pad(s, head);  // wrap; with tail == 0 the ring is now full
      continue;
    }
    if (head < tail && tail - head >= bytes) return head;  // free [head, tail)
    reclaim_one(s, judge, moved);  // full (head == tail), or the free run is short
  }
}

namespace {

// What the stripe knows of its garbage (see known_clean) when the entry
// image `image` arrives in the ring: a new entry expiring early moves the
// clean horizon, and one stale on arrival (a memoized result computed across
// an invalidation) is garbage it did not see.
void note_arrival(const StripeView& s, const std::uint8_t* image, const generations::Judge& judge) {
  EntryHeader h;
  std::memcpy(&h, image, sizeof h);
  note_expiry(s, h.expires_ms);
  if (judge.of(h) != generations::State::valid) {
    // Garbage the stripe has not seen: not clean, and a lap under way must
    // not declare it clean when it ends (the entry may lie beyond its range,
    // or in what it has passed).
    store(s.hdr->clean_epoch, std::uint64_t{0});
    store(s.hdr->lap_epoch, ~std::uint64_t{0});
  }
}

}  // namespace

void append(const StripeView& s, std::uint64_t off, const std::uint8_t* image, std::uint64_t bytes,
            const generations::Judge& judge) {
  note_arrival(s, image, judge);
  words::copy_in(s.arena + off, image, bytes);
  HOSTCACHE_CRASH_POINT("set.after_write");
  const std::uint64_t head = off + bytes;
  store(s.hdr->head, head == s.arena_bytes ? 0 : head);  // head before used, as in write_pad
  store(s.hdr->used, load(s.hdr->used) + bytes);
  HOSTCACHE_CRASH_POINT("set.after_append");
}

bool rewrite(const StripeView& s, std::uint64_t off, const EntryHeader& old, const std::uint8_t* image,
             const generations::Judge& judge) {
  // Only an image of the old entry's shape: size and every length read_header
  // checks. Its first word (size, magic, kind, live) is then the old one's
  // and the ring stays walkable whatever a kill leaves; a torn entry still
  // reads and only fails its checksum, so repair drops it alone. A length
  // that differed would leave a header that does not read mid-ring, and
  // repair would have to reset the stripe.
  EntryHeader h;
  std::memcpy(&h, image, sizeof h);
  if (old.kind != layout::kKindEntry || h.size != old.size || h.key_len != old.key_len ||
      h.value_len != old.value_len || h.tags_len != old.tags_len || h.ntags != old.ntags || h.flags != old.flags ||
      h.orig_len != old.orig_len || h.ns_len != old.ns_len) {
    return false;
  }
  note_arrival(s, image, judge);
  const std::uint64_t half = h.size / 16 * 8;
  words::copy_in(s.arena + off, image, half);
  HOSTCACHE_CRASH_POINT("set.in_place");
  words::copy_in(s.arena + off + half, image + half, h.size - half);
  return true;
}

void set_expiry(const StripeView& s, std::uint64_t off, const EntryHeader& h, std::int64_t expires_ms) {
  // The expiry is checksummed: rewrite it, then the checksum. Killed in
  // between, the entry fails its checksum and repair drops it: the cost is
  // that entry, as for a set.
  std::optional<std::vector<std::uint64_t>> own;
  std::vector<std::uint64_t>& image = detail::thread_scratch<ExpiryImageTag>(own);
  image.resize(h.size / 8);
  for (std::size_t i = 0; i < image.size(); ++i) image[i] = words::load_word(s.arena + off + 8 * i);
  EntryHeader n = h;
  n.expires_ms = expires_ms;
  std::memcpy(image.data(), &n, sizeof n);
  n.checksum = checksum_of(reinterpret_cast<const std::uint8_t*>(image.data()), n);
  std::uint64_t word;
  std::memcpy(&word, reinterpret_cast<const char*>(&n) + offsetof(EntryHeader, expires_ms), 8);
  words::store_word(s.arena + off + offsetof(EntryHeader, expires_ms), word);
  std::memcpy(&word, reinterpret_cast<const char*>(&n) + offsetof(EntryHeader, checksum), 8);
  words::store_word(s.arena + off + offsetof(EntryHeader, checksum), word);
  note_expiry(s, expires_ms);
}

void kill(const StripeView& s, std::uint64_t off, const EntryHeader& h, layout::Bucket* bucket) {
  if (bucket != nullptr) index::store(*bucket, 0);
  HOSTCACHE_CRASH_POINT("kill.after_unindex");
  // live is byte 7 of the entry's first word.
  std::uint64_t w = words::load_word(s.arena + off);
  w &= ~(std::uint64_t{0xff} << 56);
  words::store_word(s.arena + off, w);
  store(s.hdr->dead_bytes, load(s.hdr->dead_bytes) + h.size);
  store(s.hdr->entries, load(s.hdr->entries) - 1);
}

bool header_sane(const StripeView& s) {
  const std::uint64_t a = s.arena_bytes, head = load(s.hdr->head), tail = load(s.hdr->tail);
  const std::uint64_t used = load(s.hdr->used), move = load(s.hdr->move_size);
  return head < a && tail < a && head % 8 == 0 && tail % 8 == 0 && used <= a && used % 8 == 0 &&
         load(s.hdr->dead_bytes) <= used && (move == 0 || move <= a);
}

namespace {

// Throws RepairStopped when `stop` says so (repair and reset, see arena.h).
void stop_if(const std::function<bool()>& stop) {
  if (stop && stop()) throw RepairStopped{};
}

// Zeroes every bucket, asking `stop` before each group's stores.
void clear_index(const StripeView& s, const std::function<bool()>& stop) {
  for (std::uint64_t g = 0; g < s.groups; ++g) {
    stop_if(stop);
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) index::store(s.buckets[g * layout::kGroupSlots + i], 0);
  }
}

}  // namespace

void reset(const StripeView& s, const std::function<bool()>& stop) {
  clear_index(s, stop);
  stop_if(stop);
  store(s.hdr->head, std::uint64_t{0});
  store(s.hdr->tail, std::uint64_t{0});
  store(s.hdr->used, std::uint64_t{0});
  store(s.hdr->dead_bytes, std::uint64_t{0});
  store(s.hdr->entries, std::uint64_t{0});
  store(s.hdr->move_size, std::uint64_t{0});
  store(s.hdr->clean_epoch, std::uint64_t{0});
  store(s.hdr->lap_left, std::uint64_t{0});
}

// One cuckoo step, see arena.h.
layout::Bucket* place(const StripeView& s, std::uint64_t hash) {
  if (layout::Bucket* b = index::find_empty(s.buckets, s.groups, hash)) return b;
  const index::Probe p = index::probe(hash, s.groups);
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = index::group(s.buckets, g);
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
      const layout::Bucket b = index::load(grp[i]);
      std::uint64_t off;
      EntryHeader h;
      if (!index::offset_of(b, s.arena_bytes, off) || !read_header(s, off, h) || h.kind != layout::kKindEntry) {
        continue;
      }
      const index::Probe q = index::probe(h.hash, s.groups);
      if (index::fingerprint_of(b) != q.fingerprint || (q.g1 != g && q.g2 != g)) continue;
      const std::uint32_t other = q.g1 == g ? q.g2 : q.g1;
      if (other == g) continue;
      layout::Bucket* dst = index::group(s.buckets, other);
      for (std::uint32_t j = 0; j < layout::kGroupSlots; ++j) {
        if (index::load(dst[j]) != 0) continue;
        index::store(dst[j], b);  // indexed twice for an instant, never not at all
        index::store(grp[i], 0);
        return &grp[i];
      }
    }
  }
  return nullptr;
}

bool repair(const StripeView& s, std::string* why, std::uint64_t* kept, std::uint64_t* dropped,
            const std::function<bool()>& stop) {
  const auto check = [&stop] { stop_if(stop); };
  HOSTCACHE_CRASH_POINT("recovery.start");
  check();
  const std::uint64_t a = s.arena_bytes;
  if (load(s.hdr->move_size) != 0) {
    // A move was under way (move_tail_to_head). Keep whichever copy of the
    // entry verifies: the source, intact unless the copy overlapped it (then
    // the ring is put back as it was before the move), else the destination
    // if the copy completed (the ring as after it); only when neither does is
    // the entry lost.
    const std::uint64_t src = load(s.hdr->move_src), dst = load(s.hdr->move_dst), size = load(s.hdr->move_size);
    if (src < a && dst < a && size % 8 == 0 && size >= kHeaderBytes && size <= a - src && size <= a - dst) {
      auto intact = [&](std::uint64_t off) {
        EntryHeader h;
        return read_header(s, off, h) && h.kind == layout::kKindEntry && h.size == size && checksum_ok(s, off, h);
      };
      const auto wrap = [a](std::uint64_t v) { return v == a ? 0 : v; };
      // Both verdicts first (whole-entry checksums take a while), then a
      // last check right before the stores they decide.
      const bool src_ok = intact(src);
      const bool dst_ok = !src_ok && dst != src && intact(dst);
      check();
      if (src_ok) {
        store(s.hdr->head, dst);
        store(s.hdr->tail, src);
      } else if (dst_ok) {
        store(s.hdr->head, wrap(dst + size));
        store(s.hdr->tail, wrap(src + size));
      } else {
        store(s.hdr->head, dst);
        store(s.hdr->tail, wrap(src + size));
        // The ring had free space before the move (or it was a rotation in
        // place, dst == src), so head == tail now means it held only that entry.
        if (dst == wrap(src + size)) store(s.hdr->used, std::uint64_t{0});
      }
    } else {
      store(s.hdr->head, a);  // out of bounds: the walk below fails and we reset
    }
    store(s.hdr->move_size, std::uint64_t{0});
  }
  struct Found {
    std::uint64_t off;
    EntryHeader h;
  };
  std::vector<Found> entries;
  std::uint64_t ring = 0;
  std::string reason;
  const bool walked = walk(
      s, load(s.hdr->tail), load(s.hdr->head),
      [&](std::uint64_t off, const EntryHeader& h) { entries.push_back({off, h}); }, &reason, &ring);
  if (!walked) {
    if (why) *why = reason;
    reset(s, stop);
    check();
    store(s.hdr->resets, load(s.hdr->resets) + 1);
    HOSTCACHE_CRASH_POINT("recovery.after_reset");
    return false;
  }
  clear_index(s, stop);
  std::uint64_t live = 0, dead = 0, lost = 0;
  for (const Found& f : entries) {
    bool keep = f.h.live == 1 && checksum_ok(s, f.off, f.h);
    check();  // after the checksum (a long read), right before the stores
    layout::Bucket* slot = keep ? place(s, f.h.hash) : nullptr;
    if (slot != nullptr) {
      index::store(*slot, index::encode(f.off, index::probe(f.h.hash, s.groups).fingerprint));
      ++live;
    } else {
      if (f.h.live == 1) {
        ++lost;
        std::uint64_t w = words::load_word(s.arena + f.off) & ~(std::uint64_t{0xff} << 56);
        words::store_word(s.arena + f.off, w);
      }
      dead += f.h.size;
    }
  }
  check();
  store(s.hdr->used, ring);
  store(s.hdr->clean_epoch, std::uint64_t{0});
  store(s.hdr->lap_left, std::uint64_t{0});
  store(s.hdr->dead_bytes, dead);
  store(s.hdr->entries, live);
  HOSTCACHE_CRASH_POINT("recovery.rebuilt");
  if (kept) *kept = live;
  if (dropped) *dropped = lost;
  return true;
}

}  // namespace hostcache::arena
