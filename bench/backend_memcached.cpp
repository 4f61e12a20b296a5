// backend_memcached.cpp — memcached through libmemcached, one round trip per
// op (ASCII protocol, TCP_NODELAY). Compiled only when libmemcached was found.
#include <libmemcached/memcached.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "backends.h"

namespace hcbench {
namespace {

class MemcachedBackend final : public Backend {
 public:
  explicit MemcachedBackend(const BackendOptions& opts)
      // memcached's TTL is in whole seconds: round up so nothing lives shorter.
      : ttl_s_(opts.ttl_ms > 0 ? time_t((opts.ttl_ms + 999) / 1000) : 0) {
    mc_ = memcached_create(nullptr);
    if (mc_ == nullptr) throw std::runtime_error("memcached: memcached_create failed");
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
    // A server that stops answering fails the run, never hangs it.
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 10000);
    memcached_behavior_set(mc_, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, 10000);
    check(memcached_server_add(mc_, opts.host.c_str(), in_port_t(opts.port)), "server_add");
  }
  ~MemcachedBackend() override { memcached_free(mc_); }

  bool get(std::string_view key, std::string& value) override {
    std::size_t len = 0;
    std::uint32_t flags = 0;
    memcached_return_t rc;
    char* v = memcached_get(mc_, key.data(), key.size(), &len, &flags, &rc);
    if (v == nullptr) {
      if (rc == MEMCACHED_NOTFOUND) return false;
      check(rc, "get");
      return false;  // an empty value: not one this harness writes, so a miss
    }
    value.assign(v, len);
    std::free(v);
    return true;
  }

  void set(std::string_view key, std::string_view value, std::string_view) override {
    check(memcached_set(mc_, key.data(), key.size(), value.data(), value.size(), ttl_s_, 0), "set");
  }

  void clear() override { check(memcached_flush(mc_, 0), "flush"); }

 private:
  void check(memcached_return_t rc, const char* what) {
    if (rc != MEMCACHED_SUCCESS)
      throw std::runtime_error(std::string("memcached: ") + what +
                               " failed: " + memcached_strerror(mc_, rc));
  }

  memcached_st* mc_ = nullptr;
  time_t ttl_s_;
};

}  // namespace

std::unique_ptr<Backend> make_memcached(const BackendOptions& opts, Role) {
  return std::make_unique<MemcachedBackend>(opts);
}

}  // namespace hcbench
