// hostcache/config.h — how a segment is created and how entries are written.
//
// Plain value types; copy them freely across threads.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace hostcache {

// At most this many invalidation tags per entry.
inline constexpr std::size_t kMaxTags = 4;
// A tag is 1..kMaxTagBytes bytes.
inline constexpr std::size_t kMaxTagBytes = 255;
// Segment names are [A-Za-z0-9._-], 1..kMaxNameBytes characters.
inline constexpr std::size_t kMaxNameBytes = 200;
// A namespace name is 1..kMaxNamespaceBytes bytes.
inline constexpr std::size_t kMaxNamespaceBytes = 64;
// SetOptions::ttl for an entry that never expires: it goes only under memory
// pressure, by clear(), by clear(namespace) or by one of its tags. ttl(key)
// answers it for such an entry.
inline constexpr std::chrono::milliseconds kNoExpiry = std::chrono::milliseconds::max();

struct Config {
  std::string name;                        // segment name: [A-Za-z0-9._-], 1..200 chars
  std::size_t capacity_bytes = 64u << 20;  // the whole segment, fixed for its life
  unsigned stripes = 0;                    // 0: chosen from capacity and hardware; else a power of two
  std::chrono::milliseconds default_ttl = std::chrono::minutes(30);
  unsigned mode = 0600;                    // applied exactly, whatever the umask
  std::size_t max_key_bytes = 1024;
  std::size_t max_value_bytes = 1u << 20;
  // Attach even when the segment is owned by another uid or its mode is wider
  // than `mode`. Off by default: a segment another user can write can lie.
  bool allow_foreign = false;
  // false: the memoize layer passes every call straight to compute() (the
  // seed's ENABLED = False). The environment variable HOSTCACHE_DISABLED=1
  // has the same effect. get/set are unaffected.
  bool enabled = true;
  // How long an operation waits for a stripe lock that a LIVE process holds
  // (a dead holder is detected within a few ms and its stripe repaired)
  // before giving up: get() answers a miss, set() returns Errc::busy, erase()
  // throws Error(busy). A healthy holder keeps a stripe for microseconds; a
  // holder stopped by a debugger or SIGSTOP, or a lock word forged by a
  // process that can write the segment, costs at most this per operation.
  // Process-local: attach() uses the default.
  std::chrono::milliseconds lock_timeout = std::chrono::seconds(2);
  // Values of at least this many bytes are stored compressed (zstd) when that
  // saves a sixteenth or more; get() returns the original bytes. 0: off.
  // Process-local: each process decides for what it writes; every process
  // reads compressed entries. Off by default, by measurement (bench_cache's
  // metadata rows, 2-core VM): metadata JSON of 4-20 KiB stores 5-8x smaller,
  // but a get costs 2.4-5 us instead of 0.1-0.3 us and a set 5-13 us instead
  // of 0.7-1.7 us. Turn it on (e.g. 1024) when capacity, not speed, is short:
  // a memoized 50 ms computation is worth a 5 us decompression.
  std::size_t compress_min_bytes = 0;
  int compress_level = 1;                  // zstd level, 1 (fastest) .. 19
  // Sealed mode, for a prefork master: open() creates a new, unnamed segment
  // (a memfd sealed against shrinking and growing) instead of attaching by
  // name. Forked workers keep using it; nothing in /dev/shm can be squatted,
  // replaced or truncated under them (a writer of a named segment can shrink
  // it and kill its users with SIGBUS; nobody can shrink a sealed one).
  // Others reach it only through this process: Cache::attach_pid(pid, name),
  // `shm-dump --pid PID NAME`, with the right to inspect the process.
  bool sealed = false;
};

struct SetOptions {
  std::chrono::milliseconds ttl{0};        // 0: the cache's default_ttl; kNoExpiry: never; negative: invalid_ttl
  std::vector<std::string_view> tags;      // invalidation tags, at most kMaxTags
  // A logical cache inside the segment (1..kMaxNamespaceBytes bytes; empty:
  // none). clear(ns) drops every entry written under it, in O(1), and no
  // other. Not one of the tags: an entry has up to 4 tags and a namespace.
  std::string_view ns;
};

}  // namespace hostcache
