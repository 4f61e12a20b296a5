// hostcache/stats.h — counters of one segment, summed over every process.
//
// Counters are monotonic over the segment's life (a dead process's counts are
// folded into the segment's totals, never lost). `entries` and `bytes_used`
// are gauges; an entry hidden by clear()/invalidate() is counted until the
// arena reclaims its space, and `bytes_used <= capacity_bytes` always.
#pragma once

#include <cstdint>

namespace hostcache {

struct Stats {
  std::uint64_t gets = 0;        // hits + misses
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t sets = 0;        // successful sets
  std::uint64_t erases = 0;      // erase() calls that removed an entry
  std::uint64_t evictions = 0;   // live entries dropped to make room
  std::uint64_t expired = 0;     // entries reclaimed after their TTL
  std::uint64_t stale = 0;       // entries reclaimed after clear()/invalidate()
  std::uint64_t recoveries = 0;  // stripes repaired after a process died holding their lock
  std::uint64_t resets = 0;      // stripes that could not be verified and were emptied
  std::uint64_t entries = 0;     // entries in the index now
  std::uint64_t bytes_used = 0;  // arena bytes held by entries not known dead
  std::uint64_t capacity_bytes = 0;  // the segment's size
  // Values stored compressed, over the segment's life: their original bytes
  // and the bytes they took (saved = in - out).
  std::uint64_t compressed_in = 0;
  std::uint64_t compressed_out = 0;

  double hit_ratio() const { return gets == 0 ? 0.0 : double(hits) / double(gets); }
};

}  // namespace hostcache
