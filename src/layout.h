// layout.h — the plain structs that live in the shared segment.
//
// Every struct here is trivially copyable and standard-layout, with
// fixed-width fields and offsets (never pointers). Fields that processes read
// while others write are accessed only through std::atomic_ref (see
// atomic_words.h); the structs themselves hold plain integers so that the
// format is exactly what the static_asserts say. Any change to a size or
// offset here changes kFormatStamp, and attach refuses a segment whose stamp
// differs.
//
//   +------------------------+ 0
//   | Header                 |  magic, format, geometry, offsets, global_gen
//   +------------------------+ tags_off
//   | uint64 tag_gen[T]      |  T = tag_slots, a power of two
//   +------------------------+ stats_off
//   | StatsSlot[S]           |  one cache line per process slot
//   +------------------------+ flights_off
//   | FlightSlot[F]          |  cross-process single flight (memoize)
//   +------------------------+ methods_off
//   | MethodSlot[M]          |  per memoized method statistics
//   +------------------------+ outbox_off
//   | OutboxHeader, RelayState, OutboxSlot[O]  invalidations for the relay
//   +------------------------+ stripes_off
//   | stripe 0               |  StripeHeader | Bucket[groups*8] | arena
//   | stripe 1 ...           |  each stripe_bytes long, 64-byte aligned
//   +------------------------+ segment_bytes
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace hostcache::layout {

inline constexpr char kMagic[8] = {'H', 'O', 'S', 'T', 'C', 'A', 'C', 'H'};
inline constexpr std::uint32_t kLayoutVersion = 4;  // 4: an outbox slot checks its event; 3: RelayState's published id in two words, its stream
inline constexpr std::size_t kCacheLine = 64;

inline constexpr std::uint32_t kStateReady = 0x52454459;  // "REDY"

// ---- header ----------------------------------------------------------------

struct alignas(kCacheLine) Header {
  char magic[8];                  // kMagic; written last by the creator
  std::uint64_t format_stamp;     // kFormatStamp of the creator's build
  std::uint32_t layout_version;   // kLayoutVersion
  std::uint32_t state;            // kStateReady once fully initialized
  std::uint64_t segment_bytes;    // == the mapped size == Config::capacity_bytes
  std::uint32_t stripe_count;     // power of two, >= 1
  std::uint32_t tag_slots;        // power of two
  std::uint32_t stats_slots;      // number of StatsSlot
  std::uint32_t flight_slots;     // power of two
  std::uint32_t method_slots;     // number of MethodSlot
  std::uint32_t groups_per_stripe;  // power of two; 8 buckets per group
  std::uint64_t stripe_bytes;     // each stripe, header + buckets + arena; multiple of 64
  std::uint64_t arena_bytes;      // each stripe's arena; multiple of 8
  std::uint64_t max_key_bytes;    // creator's limits (attach() uses them)
  std::uint64_t max_value_bytes;
  std::int64_t default_ttl_ms;
  std::uint64_t created_unix_ms;  // wall-clock creation time, for humans
  std::uint32_t creator_uid;
  std::uint32_t creator_pid;
  std::uint64_t tags_off;         // byte offsets from the segment's start
  std::uint64_t stats_off;
  std::uint64_t flights_off;
  std::uint64_t methods_off;
  std::uint64_t stripes_off;
  std::uint64_t key_secret[2];   // random at creation: keys memoize's hashes (never 0, 0)
  std::uint64_t pidns_ino;       // st_ino of the creator's /proc/self/ns/pid (0: unknown)
  std::uint64_t timens_ino;      // st_ino of the creator's /proc/self/ns/time (0: unknown)
  std::uint64_t outbox_off;      // OutboxHeader, RelayState, OutboxSlot[outbox_slots]
  std::uint64_t host_id[2];      // random at creation: names this host's events between hosts

  // Written by clear() (fetch_add); read by every get. Its own cache line so
  // that bumping it does not disturb the geometry fields above.
  alignas(kCacheLine) std::uint64_t global_gen;
  // Bumped (after the generation) by every clear() and invalidate(): a
  // stripe that has checked all its entries at epoch E knows it holds no
  // stale entry while the epoch is still E (arena.cpp's eviction laps).
  std::uint64_t inval_epoch;
  std::uint64_t pad0[6];

  // Counters of dead processes, folded in from their StatsSlot (fetch_add).
  alignas(kCacheLine) std::uint64_t folded_hits;
  std::uint64_t folded_misses;
  std::uint64_t stats_lock;       // pid of the process folding slots, 0 if none
  std::uint64_t pad1[5];
};
static_assert(sizeof(Header) == 384, "Header is part of the format: change kLayoutVersion");
static_assert(offsetof(Header, global_gen) % kCacheLine == 0, "global_gen owns its cache line");

// ---- per-process statistics -------------------------------------------------

// One per process that used the segment. Only its owner writes the counters
// (relaxed fetch_add: threads of one process share the slot); any process sums
// them. A slot whose pid is dead is folded into the Header's totals and reused.
struct alignas(kCacheLine) StatsSlot {
  std::uint32_t pid;       // owner, 0 when free; claimed by CAS
  std::uint32_t reserved;
  std::uint64_t hits;
  std::uint64_t misses;
  std::uint64_t pad[5];
};
static_assert(sizeof(StatsSlot) == kCacheLine, "one cache line per process: no false sharing");

// ---- single flight ----------------------------------------------------------

// One in-flight computation. `word` is the futex waiters sleep on. The memoize
// part owns the protocol; see memoize.cpp.
struct alignas(kCacheLine) FlightSlot {
  std::uint32_t word;            // futex word: 0 free, else a state/sequence owned by memoize
  std::uint32_t owner_pid;       // computing process, 0 when free
  std::uint64_t key_hash;        // xxh3 of the key being computed
  std::int64_t lease_until_ms;   // clock::now_ms() deadline; a waiter may take over after it
  std::uint32_t waiters;         // processes sleeping on `word`
  std::uint32_t reserved;
  std::uint64_t pad[4];
};
static_assert(sizeof(FlightSlot) == kCacheLine, "one cache line per flight");

// ---- per-method statistics (memoize) ------------------------------------------

inline constexpr std::size_t kMethodNameBytes = 64;

struct alignas(kCacheLine) MethodSlot {
  std::uint32_t claimed;           // 0 free, (pid << 2) | 1 being named by pid, 2 named (memoize.cpp)
  std::uint32_t name_len;
  char name[kMethodNameBytes];     // method name, not NUL-terminated
  std::uint64_t requests;          // fetch_add by any process
  std::uint64_t hits;
  std::uint64_t misses;
  std::uint64_t hit_ns;            // total time of calls served from the cache
  std::uint64_t miss_ns;           // total time of calls that computed
  std::uint64_t bytes;             // bytes of values stored by this method
  std::uint64_t pad[2];
};
static_assert(sizeof(MethodSlot) == 3 * kCacheLine, "MethodSlot is part of the format");

// ---- the outbox: invalidations for hostcache-relay ---------------------------------
//
// clear(), clear(ns) and invalidate(tag) append an event here after bumping
// the local generation; the relay (one per host) reads them in order and
// publishes them to the other hosts. Producers claim a sequence number with
// fetch_add on `head` and write slot seq % outbox_slots; each slot is a
// seqlock of its own (`stamp` = 2*seq+1 while written, 2*seq+2 when done),
// so the reader can tell a complete event, one being written, and one
// overwritten by a producer a lap ahead (then it publishes a global clear:
// no event is ever dropped silently). Two producers a lap apart may write
// one slot at once (one stalled inside its write while the ring went round),
// and the stamp left last may stand on a body of both: `check` (48 bits of
// a hash of the sequence, kind, length and name) tells such a body, which
// the reader counts as overwritten.
inline constexpr std::uint8_t kEventClear = 1, kEventTag = 2, kEventNamespace = 3;
inline constexpr std::size_t kEventNameBytes = 256;

struct alignas(kCacheLine) OutboxHeader {
  std::uint64_t head;          // next sequence number (fetch_add by producers)
  std::uint64_t pad[7];
};

// The ids a relay resumes from, saved whole: RelayState holds two and names
// the current one, so that a relay killed (kill -9) halfway through a save
// leaves the last whole one (a torn id, a new ms with an old sequence, would
// be past what it applied: test_outbox, ARelayKilledDuringASave...).
struct RelayIds {
  std::uint64_t cursor;            // next outbox sequence it will read (with the ids: a save is whole)
  std::uint64_t last_id_ms;        // last stream id applied or published (ms-seq)
  std::uint64_t last_id_seq;
  std::uint64_t published_id_ms;   // the last stream id this host's relay published (0-0: none)
  std::uint64_t published_id_seq;  //   (two words: an operator's XSETID makes ids of any size)
  std::uint64_t stream_hash;       // outbox::hash_stream_key of the --stream these ids are of (0: none yet)
};

// The relay's state: written by the relay only, read by tools. Survives the
// relay's restarts (ids[ids_current] is where it resumes).
struct alignas(kCacheLine) RelayState {
  std::uint32_t pid;           // the relay process, 0 if none ever ran
  std::uint32_t connected;     // 1 while it holds a working Redis connection
  std::int64_t heartbeat_ms;   // clock::now_ms() of its last loop
  std::uint64_t published;     // events sent to the stream
  std::uint64_t applied;       // remote events applied here
  std::uint64_t lag_events;    // remote events seen but not yet applied
  std::int64_t lag_ms;         // age of the newest remote event when applied
  std::uint64_t resync_lost;   // resyncs by cause: Redis lost its data (nonce) or rolled back
  std::uint64_t resync_trimmed;  //   we were trimmed past: epochs compared
  std::uint64_t resync_replay;   //   ordinary replay from last_id
  std::uint64_t overflow_clears; // outbox laps (or stuck slots) published as one global clear
  std::uint64_t stale_clears;    // local clears because Redis was unreachable past the stale bound
  std::int64_t proven_ms;        // clock::now_ms() as of which this host was last proven current (0: unknown)
  std::uint64_t ids_current;     // 0 or 1: the whole one of ids[]
  RelayIds ids[2];
};

struct OutboxSlot {
  std::uint64_t stamp;         // 2*seq+1 writing, 2*seq+2 complete
  std::uint8_t kind;           // kEvent*
  std::uint8_t len;            // bytes of name (a tag or a namespace); 0 for a clear
  std::uint8_t check[6];       // outbox.cpp's event_check(seq, kind, len, name), little-endian
  char name[kEventNameBytes];
};
static_assert(sizeof(OutboxHeader) == kCacheLine, "OutboxHeader is part of the format");
static_assert(sizeof(OutboxSlot) == 272 && sizeof(OutboxSlot) % 8 == 0, "slots are copied word by word");
static_assert(offsetof(OutboxSlot, check) == 10 && offsetof(OutboxSlot, name) == 16, "OutboxSlot is part of the format");
static_assert(sizeof(RelayState) == 4 * kCacheLine, "RelayState is part of the format");
static_assert(offsetof(RelayState, ids) % 8 == 0, "RelayIds are stored word by word");

// ---- stripes ----------------------------------------------------------------

// Each stripe: StripeHeader, then groups_per_stripe * kGroupSlots buckets,
// then the arena. The lock orders writers; `seq` lets readers run without it.
struct alignas(kCacheLine) StripeHeader {
  // The stripe lock (stripe_lock.cpp): 0 when free, else
  //   bits 32-63  the owner thread's birth stamp (low 32 bits of its start time)
  //   bit  31     waiters may be sleeping
  //   bits 0-30   the owner's thread id
  // Its low half is the futex word waiters sleep on. No pointers: whoever can
  // write the segment can change it, and the worst it can cause is a wait
  // bounded by Config::lock_timeout, or a takeover and a repair.
  std::uint64_t lock;
  std::uint32_t owner_pid;    // process of the holder (diagnostics, recovery log)
  std::uint32_t reserved0;
  std::uint64_t takeovers;    // locks taken over from a dead owner
  std::uint64_t pad0[5];

  // Everything below is written only while holding `lock`.
  alignas(kCacheLine) std::uint64_t seq;  // even at rest, odd while a writer mutates
  std::uint64_t head;         // arena offset where the next entry goes; head == tail <=> empty
  std::uint64_t tail;         // arena offset of the oldest entry (or pad)
  std::uint64_t used;         // bytes in [tail, head) ring order, pads included
  std::uint64_t dead_bytes;   // bytes in the ring of entries known dead (live == 0)
  std::uint64_t entries;      // entries referenced by the index
  // Move journal: while move_size != 0 a live entry is being copied from
  // move_src (== tail) to move_dst (== head). Recovery keeps whichever copy
  // verifies (arena.cpp, repair).
  std::uint64_t move_src;
  std::uint64_t move_dst;
  std::uint64_t move_size;
  std::uint64_t sets;         // counters, monotonic
  std::uint64_t erases;
  std::uint64_t evictions;
  std::uint64_t expired;
  std::uint64_t stale;
  std::uint64_t recoveries;
  std::uint64_t resets;

  // Eviction laps (arena.cpp): what the stripe knows about garbage it has
  // not seen yet (stale and expired entries are not counted in dead_bytes).
  std::uint64_t clean_epoch;    // inval_epoch + 1 when the last full lap ended; 0: unknown
  std::int64_t clean_until_ms;  // no entry in the ring expires before this
  std::uint64_t lap_left;       // ring bytes the current lap must still pass at the tail; 0: none
  std::uint64_t lap_epoch;      // inval_epoch when the current lap began
  std::int64_t lap_until_ms;    // earliest expiry seen in the current lap
  std::uint64_t compressed_in;   // original bytes of the values stored compressed (monotonic)
  std::uint64_t compressed_out;  // the bytes they took compressed
  std::uint64_t pad1[1];
};
static_assert(sizeof(StripeHeader) == 4 * kCacheLine, "StripeHeader is part of the format");
static_assert(offsetof(StripeHeader, seq) == kCacheLine, "seq starts the second line");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the lock's futex word is its low half");
static_assert(offsetof(StripeHeader, lock) == 0 && alignof(StripeHeader) >= 8, "the lock word is 8-aligned");
static_assert(offsetof(StripeHeader, clean_epoch) == 2 * kCacheLine + 64, "StripeHeader is part of the format");

// A bucket: 0 when empty, else
//   bit 63      referenced since the arena last passed it (set by readers, CLOCK)
//   bits 40-62  23-bit fingerprint of the key's hash
//   bits 0-39   (entry offset in the arena / 8) + 1
using Bucket = std::uint64_t;
inline constexpr std::uint32_t kGroupSlots = 8;  // one cache line per group
inline constexpr Bucket kRefBit = Bucket{1} << 63;
inline constexpr unsigned kFingerprintShift = 40;
inline constexpr Bucket kFingerprintMask = (Bucket{1} << 23) - 1;
inline constexpr Bucket kOffsetMask = (Bucket{1} << 40) - 1;

// ---- entries ----------------------------------------------------------------

inline constexpr std::uint16_t kEntryMagic = 0x4845;  // "HE"
inline constexpr std::uint8_t kKindEntry = 1;
inline constexpr std::uint8_t kKindPad = 2;  // fills the arena's end before a wrap
// Dead bytes closing the free run just before the tail, so that a live entry
// there is rotated in place instead of copied over itself (arena.cpp): one
// header word; counted in dead_bytes until the tail reclaims it.
inline constexpr std::uint8_t kKindGap = 3;

// An entry in the arena: EntryHeader, key, value (as stored: compressed when
// kFlagCompressed), tags blob (each tag a length byte then its bytes), the
// namespace's name (ns_len bytes), padded to a multiple of 8. A pad is an
// EntryHeader's first word only (size, magic, kind) and covers the arena's end.
inline constexpr std::uint8_t kFlagCompressed = 1;  // value is a zstd frame of orig_len bytes
inline constexpr std::uint8_t kFlagNamespace = 2;   // ns_slot/ns_gen are meaningful
inline constexpr std::uint8_t kKnownFlags = kFlagCompressed | kFlagNamespace;

struct EntryHeader {
  std::uint32_t size;         // whole entry, multiple of 8, >= sizeof(EntryHeader)
  std::uint16_t magic;        // kEntryMagic
  std::uint8_t kind;          // kKindEntry or kKindPad
  std::uint8_t live;          // 1 iff a bucket refers to this entry
  std::uint64_t checksum;     // xxh3 of bytes [kChecksumFrom, kHeaderBytes + payload), seeded by size
  std::uint32_t key_len;      // --- checksummed from here
  std::uint32_t value_len;    // bytes of the value as stored
  std::uint16_t tags_len;     // bytes of the tags blob
  std::uint8_t ntags;         // <= kMaxTags
  std::uint8_t flags;         // kFlag*
  std::uint32_t ns_slot;      // the namespace's generation slot (tag table)
  std::uint64_t hash;         // xxh3 of the key
  std::int64_t expires_ms;    // clock::now_ms() deadline; INT64_MAX: never
  std::uint64_t global_gen;   // Header::global_gen when written
  std::uint64_t ns_gen;       // the namespace's generation when written
  std::uint32_t orig_len;     // the value's length before compression (== value_len if not compressed)
  std::uint8_t ns_len;        // bytes of the namespace's name, after the tags
  std::uint8_t reserved[3];
  std::uint32_t tag_slot[4];  // tag generation slots
  std::uint64_t tag_gen[4];   // their generations when written
};
inline constexpr std::size_t kHeaderBytes = sizeof(EntryHeader);
inline constexpr std::size_t kChecksumFrom = offsetof(EntryHeader, key_len);
static_assert(sizeof(EntryHeader) == 120, "EntryHeader is part of the format");
static_assert(offsetof(EntryHeader, expires_ms) % 8 == 0 && offsetof(EntryHeader, checksum) % 8 == 0,
              "touch rewrites these two words in place");
static_assert(kHeaderBytes % 8 == 0, "entries are 8-aligned: word-wise atomic copies");

// ---- every struct is plain ------------------------------------------------------

template <class T>
constexpr bool kPlain = std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T>;
static_assert(kPlain<Header> && kPlain<StatsSlot> && kPlain<FlightSlot> && kPlain<MethodSlot> &&
                  kPlain<StripeHeader> && kPlain<EntryHeader> && kPlain<OutboxHeader> && kPlain<RelayState> && kPlain<RelayIds> &&
                  kPlain<OutboxSlot>,
              "shared structs must be trivially copyable and standard-layout");

// Stamp computed from every size the format depends on: a build whose structs
// differ (another field, another size) refuses to attach.
constexpr std::uint64_t format_stamp() {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(kLayoutVersion);
  mix(sizeof(Header));
  mix(offsetof(Header, global_gen));
  mix(sizeof(StatsSlot));
  mix(sizeof(FlightSlot));
  mix(sizeof(MethodSlot));
  mix(sizeof(StripeHeader));
  mix(sizeof(OutboxHeader));
  mix(sizeof(RelayState));
  mix(sizeof(OutboxSlot));
  mix(sizeof(EntryHeader));
  mix(kGroupSlots);
  mix(kFingerprintShift);
  return h;
}
inline constexpr std::uint64_t kFormatStamp = format_stamp();

// Round up to a multiple of `a` (a power of two).
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) & ~(a - 1); }

}  // namespace hostcache::layout
