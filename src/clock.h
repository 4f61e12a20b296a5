// clock.h — the one time source for TTLs.
//
// CLOCK_MONOTONIC in milliseconds: the same for every process of the host,
// immune to wall-clock steps. Tests may install a fake clock for their own
// process (fork children inherit it).
#pragma once

#include <cstdint>

namespace hostcache::clock {

// Milliseconds on the host's monotonic clock (or the fake clock if set).
// About 30 ns in a VM (vDSO): the get path avoids it, see coarse_ms().
std::int64_t now_ms() noexcept;

// CLOCK_MONOTONIC_COARSE in milliseconds (the fake clock if set): about 5 ns,
// never ahead of now_ms() and never behind it by more than kCoarseSlackMs.
// The kernel advances it every tick, and even a tickless (nohz_full) CPU
// keeps a 1 Hz residual tick, so 2 s is a bound with a wide margin.
std::int64_t coarse_ms() noexcept;
inline constexpr std::int64_t kCoarseSlackMs = 2000;

// Both coarse clocks, read once for a get: `ms` is coarse_ms() (the fake
// clock if set); `gap_ns` is CLOCK_MONOTONIC_COARSE less
// CLOCK_REALTIME_COARSE in ns, of the real clocks always. A move into
// another time namespace shifts the gap by the namespace's offset at once;
// otherwise only a wall-clock step (or a leap second, or a tick between the
// two reads) changes it: NTP's slew moves both clocks alike
// (stripe_lock::time_namespace_unmoved).
struct Coarse {
  std::int64_t ms;
  std::int64_t gap_ns;
};
Coarse coarse() noexcept;

// Wall-clock milliseconds since the epoch, for humans (creation time).
std::uint64_t unix_ms() noexcept;

// Test hook: while set, now_ms() returns *fake_ms (read atomically, so a test
// may advance it with std::atomic_ref while other threads read). nullptr restores the real
// clock. Not thread-safe against concurrent now_ms(); set it before threads.
void set_fake_for_testing(std::int64_t* fake_ms) noexcept;

}  // namespace hostcache::clock
