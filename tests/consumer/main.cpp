// A project that found hostcache with find_package() and uses it.
#include <hostcache/cache.h>

#include <cstdio>
#include <string>
#include <unistd.h>

int main() {
  hostcache::Config config;
  config.name = "consumer-" + std::to_string(::getpid());
  config.capacity_bytes = 4u << 20;
  config.max_value_bytes = 4096;
  auto cache = hostcache::Cache::open(config);
  bool ok = cache.put("answer", 42) == hostcache::Errc::ok && cache.get_as<int>("answer") == 42;
  hostcache::Cache::remove(config.name);
  std::puts(ok ? "consumer: ok" : "consumer: FAILED");
  return ok ? 0 : 1;
}
