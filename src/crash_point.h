// crash_point.h — named places where a test build can kill the process.
//
// HOSTCACHE_CRASH_POINT("set.after_write") compiles to nothing unless the
// library is built with -DHOSTCACHE_CRASH_POINTS=ON. In such a build, the
// process _exit(77)s at the point named by the environment variable
// HOSTCACHE_CRASH_AT (read once), and every point reached is recorded so a
// test can list which points its run covered.
#pragma once

#if defined(HOSTCACHE_CRASH_POINTS)
namespace hostcache::crash {
void point(const char* name) noexcept;
}
#define HOSTCACHE_CRASH_POINT(name) ::hostcache::crash::point(name)
#else
#define HOSTCACHE_CRASH_POINT(name) \
  do {                              \
  } while (0)
#endif
