// Sealed mode (issue 11, item 7): a prefork master's memfd segment, sealed
// against shrinking and growing, used by its forked workers, reachable by
// others only through the master's pid. Nobody can truncate it under them.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "cache_impl.h"
#include "segment.h"
#include "test_support.h"

namespace hostcache {
namespace {

Config sealed_config(const std::string& name) {
  Config c = testing::small_config(name);
  c.sealed = true;
  return c;
}

// The /proc path of the master's memfd, as another process would find it.
std::string memfd_path(pid_t pid, const std::string& name) {
  const std::string want = "/memfd:hostcache." + name + " (deleted)";
  for (int fd = 0; fd < 1024; ++fd) {
    const std::string p = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
    char buf[512];
    const ssize_t n = ::readlink(p.c_str(), buf, sizeof buf - 1);
    if (n > 0 && std::string(buf, std::size_t(n)) == want) return p;
  }
  return "";
}

TEST(Sealed, WorkersShareItAndNobodyCanShrinkIt) {
  const std::string name = testing::unique_name("sealed");
  Cache master = Cache::open(sealed_config(name));
  EXPECT_TRUE(detail::Access::segment(master).sealed());
  struct stat st;
  EXPECT_NE(::stat(Segment::path_of(name).c_str(), &st), 0) << "a sealed segment has no name in /dev/shm";
  ASSERT_EQ(master.set("from-master", "m"), Errc::ok);
  // Forked workers use the master's mapping.
  const auto statuses = testing::run_children(3, [&](int w) {
    if (master.get("from-master").value_or("") != "m") return 1;
    return master.set("w" + std::to_string(w), "v") == Errc::ok ? 0 : 2;
  });
  for (int s : statuses) EXPECT_EQ(s, 0);
  for (int w = 0; w < 3; ++w) EXPECT_EQ(master.get("w" + std::to_string(w)).value_or(""), "v");
  // Another process reaches it through the master's pid, and cannot shrink it.
  const pid_t me = ::getpid();
  const int other = testing::wait_for(testing::spawn([&] {
    Cache c = Cache::attach_pid(std::uint32_t(me), name);
    if (c.get("w1").value_or("") != "v") return 1;
    if (c.set("from-other", "o") != Errc::ok) return 2;
    const std::string path = memfd_path(me, name);
    if (path.empty()) return 3;
    const int fd = ::open(path.c_str(), O_RDWR);
    if (fd < 0) return 4;
    if (::ftruncate(fd, 0) == 0) return 5;  // must be refused: EPERM by the seal
    if (errno != EPERM) return 6;
    ::close(fd);
    return 0;
  }));
  EXPECT_EQ(other, 0);
  EXPECT_EQ(master.get("from-other").value_or(""), "o");
  EXPECT_EQ(master.get("from-master").value_or(""), "m");
}

TEST(Sealed, AttachByPidRefusesWhatIsNotThere) {
  const std::string name = testing::unique_name("sealed2");
  try {
    Cache::attach_pid(std::uint32_t(::getpid()), name);
    ADD_FAILURE() << "attached to a sealed segment that does not exist";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::not_found) << e.what();
  }
  const pid_t gone = testing::spawn([] { return 0; });
  ASSERT_EQ(testing::wait_for(gone), 0);
  EXPECT_THROW(Cache::attach_pid(std::uint32_t(gone), name), Error);
}

}  // namespace
}  // namespace hostcache
