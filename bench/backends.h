// backends.h — the stores hostcache-bench drives, behind one small interface.
//
// A backend's life in a run:
//   1. the parent calls make_backend(opts, Role::setup): it creates the store
//      (a segment, an LMDB environment) or connects to the server, and the
//      parent prefills every key through it; then the parent destroys it, so
//      that no connection or LMDB handle crosses fork();
//   2. each worker (a forked process, or a thread for mutex-map and floor) calls
//      make_backend(opts, Role::worker) and runs batches of ops;
//   3. the parent calls destroy_store(opts) once the workers are gone.
//
// Which backends exist depends on what was found at build time (hiredis,
// libmemcached, LMDB); available_backends() lists them.
//
// Thread-safety: one Backend object per worker; mutex-map's and floor's
// workers share the table behind their objects, which is safe (a MutexMap; a
// seqlocked table, backend_floor.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hcbench {

struct BackendOptions {
  std::string backend = "hostcache";  // hostcache|redis|redis-pipelined|memcached|lmdb|mutex-map|floor
  std::string name;                   // hostcache segment name
  std::uint64_t capacity_bytes = 0;   // hostcache segment size
  unsigned stripes = 0;               // hostcache stripes (0: the library's choice)
  std::string host = "127.0.0.1";     // redis, memcached
  int port = 0;
  std::string dir;  // lmdb environment directory
  std::uint64_t lmdb_map_bytes = 0;
  std::int64_t ttl_ms = 0;  // 0: no TTL (hostcache: its default)
  std::size_t max_value_bytes = 0;
  std::size_t max_key_bytes = 0;  // floor: its slots are sized for the run's keys and values
  std::uint64_t keys = 0;         // floor: the run's key count (the table holds 2x, pow2)
  unsigned pipeline = 1;  // ops per round trip (redis-pipelined)
};

enum class Role { setup, worker };

struct Op {
  enum class Kind : std::uint8_t { get, set } kind = Kind::get;
  std::string_view key;
  std::string_view value;      // set: the value to store
  std::string_view tag;        // set: empty, or one invalidation tag (hostcache only)
  bool hit = false;            // get: filled by run()
  std::string* out = nullptr;  // get: where the value goes on a hit
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs `ops` in order. A set that the store refuses throws: the run is broken.
  virtual void run(std::span<Op> ops) {
    for (Op& op : ops) {
      if (op.kind == Op::Kind::get) {
        op.hit = get(op.key, *op.out);
      } else {
        set(op.key, op.value, op.tag);
      }
    }
  }
  virtual bool get(std::string_view key, std::string& value) = 0;
  virtual void set(std::string_view key, std::string_view value, std::string_view tag) = 0;
  // Drops every entry. O(1) for hostcache; what it costs elsewhere is the point.
  virtual void clear() = 0;
  // Drops every entry carrying `tag`; only hostcache can.
  virtual void invalidate(std::string_view tag);
  virtual bool supports_invalidate() const { return false; }
};

std::vector<std::string> available_backends();
bool is_threaded(const std::string& backend);  // mutex-map, floor: threads, not processes

// Throws std::runtime_error when the backend is unknown, not built, or its
// store cannot be reached.
std::unique_ptr<Backend> make_backend(const BackendOptions& opts, Role role);
void destroy_store(const BackendOptions& opts);

// Per-library factories (backends_*.cpp); each is compiled only when its
// client library was found.
std::unique_ptr<Backend> make_hostcache(const BackendOptions& opts, Role role);
void destroy_hostcache(const BackendOptions& opts);
std::unique_ptr<Backend> make_redis(const BackendOptions& opts, Role role);
std::unique_ptr<Backend> make_memcached(const BackendOptions& opts, Role role);
std::unique_ptr<Backend> make_lmdb(const BackendOptions& opts, Role role);
void destroy_lmdb(const BackendOptions& opts);
// The in-process seqlock table hostcache's get is judged against (always built).
std::unique_ptr<Backend> make_floor(const BackendOptions& opts, Role role);
void destroy_floor(const BackendOptions& opts);

}  // namespace hcbench
