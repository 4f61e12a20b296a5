// log.h — the library's spdlog logger ("hostcache").
//
// Quiet by default: warnings and errors only, on stderr (never stdout). Set
// HOSTCACHE_LOG=debug (or trace, info, warn, error, off) to change the level;
// debug logs hits, misses and invalidations.
#pragma once

#include <spdlog/spdlog.h>

#include <atomic>

namespace hostcache::log {

spdlog::logger& get();

namespace detail {
extern std::atomic<int> g_debug;  // -1: not yet known; constant-initialised (no guard a fork could copy held)
bool debug_level_now();
}  // namespace detail

// Whether debug messages are logged. The level is fixed when the logger is
// created (HOSTCACHE_LOG), so a hit tests one cached word, not the logger.
inline bool debug_enabled() {
  const int on = detail::g_debug.load(std::memory_order_relaxed);
  return on < 0 ? detail::debug_level_now() : on != 0;
}

}  // namespace hostcache::log
