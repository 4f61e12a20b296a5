// log.h — the library's spdlog logger ("hostcache").
//
// Quiet by default: warnings and errors only, on stderr (never stdout). Set
// HOSTCACHE_LOG=debug (or trace, info, warn, error, off) to change the level;
// debug logs hits, misses and invalidations.
#pragma once

#include <spdlog/spdlog.h>

namespace hostcache::log {

spdlog::logger& get();

}  // namespace hostcache::log
