// crash_point.h — named places where a test build can kill the process.
//
// HOSTCACHE_CRASH_POINT("set.after_write") compiles to nothing unless the
// library is built with -DHOSTCACHE_CRASH_POINTS=ON (the sanitizer test
// builds are). In such a build, a test process that called
// crash::arm("set.after_write") _exit(kExitCode)s when it reaches that point,
// as a worker SIGKILLed there would stop: holding whatever lock it held, with
// the stripe's sequence as it was. kCrashPoints lists every point; the
// kill-at-every-step test drives each one and fails if one is never reached.
#pragma once

namespace hostcache::crash {

inline constexpr int kExitCode = 77;

inline constexpr const char* kCrashPoints[] = {
    "set.begin",          "set.after_kill_old",    "set.after_make_room", "set.after_write",
    "set.after_append",   "set.after_index",       "erase.begin",         "erase.after_kill",
    "kill.after_unindex", "alloc.after_pad",       "move.journaled",      "move.copied",
    "move.committed",     "evict.before_unlink",   "evict.after_unlink",  "index.before_evict",
    "clear.before_bump",  "clear.after_bump",      "invalidate.before_bump", "invalidate.after_bump",
    "stats.before_claim", "stats.after_claim",     "recovery.start",      "recovery.rebuilt",
    "recovery.after_reset", "set.in_place",
};

#if defined(HOSTCACHE_CRASH_POINTS)
inline constexpr bool kEnabled = true;
// Arms the point `name` in this process: the (skip+1)-th time it is reached,
// the process _exits. `name` must outlive the process (a literal).
void arm(const char* name, long skip = 0) noexcept;
void point(const char* name) noexcept;
#define HOSTCACHE_CRASH_POINT(name) ::hostcache::crash::point(name)
#else
inline constexpr bool kEnabled = false;
inline void arm(const char*, long = 0) noexcept {}
#define HOSTCACHE_CRASH_POINT(name) \
  do {                              \
  } while (0)
#endif

}  // namespace hostcache::crash
