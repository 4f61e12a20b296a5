// The segment: names, creation, permissions, validation on attach (a segment
// that lies is a clear error, never a crash), the creation race.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "layout.h"
#include "segment.h"
#include "test_support.h"

namespace hostcache {
namespace {

using testing::ScopedName;

Errc open_error(const Config& c) {
  try {
    Cache::open(c);
  } catch (const Error& e) {
    return e.code();
  }
  return Errc::ok;
}

Errc attach_error(const std::string& name) {
  try {
    Cache::attach(name);
  } catch (const Error& e) {
    return e.code();
  }
  return Errc::ok;
}

// Maps the segment's object writable, to play the attacker.
struct RawSegment {
  explicit RawSegment(const std::string& name) {
    fd = ::open(Segment::path_of(name).c_str(), O_RDWR);
    struct stat st;
    ::fstat(fd, &st);
    size = std::size_t(st.st_size);
    base = static_cast<std::uint8_t*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  }
  ~RawSegment() {
    ::munmap(base, size);
    ::close(fd);
  }
  layout::Header* header() { return reinterpret_cast<layout::Header*>(base); }
  int fd;
  std::size_t size;
  std::uint8_t* base;
};

TEST(Segment, NamesAreValidated) {
  for (std::string bad : std::vector<std::string>{"", "a/b", "../x", "sp ace", "é", ".", "..", std::string(201, 'n')}) {
    Config c = testing::small_config(bad);
    EXPECT_EQ(open_error(c), Errc::invalid_name) << bad;
    EXPECT_EQ(attach_error(bad), Errc::invalid_name) << bad;
  }
  ScopedName ok("Name_with-all.chars");
  EXPECT_NO_THROW(Cache::open(testing::small_config(ok.name)));
}

TEST(Segment, ConfigIsValidated) {
  ScopedName name("cfg");
  Config c = testing::small_config(name.name);
  c.capacity_bytes = 64 << 10;
  EXPECT_EQ(open_error(c), Errc::capacity_too_small);
  c = testing::small_config(name.name, 1 << 20);
  c.max_value_bytes = 1 << 20;  // one value larger than a stripe
  EXPECT_EQ(open_error(c), Errc::capacity_too_small);
  c = testing::small_config(name.name);
  c.stripes = 3;
  EXPECT_EQ(open_error(c), Errc::invalid_config);
  c = testing::small_config(name.name);
  c.mode = 01777;
  EXPECT_EQ(open_error(c), Errc::invalid_config);
  c = testing::small_config(name.name);
  c.default_ttl = std::chrono::milliseconds(0);
  EXPECT_EQ(open_error(c), Errc::invalid_config);
  EXPECT_EQ(attach_error(name.name), Errc::not_found);  // nothing was created
}

TEST(Segment, ModeIsAppliedExactlyWhateverTheUmask) {
  ScopedName name("mode");
  const mode_t old = ::umask(0077);
  Config c = testing::small_config(name.name);
  c.mode = 0640;
  Cache cache = Cache::open(c);
  ::umask(old);
  struct stat st;
  ASSERT_EQ(::stat(Segment::path_of(name.name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
  EXPECT_EQ(st.st_uid, ::geteuid());
}

TEST(Segment, WiderModeOrWorldWritableIsRefusedUnlessAllowed) {
  ScopedName name("wide");
  Cache created = Cache::open(testing::small_config(name.name));
  ASSERT_EQ(::chmod(Segment::path_of(name.name).c_str(), 0666), 0);
  EXPECT_EQ(open_error(testing::small_config(name.name)), Errc::permission_denied);
  EXPECT_EQ(attach_error(name.name), Errc::permission_denied);
  Config c = testing::small_config(name.name);
  c.allow_foreign = true;
  EXPECT_EQ(open_error(c), Errc::ok);
  EXPECT_NO_THROW(Cache::attach(name.name, true));
}

TEST(Segment, AttachToMissingIsNotFound) { EXPECT_EQ(attach_error(testing::unique_name("none")), Errc::not_found); }

TEST(Segment, ValuesAreSharedBetweenHandlesAndSurviveRemove) {
  ScopedName name("share");
  Cache a = Cache::open(testing::small_config(name.name));
  ASSERT_EQ(a.set("k", "v"), Errc::ok);
  Cache b = Cache::attach(name.name);
  EXPECT_EQ(b.get("k").value_or(""), "v");
  EXPECT_TRUE(Cache::remove(name.name));
  EXPECT_FALSE(Cache::remove(name.name));
  // Mapped handles keep working after the name is gone.
  ASSERT_EQ(b.set("k2", "v2"), Errc::ok);
  EXPECT_EQ(a.get("k2").value_or(""), "v2");
  EXPECT_EQ(attach_error(name.name), Errc::not_found);
}

class HostileSegment : public ::testing::Test {
 protected:
  ScopedName name_{"hostile"};
  void SetUp() override {
    Cache c = Cache::open(testing::small_config(name_.name));
    ASSERT_EQ(c.set("k", "v"), Errc::ok);
  }
};

TEST_F(HostileSegment, WrongMagic) {
  RawSegment(name_.name).header()->magic[0] ^= 1;
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
}

TEST_F(HostileSegment, HeaderStuckInitializingIsRefusedNotReinitialized) {
  // Creators publish a segment only once it is whole (link(2) of a complete
  // temporary), so a published header that says "initializing" was not made
  // by this library: refuse it, and leave it for its owner to remove.
  std::memcpy(RawSegment(name_.name).header()->magic, "INITING!", 8);
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
  EXPECT_EQ(open_error(testing::small_config(name_.name)), Errc::corrupt);
  struct stat st;
  EXPECT_EQ(::stat(Segment::path_of(name_.name).c_str(), &st), 0);
}

TEST(Segment, TemporaryOfACreatorKilledBeforePublishingIsSwept) {
  ScopedName name("swept");
  const pid_t dead = testing::spawn([] { return 0; });
  ASSERT_EQ(testing::wait_for(dead), 0);
  const std::string temp = "/dev/shm/hostcache~tmp~" + name.name + "~" + std::to_string(own_pidns()) + "~" +
                           std::to_string(dead) + "~1";
  const int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  Cache cache = Cache::open(testing::small_config(name.name));
  struct stat st;
  EXPECT_NE(::stat(temp.c_str(), &st), 0) << "a dead creator's temporary was left behind";
  EXPECT_EQ(cache.set("k", "v"), Errc::ok);
}

// Issue 11 item 11: a pid of another pid namespace means nothing here; its
// creator may be alive, so its temporary stays.
TEST(Segment, TemporaryOfACreatorInAnotherPidNamespaceIsKept) {
  ScopedName name("kept");
  const pid_t dead = testing::spawn([] { return 0; });
  ASSERT_EQ(testing::wait_for(dead), 0);
  const std::string temp = "/dev/shm/hostcache~tmp~" + name.name + "~" + std::to_string(own_pidns() + 1) + "~" +
                           std::to_string(dead) + "~1";
  const int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  Cache cache = Cache::open(testing::small_config(name.name));
  struct stat st;
  EXPECT_EQ(::stat(temp.c_str(), &st), 0) << "another namespace's temporary was deleted";
  ::unlink(temp.c_str());
}

TEST_F(HostileSegment, LayoutVersionPlusOrMinusOne) {
  {
    RawSegment raw(name_.name);
    raw.header()->layout_version += 1;
  }
  EXPECT_EQ(attach_error(name_.name), Errc::incompatible);
  EXPECT_EQ(open_error(testing::small_config(name_.name)), Errc::incompatible);
  {
    RawSegment raw(name_.name);
    raw.header()->layout_version -= 2;
  }
  EXPECT_EQ(attach_error(name_.name), Errc::incompatible);
}

TEST_F(HostileSegment, FormatStampFromOtherStructSizes) {
  RawSegment(name_.name).header()->format_stamp ^= 0x10;
  EXPECT_EQ(attach_error(name_.name), Errc::incompatible);
}

TEST_F(HostileSegment, GeometryThatOverflowsOrPointsOutside) {
  {
    RawSegment raw(name_.name);
    raw.header()->stripe_bytes = ~std::uint64_t{0} & ~std::uint64_t{63};
  }
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
  {
    RawSegment raw(name_.name);
    raw.header()->stripe_bytes = 4096;
    raw.header()->stripe_count = 1u << 31;
  }
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
}

TEST_F(HostileSegment, StripeRegionPastTheEnd) {
  {
    RawSegment raw(name_.name);
    raw.header()->stripes_off += 64;
  }
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
}

TEST_F(HostileSegment, TruncatedObject) {
  ASSERT_EQ(::truncate(Segment::path_of(name_.name).c_str(), 100), 0);
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
  ASSERT_EQ(::truncate(Segment::path_of(name_.name).c_str(), 1 << 20), 0);
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);  // size disagrees with the header
}

TEST_F(HostileSegment, SymlinkFifoAndDirectoryAreRefused) {
  const std::string path = Segment::path_of(name_.name);
  ScopedName target("target");
  Cache t = Cache::open(testing::small_config(target.name));
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::symlink(Segment::path_of(target.name).c_str(), path.c_str()), 0);
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  EXPECT_EQ(attach_error(name_.name), Errc::corrupt);  // and does not hang
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  EXPECT_NE(attach_error(name_.name), Errc::ok);
  ASSERT_EQ(::rmdir(path.c_str()), 0);
}

TEST(SegmentRace, ThirtyTwoProcessesOpenOneFreshNameAtOnce) {
  ScopedName name("race");
  const Config c = testing::small_config(name.name);
  testing::Gate gate;
  std::vector<pid_t> pids;
  for (int i = 0; i < 32; ++i) {
    pids.push_back(testing::spawn([&, i] {
      gate.wait();
      Cache cache = Cache::open(c);
      // Each writes its own key and must then see everyone's that finished.
      if (cache.set("p" + std::to_string(i), std::to_string(i)) != Errc::ok) return 2;
      return cache.get("p" + std::to_string(i)).value_or("") == std::to_string(i) ? 0 : 3;
    }));
  }
  gate.open();
  for (pid_t p : pids) EXPECT_EQ(testing::wait_for(p), 0);
  // Exactly one of them created it, and no creator's temporary is left over.
  auto seg = Segment::attach(name.name, false, Segment::Access::read_only);
  EXPECT_NE(std::find(pids.begin(), pids.end(), pid_t(seg->header()->creator_pid)), pids.end());
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
    EXPECT_EQ(e.path().filename().string().find("hostcache~tmp~" + name.name + "~"), std::string::npos);
  }
  Cache cache = Cache::attach(name.name);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(cache.get("p" + std::to_string(i)).value_or(""), std::to_string(i));
  EXPECT_EQ(cache.stats().sets, 32u);
}

}  // namespace
}  // namespace hostcache
