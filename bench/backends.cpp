// backends.cpp — the dispatch, and the two backends that need no server:
// hostcache itself and the in-process mutex-map reference (the third, floor,
// is backend_floor.cpp).
#include "backends.h"

#include <hostcache/cache.h>

#include <mutex>
#include <stdexcept>

#include "ref_tables.h"

namespace hcbench {

void Backend::invalidate(std::string_view) {
  throw std::runtime_error("this backend has no tag invalidation");
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names{"hostcache", "mutex-map", "floor"};
#ifdef HCBENCH_HAVE_REDIS
  names.push_back("redis");
  names.push_back("redis-pipelined");
#endif
#ifdef HCBENCH_HAVE_MEMCACHED
  names.push_back("memcached");
#endif
#ifdef HCBENCH_HAVE_LMDB
  names.push_back("lmdb");
#endif
  return names;
}

bool is_threaded(const std::string& backend) {
  return backend == "mutex-map" || backend == "floor";
}

// ---- hostcache ----------------------------------------------------------------

namespace {

class HostcacheBackend final : public Backend {
 public:
  HostcacheBackend(hostcache::Cache cache, std::int64_t ttl_ms) : cache_(std::move(cache)) {
    plain_.ttl = std::chrono::milliseconds(ttl_ms);
    tagged_.ttl = plain_.ttl;
    tagged_.tags.resize(1);  // reused: a set with a tag allocates nothing here
  }
  bool get(std::string_view key, std::string& value) override { return cache_.get(key, value); }
  void set(std::string_view key, std::string_view value, std::string_view tag) override {
    hostcache::Errc e;
    if (tag.empty()) {
      e = cache_.set(key, value, plain_);
    } else {
      tagged_.tags[0] = tag;
      e = cache_.set(key, value, tagged_);
    }
    if (e != hostcache::Errc::ok)
      throw std::runtime_error(std::string("hostcache set failed: ") + hostcache::to_string(e));
  }
  void clear() override { cache_.clear(); }
  void invalidate(std::string_view tag) override { cache_.invalidate(tag); }
  bool supports_invalidate() const override { return true; }

 private:
  hostcache::Cache cache_;
  hostcache::SetOptions plain_, tagged_;
};

}  // namespace

std::unique_ptr<Backend> make_hostcache(const BackendOptions& opts, Role role) {
  if (role == Role::setup) {
    hostcache::Config config;
    config.name = opts.name;
    config.capacity_bytes = opts.capacity_bytes;
    config.stripes = opts.stripes;
    config.max_value_bytes = std::max<std::size_t>(opts.max_value_bytes, 1024);
    return std::make_unique<HostcacheBackend>(hostcache::Cache::open(config), opts.ttl_ms);
  }
  // Workers attach by name, as unrelated worker processes of a host would.
  return std::make_unique<HostcacheBackend>(hostcache::Cache::attach(opts.name), opts.ttl_ms);
}

void destroy_hostcache(const BackendOptions& opts) { hostcache::Cache::remove(opts.name); }

// ---- mutex-map: one process, threads ---------------------------------------------

namespace {

std::mutex g_map_mu;
std::shared_ptr<MutexMap> g_map;  // shared by the setup and worker handles of one run

class MutexMapBackend final : public Backend {
 public:
  MutexMapBackend(std::shared_ptr<MutexMap> map, std::int64_t ttl_ms)
      : map_(std::move(map)), ttl_ms_(ttl_ms) {}
  bool get(std::string_view key, std::string& value) override { return map_->get(key, value); }
  void set(std::string_view key, std::string_view value, std::string_view) override {
    map_->set(key, value, ttl_ms_);
  }
  void clear() override { map_->clear(); }

 private:
  std::shared_ptr<MutexMap> map_;
  std::int64_t ttl_ms_;
};

}  // namespace

// ---- dispatch ---------------------------------------------------------------------

std::unique_ptr<Backend> make_backend(const BackendOptions& opts, Role role) {
  const std::string& b = opts.backend;
  if (b == "hostcache") return make_hostcache(opts, role);
  if (b == "mutex-map") {
    std::lock_guard<std::mutex> lock(g_map_mu);
    if (!g_map) {
      g_map = std::make_shared<MutexMap>();
      g_map->use_ttl(opts.ttl_ms > 0);
    }
    return std::make_unique<MutexMapBackend>(g_map, opts.ttl_ms);
  }
  if (b == "floor") return make_floor(opts, role);
#ifdef HCBENCH_HAVE_REDIS
  if (b == "redis" || b == "redis-pipelined") return make_redis(opts, role);
#endif
#ifdef HCBENCH_HAVE_MEMCACHED
  if (b == "memcached") return make_memcached(opts, role);
#endif
#ifdef HCBENCH_HAVE_LMDB
  if (b == "lmdb") return make_lmdb(opts, role);
#endif
  std::string known;
  for (const auto& n : available_backends()) known += " " + n;
  throw std::runtime_error("backend '" + b + "' is unknown or was not built; built:" + known);
}

void destroy_store(const BackendOptions& opts) {
  if (opts.backend == "hostcache") destroy_hostcache(opts);
  if (opts.backend == "mutex-map") {
    std::lock_guard<std::mutex> lock(g_map_mu);
    g_map.reset();
  }
  if (opts.backend == "floor") destroy_floor(opts);
#ifdef HCBENCH_HAVE_LMDB
  if (opts.backend == "lmdb") destroy_lmdb(opts);
#endif
  // redis and memcached: the server is compare.sh's; it flushes or stops it.
}

}  // namespace hcbench
