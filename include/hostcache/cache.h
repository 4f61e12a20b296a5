// hostcache/cache.h — a cache shared by the processes of one host.
//
// A Cache is a handle on a named shared-memory segment (/dev/shm/hostcache.NAME)
// holding a lock-striped hash table of entries with a TTL and invalidation
// tags. Every process that opens the same name sees the same entries. There is
// no server: a hit is a hash, a bounded probe of one stripe and a copy.
//
// Thread-safety: every method is safe to call concurrently from any number of
// threads and processes. A child created by fork() keeps using its parent's
// Cache. A Cache is movable, not copyable; a moved-from Cache may only be
// destroyed or assigned to.
//
// Guarantees (DESIGN.md's invariants, in user words):
//  - A hit returns exactly the bytes some set() wrote for exactly that key.
//  - When clear() or invalidate(tag) returns, no get() that starts afterwards,
//    in any process, returns an entry written before it. Both are O(1).
//  - An entry is never returned after its TTL.
//  - get/set/erase touch one stripe; get takes no lock and writes no shared
//    memory in the common case (it is validated by the stripe's sequence).
//  - A process killed at any instruction costs at most the entry it was writing.
//  - The segment never grows: set() evicts (dead, expired and stale entries
//    first, then the coldest) and fails only for a key, value or tag over the
//    limits.
#pragma once

#include <hostcache/config.h>
#include <hostcache/errors.h>
#include <hostcache/stats.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <msgpack.hpp>

namespace hostcache {

namespace detail {
struct Access;  // the library's own parts (memoize, inspect) reach the segment through it
}

// The generations an entry would be stamped with, read at one instant. Taken
// before an expensive computation and passed to set() after it, it makes a
// result computed across an invalidation stale on arrival (invariant 3).
struct GenerationStamp {
  std::uint64_t global = 0;
  std::array<std::uint64_t, kMaxTags> tags{};
  unsigned ntags = 0;
};

class Cache {
 public:
  // Creates the segment `config.name`, or attaches to the live segment of that
  // name after validating it (magic, layout version, sizes, owner and mode).
  // Concurrent open() calls on a fresh name race safely: exactly one creates
  // it, and no caller ever sees it half-initialized. An attacher keeps the
  // segment's capacity and stripes; default_ttl and the key/value limits are
  // the caller's (clamped to what one stripe can hold).
  // Throws Error (invalid_name, invalid_config, capacity_too_small,
  // incompatible, corrupt, permission_denied, io_error).
  static Cache open(const Config& config);

  // Attaches to an existing segment only, with the limits it was created with.
  // Throws Error (not_found, incompatible, corrupt, permission_denied, ...).
  static Cache attach(std::string_view name);
  static Cache attach(std::string_view name, bool allow_foreign);

  // Unlinks the name. Processes that mapped it keep working on their mapping;
  // the memory is freed when the last one unmaps it. False if there was none.
  static bool remove(std::string_view name);

  Cache(Cache&&) noexcept;
  Cache& operator=(Cache&&) noexcept;
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;
  ~Cache();

  // True on a hit, with the value copied into `value` (no allocation when
  // `value` already has room). On a miss `value` is unspecified.
  // Cost: O(1), one stripe, no lock unless a writer keeps the stripe busy.
  bool get(std::string_view key, std::string& value) const;
  std::optional<std::string> get(std::string_view key) const;

  // Stores `value` under `key`, replacing any earlier value. Returns
  // Errc::ok, or key_too_large / value_too_large / invalid_ttl /
  // too_many_tags / tag_too_large, in which case nothing changed.
  // Cost: O(1) amortized; locks one stripe; may evict within that stripe.
  Errc set(std::string_view key, std::string_view value, const SetOptions& options = {});

  // As set(), stamped with generations read earlier by generations(): if a
  // clear() or invalidate() of one of its tags happened since, the entry is
  // stale on arrival and never served. `stamp` must come from
  // generations(options.tags) on this segment.
  Errc set(std::string_view key, std::string_view value, const SetOptions& options,
           const GenerationStamp& stamp);

  // The current global generation and those of `tags` (at most kMaxTags).
  GenerationStamp generations(const std::vector<std::string_view>& tags) const;

  // Removes `key`. True if an entry was there (valid or not yet reclaimed).
  bool erase(std::string_view key);

  // O(1): one increment of the global generation. Every entry written before
  // it returns is invisible to every get() that starts after it.
  void clear();

  // O(1): one increment of `tag`'s generation. Entries carrying the tag are
  // invisible to every get() that starts after it returns. Two tags may share
  // a generation slot; invalidating one then also drops the other's entries
  // (safe: a miss, never a stale hit).
  void invalidate(std::string_view tag);

  // Typed access through msgpack-c: T must be msgpack-serializable
  // (MSGPACK_DEFINE, or a type msgpack-c adapts). get_as returns nullopt on a
  // miss and on bytes that do not decode as T.
  template <class T>
  std::optional<T> get_as(std::string_view key) const;
  template <class T>
  Errc put(std::string_view key, const T& value, const SetOptions& options = {});

  // Counters summed over every process that used the segment.
  Stats stats() const;

  std::string_view name() const;
  std::chrono::milliseconds default_ttl() const;
  std::size_t max_key_bytes() const;
  std::size_t max_value_bytes() const;
  // False when Config::enabled was false or HOSTCACHE_DISABLED=1 was set.
  bool enabled() const;

  struct Impl;

 private:
  explicit Cache(std::unique_ptr<Impl> impl);
  friend struct detail::Access;
  std::unique_ptr<Impl> impl_;
};

// ---- templates -------------------------------------------------------------

template <class T>
std::optional<T> Cache::get_as(std::string_view key) const {
  thread_local std::string buffer;
  if (!get(key, buffer)) return std::nullopt;
  try {
    msgpack::object_handle handle = msgpack::unpack(buffer.data(), buffer.size());
    return handle.get().as<T>();
  } catch (const std::exception&) {
    return std::nullopt;  // not a T: a miss for this caller
  }
}

template <class T>
Errc Cache::put(std::string_view key, const T& value, const SetOptions& options) {
  msgpack::sbuffer packed;
  msgpack::pack(packed, value);
  return set(key, std::string_view(packed.data(), packed.size()), options);
}

}  // namespace hostcache
