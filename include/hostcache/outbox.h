// hostcache/outbox.h — the segment's outbox of invalidations, for the relay.
//
// clear(), clear(ns) and invalidate(tag) bump the local generation (O(1),
// linearizable on this host, as always) and then append an event here. A
// relay (hostcache-relay, one process per host) reads the events in order
// and carries them to the other hosts' segments, where it applies them with
// apply(): a generation bump that writes no event, so that a remote
// invalidation is never published again. The outbox is a bounded ring
// (kSlots events): a relay that falls a lap behind, or meets a slot whose
// writer died halfway, learns it from poll() and must publish one global
// clear instead; nothing is ever dropped silently.
//
// Without a relay the outbox costs one fetch_add and one slot write per
// clear/invalidate, nothing on get, set or erase.
//
// Thread-safety: producers are any threads and processes; poll() is for one
// reader (the relay) per segment.
#pragma once

#include <hostcache/cache.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hostcache::outbox {

enum class Kind : std::uint8_t { clear = 1, tag = 2, ns = 3 };

struct Event {
  std::uint64_t seq = 0;   // position in this segment's outbox
  Kind kind = Kind::clear;
  std::string name;        // the tag or namespace; empty for a clear
};

struct Polled {
  std::vector<Event> events;  // complete events from the cursor on, in order
  std::uint64_t next = 0;     // the cursor after them
  // Events from the cursor were overwritten by producers a lap ahead: the
  // caller publishes one global clear and resumes at `next` (the head).
  bool lost = false;
  // The event at `next` is claimed but not complete yet (its writer is
  // writing, or died halfway: a caller that sees it stuck for long publishes
  // a global clear and polls again from next + 1).
  bool pending = false;
};

// The events from `cursor` (at most `max`).
Polled poll(const Cache& cache, std::uint64_t cursor, std::size_t max = 256);
// The next sequence number producers will take (where a fresh relay starts).
std::uint64_t head(const Cache& cache);

// Applies an event from another host: the generation bump alone.
void apply(Cache& cache, Kind kind, std::string_view name);

// This segment's random 128-bit host id, as 32 hex digits.
std::string host_id(const Cache& cache);

// The relay's state, kept in the segment (it resumes from last_id after a
// restart, and the tools show it).
struct RelayStatus {
  std::uint32_t pid = 0;
  bool connected = false;
  std::int64_t heartbeat_ms = 0;  // clock::now_ms() (CLOCK_MONOTONIC) of its last loop
  std::uint64_t cursor = 0;
  std::uint64_t last_id_ms = 0, last_id_seq = 0;  // the stream id of the last event seen
  std::uint64_t published = 0, applied = 0;
  std::uint64_t lag_events = 0;
  std::int64_t lag_ms = 0;
  std::uint64_t resync_lost = 0, resync_trimmed = 0, resync_replay = 0;
  std::uint64_t overflow_clears = 0, stale_clears = 0;
  // now_ms() as of which this host was last proven current (an XREAD's send,
  // a resync, a stale clear); 0: unknown. A restarted relay counts from it.
  std::int64_t proven_ms = 0;
  // The last stream id this host's relay published (0-0: none, or unknown),
  // for the next relay's check that Redis still holds it.
  std::uint64_t published_id_ms = 0, published_id_seq = 0;
  // Which stream the ids above belong to (hash_stream_key of the relay's
  // --stream; 0: none yet): a relay restarted on another stream starts
  // afresh there instead of reading them as that stream's.
  std::uint64_t stream_hash = 0;
};
// The stream_hash of a stream key (never 0).
std::uint64_t hash_stream_key(std::string_view key);
RelayStatus relay_status(const Cache& cache);
void set_relay_status(Cache& cache, const RelayStatus& status);

// The library's monotonic clock in ms (the one heartbeat_ms is on).
std::int64_t now_ms();

}  // namespace hostcache::outbox
