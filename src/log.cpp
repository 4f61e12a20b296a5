#include "log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace hostcache::log {

spdlog::logger& get() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>(
        "hostcache", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    l->set_level(spdlog::level::warn);
    if (const char* level = std::getenv("HOSTCACHE_LOG")) {
      l->set_level(spdlog::level::from_str(level));
    }
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [hostcache] [%l] [pid %P] %v");
    return l;
  }();
  return *logger;
}

}  // namespace hostcache::log
