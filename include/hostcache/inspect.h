// hostcache/inspect.h — read-only inspection of a segment, for tools and tests.
//
// Everything here maps the segment PROT_READ, never takes a stripe lock and
// never writes: it is safe on a segment live workers are writing, and on a
// corrupt one (it reports what it cannot read; it does not crash). Stripes are
// copied under their sequence counter and parsed from the copy, so each stripe
// is seen at one consistent instant (a stripe that stays busy is reported as
// such). Like `mdb_stat`, the tools are thin mains over these functions.
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
  std::string value;
  std::uint32_t stripe = 0;
  std::uint64_t size = 0;              // bytes held in the arena
  std::int64_t ttl_left_ms = 0;        // <= 0 once expired
  std::vector<TagInfo> tags;
  EntryState state = EntryState::valid;
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
};

struct Snapshot {
  SegmentInfo segment;
  Stats stats;
  std::vector<StripeInfo> stripes;
  std::vector<EntryInfo> entries;      // those matching the filter, stripe order
  std::vector<MethodInfo> methods;
  std::vector<std::string> problems;   // what could not be read, in words
};

// Reads the whole segment once. Throws hostcache::Error (not_found,
// permission_denied, incompatible, corrupt) when the header itself is unusable;
// anything below the header that cannot be read goes to `problems`.
Snapshot read(std::string_view name, const Filter& filter = {});

struct Violation {
  std::string where;                   // "header", "stripe 12", "stripe 12 entry @4096"
  std::string what;                    // the rule broken, in words
};

// The full segment checker: header and format stamp, every offset and length
// in bounds, probe groups, sequence counters even at rest, no stripe lock held
// by a dead process, arena accounting exact (the ring walks from tail to head,
// used and dead bytes match, no overlapping entries), entry checksums, index
// and entries agree. Empty when the segment is sound. Read-only.
// Throws hostcache::Error only when the segment cannot be opened at all.
std::vector<Violation> check(std::string_view name);

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
