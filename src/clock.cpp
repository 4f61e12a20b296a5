#include "clock.h"

#include <atomic>
#include <ctime>

namespace hostcache::clock {
namespace {
std::atomic<std::int64_t*> g_fake{nullptr};

// The fake clock if a test set one, else `id` in milliseconds.
std::int64_t read_ms(clockid_t id) noexcept {
  if (std::int64_t* fake = g_fake.load(std::memory_order_relaxed)) {
    return std::atomic_ref<std::int64_t>(*fake).load(std::memory_order_relaxed);
  }
  timespec ts;
  clock_gettime(id, &ts);
  return std::int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}
}  // namespace

std::int64_t now_ms() noexcept { return read_ms(CLOCK_MONOTONIC); }

std::int64_t coarse_ms() noexcept { return read_ms(CLOCK_MONOTONIC_COARSE); }

Coarse coarse() noexcept {
  timespec mono, real;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &mono);
  clock_gettime(CLOCK_REALTIME_COARSE, &real);
  Coarse c;
  c.gap_ns = (std::int64_t(mono.tv_sec) - std::int64_t(real.tv_sec)) * 1'000'000'000 +
             (std::int64_t(mono.tv_nsec) - std::int64_t(real.tv_nsec));
  if (std::int64_t* fake = g_fake.load(std::memory_order_relaxed)) {
    c.ms = std::atomic_ref<std::int64_t>(*fake).load(std::memory_order_relaxed);
  } else {
    c.ms = std::int64_t(mono.tv_sec) * 1000 + mono.tv_nsec / 1000000;
  }
  return c;
}

std::uint64_t unix_ms() noexcept {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return std::uint64_t(ts.tv_sec) * 1000 + std::uint64_t(ts.tv_nsec) / 1000000;
}

void set_fake_for_testing(std::int64_t* fake_ms) noexcept {
  g_fake.store(fake_ms, std::memory_order_relaxed);
}

}  // namespace hostcache::clock
