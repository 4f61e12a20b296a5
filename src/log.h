// log.h — the library's spdlog logger ("hostcache").
//
// Quiet by default: warnings and errors only, on stderr (never stdout). Set
// HOSTCACHE_LOG=debug (or trace, info, warn, error, off) to change the level;
// debug logs hits, misses and invalidations.
#pragma once

#include <spdlog/spdlog.h>

namespace hostcache::log {

spdlog::logger& get();

// Whether debug messages are logged. The level is fixed when the logger is
// created (HOSTCACHE_LOG), so a hit tests one cached byte, not the logger.
inline bool debug_enabled() {
  static const bool on = get().should_log(spdlog::level::debug);
  return on;
}

}  // namespace hostcache::log
