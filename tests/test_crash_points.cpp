// Kill at every step: for each named crash point, a child process dies
// exactly there (holding whatever lock it held); then the parent checks that
// the stripe recovers, the segment checker finds nothing, and no other stripe
// lost an entry. Runs in builds with HOSTCACHE_CRASH_POINTS (the sanitizer
// builds); elsewhere it is skipped.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "arena.h"
#include "crash_point.h"
#include "reliability_support.h"

namespace hostcache {
namespace {

using namespace testing;

constexpr std::uint32_t kVictimStripe = 0;

// What the child does: everything that can reach `point` within stripe 0,
// then report "not reached" (0) if it got through alive.
int drive(const std::string& name, const char* point) {
  Cache cache = Cache::attach(name);
  const bool in_recovery = std::strncmp(point, "recovery.", 9) == 0;
  if (!in_recovery) {
    crash::arm(point);
    if (std::strncmp(point, "clear.", 6) == 0) cache.clear();
    if (std::strncmp(point, "invalidate.", 11) == 0) cache.invalidate("model.a");
    const auto keys = keys_in_stripe(cache, kVictimStripe, 3000, "w");
    churn(cache, keys, 40000, 7);
    // More keys than their two bucket groups hold: the index must evict.
    for (const auto& k : keys_in_two_groups(cache, kVictimStripe, 24, "c")) cache.set(k, "x");
    return 0;
  }
  // A grandchild dies holding stripe 0's lock; for the reset path it first
  // scribbles over the ring so that the stripe cannot be verified.
  const bool scribble = std::strcmp(point, "recovery.after_reset") == 0;
  for (const auto& k : keys_in_stripe(cache, kVictimStripe, 20, "r")) cache.set(k, make_value(k, 1, 200));
  const int status = wait_for(spawn([&] {
    stripe::Locked locked(detail::Access::segment(cache), kVictimStripe);
    locked.begin();
    if (scribble) std::memset(locked.view().arena + locked.view().hdr->tail, 0x5a, 64);
    ::_exit(0);
    return 0;
  }));
  if (status != 0) return 3;
  crash::arm(point);
  touch_all_stripes(cache);  // this process repairs stripe 0, and dies in it
  return 0;
}

TEST(CrashPoints, EveryPointRecoversCleanly) {
  if (!crash::kEnabled) GTEST_SKIP() << "built without HOSTCACHE_CRASH_POINTS";
  std::set<std::string> reached;
  for (const char* point : crash::kCrashPoints) {
    SCOPED_TRACE(point);
    ScopedName name("crash");
    Cache cache = Cache::open(small_config(name.name, 1u << 20, 4));
    // Sentinels in the other stripes: none may be lost.
    const auto sentinels = keys_in_stripe(cache, kVictimStripe, 150, "sentinel", /*exclude=*/true);
    for (const auto& k : sentinels) ASSERT_EQ(cache.set(k, make_value(k, 1, 100)), Errc::ok);
    const int status = wait_for(spawn([&] { return drive(name.name, point); }));
    if (status == crash::kExitCode) reached.insert(point);
    EXPECT_EQ(status, crash::kExitCode) << "crash point " << point << " was not reached (status " << status << ")";
    // A recovery point dies mid-repair: the next process repairs again.
    touch_all_stripes(cache);
    const auto violations = inspect::check(name.name);
    EXPECT_TRUE(violations.empty()) << describe(violations);
    // A clear() that got past its increment took effect, whole, before the
    // child died; anywhere else no sentinel may be missing.
    const bool cleared = std::strcmp(point, "clear.after_bump") == 0;
    for (const auto& k : sentinels) {
      std::string v;
      if (cleared) {
        ASSERT_FALSE(cache.get(k, v)) << "clear() half applied: " << k;
        continue;
      }
      ASSERT_TRUE(cache.get(k, v)) << "lost sentinel " << k;
      ASSERT_TRUE(verify_value(k, v));
    }
    // The victim stripe works.
    const auto probe = keys_in_stripe(cache, kVictimStripe, 1, "after");
    ASSERT_EQ(cache.set(probe[0], "ok"), Errc::ok);
    EXPECT_EQ(cache.get(probe[0]).value_or(""), "ok");
  }
  std::string coverage;
  for (const char* p : crash::kCrashPoints) coverage += std::string(reached.count(p) ? "  reached  " : "  MISSED   ") + p + "\n";
  std::printf("crash point coverage (%zu of %zu):\n%s", reached.size(), std::size(crash::kCrashPoints),
              coverage.c_str());
  EXPECT_EQ(reached.size(), std::size(crash::kCrashPoints));
}

}  // namespace
}  // namespace hostcache
