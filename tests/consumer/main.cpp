// A project that found hostcache with find_package() and uses it, the
// installed memoize.h included.
#include <hostcache/cache.h>
#include <hostcache/memoize.h>

#include <unistd.h>

#include <cstdio>
#include <string>

int main() {
  hostcache::Config config;
  config.name = "consumer-" + std::to_string(::getpid());
  config.capacity_bytes = 4u << 20;
  config.max_value_bytes = 4096;
  auto cache = hostcache::Cache::open(config);
  bool ok = cache.put("answer", 42) == hostcache::Errc::ok && cache.get_as<int>("answer") == 42;
  int computed = 0;
  for (int i = 0; i < 3; ++i) {
    ok = ok && hostcache::get_or_compute<std::string>(cache, "memo", [&] {
                 ++computed;
                 return std::string("computed once");
               }) == "computed once";
  }
  ok = ok && computed == 1;
  hostcache::Cache::remove(config.name);
  std::puts(ok ? "consumer: ok" : "consumer: FAILED");
  return ok ? 0 : 1;
}
