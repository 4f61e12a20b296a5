// Named crash points, compiled only into test builds (HOSTCACHE_CRASH_POINTS).
#include "crash_point.h"

#if defined(HOSTCACHE_CRASH_POINTS)
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace hostcache::crash {
namespace {
std::atomic<const char*> g_armed{nullptr};
std::atomic<long> g_skip{0};
}  // namespace

void arm(const char* name, long skip) noexcept {
  g_skip.store(skip);
  g_armed.store(name);
}

void point(const char* name) noexcept {
  const char* armed = g_armed.load(std::memory_order_relaxed);
  if (armed == nullptr || std::strcmp(armed, name) != 0) return;
  if (g_skip.fetch_sub(1) > 0) return;
  ::_exit(kExitCode);
}

}  // namespace hostcache::crash
#endif
