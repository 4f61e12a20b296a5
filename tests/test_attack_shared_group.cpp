// Issue 11's attacker, as the README's own way of sharing a cache invites
// one: root's segment is mode 0660 with a group that `nobody` is in; nobody
// maps it read-write and does everything a writer can (forge live owners in
// every stripe lock, rewrite the header's counts and limits, scribble the
// flight and method slots, fill the outbox) while root's processes keep
// using it. Root must never crash or wait unboundedly: only misses, busy
// answers, errors and repairs. (Shrinking the segment is the one thing that
// kills: SIGBUS, documented; Config::sealed rules it out.)
#include <gtest/gtest.h>
#include <hostcache/memoize.h>

#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "cache_impl.h"
#include "layout.h"
#include "segment.h"
#include "stripe_lock.h"
#include "test_support.h"

namespace hostcache {
namespace {

using namespace std::chrono_literals;

TEST(SharedGroupAttacker, NobodyInTheGroupCannotCrashOrHangRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create a second user's process";
  testing::ScopedName name("grp");
  Config c = testing::small_config(name.name, 2u << 20, 4);
  c.mode = 0660;
  c.lock_timeout = 100ms;
  c.allow_foreign = true;  // a group-writable segment is wider than 0600: root asks for it knowingly
  Cache cache = Cache::open(c);
  const std::string path = Segment::path_of(name.name);
  ASSERT_EQ(::chown(path.c_str(), 0, 65534), 0);  // group nogroup; nobody is made a member below
  for (int i = 0; i < 200; ++i) ASSERT_EQ(cache.set("k" + std::to_string(i), "v"), Errc::ok);

  testing::Gate go;
  int done[2];
  ASSERT_EQ(::pipe(done), 0);
  const pid_t attacker = testing::spawn([&] {
    const gid_t groups[] = {65534};
    if (::setgroups(1, groups) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) return 11;
    const int fd = ::open(path.c_str(), O_RDWR);  // by the group's permission
    if (fd < 0) return 12;
    const Geometry& g = detail::Access::segment(cache).geometry();
    auto* base = static_cast<std::uint8_t*>(::mmap(nullptr, g.segment_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    if (base == MAP_FAILED) return 13;
    auto* h = reinterpret_cast<layout::Header*>(base);
    // Every stripe lock names a live thread (ours), every sequence odd.
    const std::uint64_t me = stripe_lock::self_word();
    for (std::uint32_t i = 0; i < g.stripe_count; ++i) {
      auto* sh = reinterpret_cast<layout::StripeHeader*>(base + g.stripes_off + std::uint64_t(i) * g.stripe_bytes);
      std::atomic_ref<std::uint64_t>(sh->lock).store(me);
      std::atomic_ref<std::uint64_t>(sh->seq).fetch_or(1);
    }
    // Counts and limits that would send a reader of the live header astray.
    h->flight_slots = 0x40000000;
    h->method_slots = 0xffffffff;
    h->max_key_bytes = 1u << 20;
    h->stripe_count = 1024;
    // Flight slots held "forever" by a live pid; method slots stuck naming.
    auto* flights = reinterpret_cast<layout::FlightSlot*>(base + g.flights_off);
    for (std::uint32_t i = 0; i < g.flight_slots; ++i) {
      flights[i].word = 2;
      flights[i].owner_pid = 1;
      flights[i].lease_until_ms = INT64_MAX;
    }
    auto* methods = reinterpret_cast<layout::MethodSlot*>(base + g.methods_off);
    for (std::uint32_t i = 0; i < g.method_slots; ++i) methods[i].claimed = (1u << 2) | 1;  // "pid 1 naming"
    go.open();
    char ch;
    return ::read(done[0], &ch, 1) == 1 ? 0 : 14;  // stays alive: its forged owner word stays "live"
  });
  go.wait();
  // Root's workers use the segment meanwhile: every call returns, none crashes.
  const auto statuses = testing::run_children(3, [&](int w) {
    const auto t0 = std::chrono::steady_clock::now();
    std::string v;
    int computed = 0;
    for (int i = 0; i < 20; ++i) {
      const std::string k = "k" + std::to_string(i * 3 + w);
      (void)cache.get(k, v);
      const Errc e = cache.set(k, "w");
      if (e != Errc::ok && e != Errc::busy) return 2;
      ComputeOptions o;
      o.lease = 200ms;
      o.method = "extract";
      computed += get_or_compute<int>(cache, "m" + k, [] { return 7; }, o) == 7;
    }
    const auto took = std::chrono::steady_clock::now() - t0;
    if (computed != 20) return 3;
    return took < 60s ? 0 : 4;  // bounded by the timeouts and leases, not by the attacker
  });
  for (int s : statuses) EXPECT_EQ(s, 0);
  char ch = 1;
  ASSERT_EQ(::write(done[1], &ch, 1), 1);
  EXPECT_EQ(testing::wait_for(attacker), 0);
  // The attacker is gone: its forged owners are dead, the next locker takes
  // each stripe over and repairs it.
  EXPECT_EQ(cache.set("after", "ok"), Errc::ok);
  EXPECT_EQ(cache.get("after").value_or(""), "ok");
}

}  // namespace
}  // namespace hostcache
