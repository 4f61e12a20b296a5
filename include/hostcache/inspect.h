// hostcache/inspect.h — read-only inspection of a segment, for tools and tests.
//
// Everything here maps the segment PROT_READ, never takes a stripe lock and
// never writes: it is safe on a segment live workers are writing, and on a
// corrupt one (it reports what it cannot read; it does not crash). Stripes are
// copied under their sequence counter and parsed from the copy, so each stripe
// is seen at one consistent instant (a stripe that stays busy is reported as
// such). Like `mdb_stat`, the tools are thin mains over these functions.
//
// Nothing read from the segment is trusted (invariant 8): a segment owned by
// another uid, or writable by every user, is refused unless
// Options::allow_foreign says otherwise (the same checks as Cache::attach),
// and what one call allocates and copies is bounded by Options, whatever the
// geometry in the header claims: a stripe larger than max_stripe_bytes is not
// copied (reported in `problems`, or as a violation by check()), and once
// max_read_bytes have been copied the remaining stripes are skipped likewise.
// Strings in `problems` and Violation are plain text: bytes taken from the
// segment (tags) appear in them escaped (`\xNN`), never raw.
//
// Thread-safety: free functions over their own read-only mapping.
#pragma once

#include <hostcache/stats.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hostcache::inspect {

struct SegmentInfo {
  std::string name;             // segment name
  std::string path;             // /dev/shm/hostcache.NAME
  std::uint32_t layout_version = 0;
  std::uint64_t format_stamp = 0;
  std::uint64_t capacity_bytes = 0;
  std::uint32_t stripes = 0;
  std::uint64_t stripe_bytes = 0;
  std::uint64_t arena_bytes = 0;       // per stripe
  std::uint32_t tag_slots = 0;
  std::uint64_t max_key_bytes = 0;
  std::uint64_t max_value_bytes = 0;
  std::int64_t default_ttl_ms = 0;
  std::uint64_t created_unix_ms = 0;
  std::uint32_t creator_uid = 0;
  std::uint32_t creator_pid = 0;
  std::uint64_t global_gen = 0;
  std::uint32_t owner_uid = 0;         // from fstat
  std::uint32_t mode = 0;              // permission bits, from fstat
};

struct StripeInfo {
  std::uint32_t index = 0;
  std::uint64_t entries = 0;
  std::uint64_t bytes_used = 0;        // ring bytes minus known-dead bytes
  std::uint64_t dead_bytes = 0;
  std::uint64_t evictions = 0;
  std::uint64_t recoveries = 0;
  std::uint64_t resets = 0;
  std::uint64_t seq = 0;
  std::uint32_t lock_owner_pid = 0;    // 0 when unlocked
  bool consistent = true;              // false: stayed busy or failed to parse
};

enum class EntryState { valid, stale, expired };
const char* to_string(EntryState s) noexcept;

struct TagInfo {
  std::string name;
  std::uint32_t slot = 0;
  std::uint64_t gen_at_write = 0;
  std::uint64_t gen_now = 0;
};

struct EntryInfo {
  std::string key;
  // The value as get() returns it: decompressed for a compressed entry. When
  // a compressed value cannot be decompressed (a frame that does not decode
  // to orig_len bytes, or over Options' limits) it holds the stored frame and
  // `decompressed` is false.
  std::string value;
  std::uint32_t stripe = 0;
  std::uint64_t size = 0;              // bytes held in the arena
  // Remaining TTL, <= 0 once expired; INT64_MAX (kNoExpiry's count) for an
  // entry that never expires, and then `no_expiry` is true.
  std::int64_t ttl_left_ms = 0;
  bool no_expiry = false;
  std::vector<TagInfo> tags;
  EntryState state = EntryState::valid;
  // The namespace it was written under (SetOptions::ns); `has_namespace`
  // false and `ns` empty for none.
  bool has_namespace = false;
  std::string ns;
  // Compression (Config::compress_min_bytes): stored_bytes is the value as
  // stored (the zstd frame when compressed), orig_bytes its length before.
  bool compressed = false;
  bool decompressed = false;           // compressed and `value` holds the original bytes
  std::uint64_t stored_bytes = 0;
  std::uint64_t orig_bytes = 0;
};

// Live entries per namespace, over the stripes read (Filter::namespaces).
// Entries without a namespace are not counted here.
struct NamespaceInfo {
  std::string name;
  std::uint64_t entries = 0;           // live in the index (valid, stale or expired)
  std::uint64_t valid = 0;
  std::uint64_t bytes = 0;             // arena bytes they hold
};

