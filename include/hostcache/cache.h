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
#include <utility>
#include <vector>

#include <msgpack.hpp>

namespace hostcache {

class Segment;
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
  std::uint64_t ns = 0;  // the namespace's generation, when generations() was given one
};

// Where get_into() copies a value: called with the value's size, it returns
// a buffer of at least that many bytes. It may be called more than once for
// one get (a concurrent writer made the library retry); the buffer of the
// last call holds the value. It may run with the stripe's lock held (a get
// falls back to the lock when writers keep the stripe busy, or to repair
// it), which every process's writers of that stripe then wait for: it must
// not block, nor wait for anything (a GIL, a mutex) that another thread may
// hold for long. The key may view memory the sink hands out (it is copied
// first).
using ValueSink = char* (*)(void* ctx, std::size_t size);

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

  // Attaches to the sealed segment `name` (Config::sealed) that process `pid`
  // holds, through /proc/PID/fd (its uid, or root). Refuses a segment that
  // is not sealed. Throws as attach() does.
  static Cache attach_pid(std::uint32_t pid, std::string_view name, bool allow_foreign = false);

  // Unlinks the name. Processes that mapped it keep working on their mapping;
  // the memory is freed when the last one unmaps it. False if there was none.
  static bool remove(std::string_view name);

  Cache(Cache&&) noexcept;
  Cache& operator=(Cache&&) noexcept;
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;
  ~Cache();

  // True on a hit, with the value copied into `value` (no allocation when
  // `value` already has room). On a miss `value` is unspecified. `key` may
  // view `value` itself (the last value as the next key).
  // Cost: O(1), one stripe, no lock unless a writer keeps the stripe busy.
  bool get(std::string_view key, std::string& value) const;
  std::optional<std::string> get(std::string_view key) const;

  // As get(), but the value goes straight into memory the caller allocates
  // once it knows the size (a binding creating its result object): true on a
  // hit, after sink() returned the buffer now holding the value.
  bool get_into(std::string_view key, ValueSink sink, void* ctx) const;

  // Looks several keys up: the bucket loads of all of them are started
  // before the first is probed, so their memory latencies overlap. One
  // result per key, in order. Cost: about one get per key, less the misses
  // in the CPU caches.
  std::vector<std::optional<std::string>> get_many(const std::vector<std::string_view>& keys) const;

  // The same into the caller's strings, which keep their room from call to
  // call (a loader that asks for a batch of keys per request allocates
  // nothing once they have grown, whatever the sizes of its batches):
  // `hits` is resized to keys.size(), `values` grown to at least that and
  // never shrunk (the strings past this batch keep their room, and their
  // contents are unspecified), and hits[i] says whether values[i] now holds
  // key i's value (unspecified when it does not). Returns the number of
  // hits. The keys
  // may view the strings of `values` (the last batch's values as this
  // batch's keys): they are copied before anything is written.
  std::size_t get_many(const std::vector<std::string_view>& keys, std::vector<std::string>& values,
                       std::vector<bool>& hits) const;

  // The remaining TTL of a valid entry (kNoExpiry for one that never
  // expires); nullopt on a miss. Counts as a lookup, not a get, in stats.
  std::optional<std::chrono::milliseconds> ttl(std::string_view key) const;

  // Stores `value` under `key`, replacing any earlier value. Returns
  // Errc::ok, or key_too_large / value_too_large / invalid_ttl /
  // too_many_tags / tag_too_large / invalid_namespace, in which case nothing
  // changed, or busy (a live process held the stripe's lock past
  // Config::lock_timeout). Like every write (add, set_many, incr, decr,
  // touch, erase), it throws Error(io_error) when this thread can take no
  // stripe lock now (its start time cannot be read from /proc for want of
  // descriptors or memory: tried again on the next call), and
  // Error(incompatible) when it must wait for a lock after this process
  // moved to another pid or time namespace; a get answers a miss in both
  // cases. A value of at least Config::compress_min_bytes is
  // stored zstd-compressed when that saves space.
  // Cost: O(1) amortized; locks one stripe; may evict within that stripe.
  Errc set(std::string_view key, std::string_view value, const SetOptions& options = {});

  // Stores `value` only if `key` has no valid entry (absent, expired, stale
  // or erased all count as absent). Atomic across processes: of several
  // processes adding one key at once, exactly one gets Errc::ok; the others
  // get Errc::already_exists and the entry is untouched. Other errors as set().
  // Cost: as set().
  Errc add(std::string_view key, std::string_view value, const SetOptions& options = {});

  // set() of each (key, value) pair with the same options; one result each.
  std::vector<Errc> set_many(const std::vector<std::pair<std::string_view, std::string_view>>& items,
                             const SetOptions& options = {});

  // Adds `delta` to the value stored under `key` as a decimal integer
  // (memcached's convention: ASCII digits with an optional leading '-', at
  // most 20 characters), atomically across processes (under the stripe
  // lock), keeping the entry's expiry, tags and namespace. On Errc::ok
  // `result` holds the new value, which is stored as decimal text. Errors:
  // not_found (no valid entry), not_integer (the value is not such an
  // integer; the entry is untouched), overflow (the sum does not fit
  // int64_t; untouched), busy. decr(key, d) is incr(key, -d).
  // Cost: a set of a ~20-byte value.
  Errc incr(std::string_view key, std::int64_t delta, std::int64_t& result);
  Errc decr(std::string_view key, std::int64_t delta, std::int64_t& result);

  // Gives a valid entry a new TTL (0: the default TTL, kNoExpiry: never)
  // without rewriting its value. False on a miss. Throws Error(invalid_ttl)
  // for a negative TTL and Error(busy) as erase() does.
  // Cost: one lock, and one checksum of the entry.
  bool touch(std::string_view key, std::chrono::milliseconds ttl);

  // As set(), stamped with generations read earlier by generations(): if a
  // clear() or invalidate() of one of its tags happened since, the entry is
  // stale on arrival and never served. `stamp` must come from
  // generations(options.tags) on this segment.
  Errc set(std::string_view key, std::string_view value, const SetOptions& options,
           const GenerationStamp& stamp);

  // The current global generation, those of `tags` (at most kMaxTags) and
  // that of the namespace `ns` (empty: none).
  GenerationStamp generations(const std::vector<std::string_view>& tags, std::string_view ns = {}) const;

  // Removes `key`. True if an entry was there (valid or not yet reclaimed).
  // Throws Error(busy) when a live process holds the stripe's lock past
  // Config::lock_timeout.
  bool erase(std::string_view key);

  // O(1): one increment of the global generation. Every entry written before
  // it returns is invisible to every get() that starts after it.
  void clear();

  // O(1): one increment of the namespace's generation. Every entry written
  // under SetOptions::ns == ns before it returns is invisible to every get()
  // that starts after it; other namespaces' entries and entries without a
  // namespace are untouched (unless their namespace shares its generation
  // slot, as two tags can: then they go too, a miss, never a stale hit).
  // Throws Error(invalid_namespace) for an empty or too long name.
  void clear(std::string_view ns);

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
  static Cache attached(std::unique_ptr<Segment> segment);
  friend struct detail::Access;
  std::unique_ptr<Impl> impl_;
};

// ---- templates -------------------------------------------------------------

template <class T>
std::optional<T> Cache::get_as(std::string_view key) const {
  std::string buffer;  // not a thread_local: usable from a thread-exit destructor
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