// The relay's state (layout RelayState, written by hostcache-relay) and the
// outbox it drains, read without a Cache. Counters are those of
// hostcache/outbox.h's RelayStatus.
struct RelayInfo {
  bool ever_ran = false;               // pid != 0: a relay has written its state
  std::uint32_t pid = 0;
  bool alive = false;                  // pid exists now (kill(pid, 0))
  bool connected = false;
  std::int64_t heartbeat_ms = 0;       // outbox::now_ms() (CLOCK_MONOTONIC) of its last loop
  std::int64_t heartbeat_age_ms = 0;   // now - heartbeat_ms
  std::uint64_t head = 0;              // outbox head: next sequence producers take
  std::uint64_t cursor = 0;            // next sequence the relay reads
  std::uint64_t pending = 0;           // head - cursor (0 if the cursor is past head)
  std::uint32_t outbox_slots = 0;      // ring size; pending > slots means a lap was lost
  std::uint64_t last_id_ms = 0, last_id_seq = 0;
  std::uint64_t published = 0, applied = 0;
  std::uint64_t lag_events = 0;
  std::int64_t lag_ms = 0;
  std::uint64_t resync_lost = 0, resync_trimmed = 0, resync_replay = 0;
  std::uint64_t overflow_clears = 0, stale_clears = 0;
  std::string host_id;                 // 32 hex digits (outbox::host_id)
};

struct MethodInfo {
  std::string name;
  std::uint64_t requests = 0, hits = 0, misses = 0, hit_ns = 0, miss_ns = 0, bytes = 0;
};

struct Filter {
  std::string prefix;                  // keys starting with it
  std::string tag;                     // entries carrying this tag
  std::optional<EntryState> state;     // only this state
  std::size_t limit = SIZE_MAX;        // at most this many entries
  std::optional<std::string> ns;       // only entries of this namespace ("": none)
  // Fill Snapshot::namespaces: every stripe is then copied and walked, even
  // when `limit` entries were found already.
  bool namespaces = false;
};

// Limits on what one read() or check() trusts the segment with.
struct Options {
  // Read a segment owned by another uid or writable by others (mode o+w).
  // Such a segment may have been written by anyone: its entries can be forged.
  bool allow_foreign = false;
  // The largest stripe copied. A stripe is copied whole into one private
  // buffer (one consistent instant), so this bounds the memory of a call.
  // Segments this library creates with default limits have stripes of a few
  // MiB; 256 MiB covers any sensible configuration (a 1 TiB segment of 1024
  // stripes has 1 GiB stripes: raise it for that).
  std::uint64_t max_stripe_bytes = 256ull << 20;
  // The most stripe bytes copied by one call (stripe headers not counted).
  // Bounds the time of a call (about a second per GiB): a sparse segment can
  // claim terabytes while holding kilobytes.
  std::uint64_t max_read_bytes = 4ull << 30;
  // Compressed values are decompressed for EntryInfo::value only when their
  // original length fits one stripe's arena (no value stored by the library
  // is larger), and at most max_read_bytes of original bytes in all; beyond
  // that the stored frame is shown (EntryInfo::decompressed false).
};

struct Snapshot {
  SegmentInfo segment;
  Stats stats;
  std::vector<StripeInfo> stripes;
  std::vector<EntryInfo> entries;      // those matching the filter, stripe order
  std::vector<MethodInfo> methods;
  std::vector<NamespaceInfo> namespaces;  // Filter::namespaces; by name
  RelayInfo relay;
  std::vector<std::string> problems;   // what could not be read, in words
};

// Reads the whole segment once. Throws hostcache::Error (not_found,
// permission_denied, incompatible, corrupt) when the header itself is unusable
// or the segment is foreign (see Options); anything below the header that
// cannot be read (busy, damaged, over a limit) goes to `problems`.
Snapshot read(std::string_view name, const Filter& filter = {}, const Options& options = {});

struct Violation {
  std::string where;                   // "header", "stripe 12", "stripe 12 entry @4096"
  std::string what;                    // the rule broken, in words
};

// The full segment checker: header and format stamp, every offset and length
// in bounds, probe groups, sequence counters even at rest, no stripe lock held
// by a dead process, arena accounting exact (the ring walks from tail to head,
// used and dead bytes match, no overlapping entries), entry checksums, index
// and entries agree. Empty when the segment is sound. Read-only.
// A stripe over a limit of `options` is a violation ("not verified").
// Throws hostcache::Error only when the segment cannot be opened at all, or
// is foreign (see Options).
std::vector<Violation> check(std::string_view name, const Options& options = {});

// Segments of this library in /dev/shm.
struct Listing {
  std::string name;
  std::uint64_t bytes = 0;
  std::uint32_t owner_uid = 0;
  std::uint32_t mode = 0;
  int attached_processes = -1;         // -1 when it cannot tell
};
std::vector<Listing> list();

}  // namespace hostcache::inspect
