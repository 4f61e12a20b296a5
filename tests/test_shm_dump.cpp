// shm-dump, run for real: what it shows, its filters, --json parsed back,
// --check, and its behaviour on segments that are corrupt, whose stripe lock
// another process holds, or that other processes are writing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "arena.h"
#include "cache_impl.h"
#include "stripe_lock.h"
#include "tools_test_support.h"

namespace hostcache {
namespace {

using namespace tools_testing;
using nlohmann::json;

// ---- shm-dump --------------------------------------------------------------------

TEST(ShmDump, ShowsHeaderStripesStatsAndEntries) {
  Populated p;
  Result r = dump(p.name.name);
  ASSERT_EQ(r.code, 0) << show(r);
  const std::string version = "layout    version " + std::to_string(layout::kLayoutVersion);
  for (const char* word :
       {version.c_str(), "capacity  1.0 MiB: 2 stripes", "global generation", "fill",
        "hit ratio", "entries   4 shown", "meta:user:1", "{\"age\":42,\"id\":1}", "model:user@",
        "stale", "(now ", "bin\\x00\\xff", "hello world"}) {
    EXPECT_TRUE(has(r.out, word)) << "missing '" << word << "' in:\n" << r.out;
  }
  r = dump(p.name.name, "--stripes");
  EXPECT_TRUE(has(r.out, "stripe  entries")) << r.out;
  r = dump(p.name.name, "--width", "12");
  EXPECT_TRUE(has(r.out, "...")) << r.out;

  EXPECT_TRUE(has(dump(p.name.name, "--prefix", "meta:").out, "entries   2 shown"));
  EXPECT_TRUE(has(dump(p.name.name, "--tag", "model:user").out, "entries   2 shown"));
  EXPECT_TRUE(has(dump(p.name.name, "--state", "stale").out, "entries   1 shown"));
  EXPECT_TRUE(has(dump(p.name.name, "--limit", "1").out, "entries   1 shown"));
  EXPECT_EQ(dump(p.name.name, "--state", "weird").code, 2);
  EXPECT_EQ(dump("no-such-segment-here").code, 3);
  EXPECT_EQ(dump().code, 2);
}

TEST(ShmDump, JsonIsOneParsableDocument) {
  Populated p;
  Result r = dump(p.name.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  const json doc = json::parse(r.out);
  EXPECT_EQ(doc["segment"]["name"], p.name.name);
  EXPECT_EQ(doc["segment"]["stripes"], 2);
  EXPECT_EQ(doc["stripes"].size(), 2u);
  EXPECT_TRUE(doc["problems"].empty());
  std::map<std::string, json> by_key;
  for (const json& e : doc["entries"]) by_key[e["key"]] = e;
  ASSERT_EQ(by_key.size(), 4u);
  EXPECT_EQ(by_key["meta:user:1"]["value_encoding"], "msgpack");
  EXPECT_EQ(by_key["meta:user:1"]["value"]["age"], 42);
  EXPECT_EQ(by_key["meta:user:1"]["state"], "valid");
  EXPECT_EQ(by_key["meta:user:1"]["tags"][0]["name"], "model:user");
  EXPECT_EQ(by_key["raw:1"]["value_encoding"], "base64");  // not UTF-8
  EXPECT_EQ(by_key["raw:1"]["value"], "YmluAP8=");           // b i n \0 \xff
  EXPECT_EQ(by_key["text:1"]["value_encoding"], "text");
  EXPECT_EQ(by_key["text:1"]["value"], "hello world");
  EXPECT_EQ(by_key["meta:group:1"]["state"], "stale");
  EXPECT_GT(by_key["text:1"]["ttl_left_ms"].get<std::int64_t>(), 0);

  r = dump(p.name.name, "--check", "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(json::parse(r.out)["ok"], true);
}

TEST(ShmDump, CheckFailsOnADamagedEntry) {
  Populated p;
  EXPECT_EQ(dump(p.name.name, "--check").code, 0);
  Segment& seg = detail::Access::segment(p.cache);
  for (std::uint32_t s = 0; s < seg.geometry().stripe_count; ++s) {
    auto& h = *reinterpret_cast<layout::StripeHeader*>(seg.stripe_base(s));
    if (h.entries == 0) continue;
    const auto v = arena::StripeView::over(seg.stripe_base(s), seg.geometry());
    v.arena[h.tail + layout::kHeaderBytes] ^= 1;  // the first entry's key
    break;
  }
  Result r = dump(p.name.name, "--check");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.out, "checksum")) << r.out;
  r = dump(p.name.name);
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "problems") && has(r.out, "checksum")) << r.out;
}

// Copies of a populated segment with garbage written over their stripes
// (through a writable mapping of the file): the tools report, never crash.
TEST(ShmDump, SurvivesGarbageCopies) {
  Populated p;
  for (int i = 0; i < 200; ++i) p.cache.set("fill:" + std::to_string(i), std::string(i % 90, 'f'));
  std::string image;
  {
    std::ifstream in(p.path(), std::ios::binary);
    image.assign(std::istreambuf_iterator<char>(in), {});
  }
  const Geometry g = detail::Access::segment(p.cache).geometry();
  std::mt19937_64 rng(7);
  for (int round = 0; round < 12; ++round) {
    testing::ScopedName copy{"garbage"};
    const std::string path = "/dev/shm/hostcache." + copy.name;
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, image.data(), image.size()), ssize_t(image.size()));
    auto* base = static_cast<std::uint8_t*>(
        ::mmap(nullptr, image.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    ASSERT_NE(base, MAP_FAILED);
    std::uint8_t* stripes = base + g.stripes_off;
    const std::uint64_t span = std::uint64_t(g.stripe_count) * g.stripe_bytes;
    if (round < 4) {
      for (std::uint64_t i = 0; i < span; ++i) stripes[i] = std::uint8_t(rng());  // all garbage
    } else if (round < 9) {
      for (int k = 0; k < 40; ++k) stripes[rng() % span] = std::uint8_t(rng());  // a few bytes
    } else if (round == 9) {
      // Tag generations, stats, flight and method slots: all garbage, header intact.
      for (std::uint64_t i = sizeof(layout::Header); i < g.stripes_off; ++i)
        base[i] = std::uint8_t(rng());
    } else {
      for (std::uint64_t i = 0; i < g.stripes_off; ++i)
        base[i] ^= std::uint8_t(rng() | 1);  // header
    }
    ::munmap(base, image.size());
    for (const Result& r : {dump(copy.name), dump(copy.name, "--json"), dump(copy.name, "--check"),
                            hc("stats", copy.name)}) {
      EXPECT_LT(r.code, 5) << "round " << round << " " << show(r);  // an exit, not a signal
    }
    if (round < 4) EXPECT_EQ(dump(copy.name, "--check").code, 1);
    if (round == 9) EXPECT_EQ(dump(copy.name).code, 0);
    if (round >= 10) EXPECT_EQ(dump(copy.name).code, 3);
  }
}

TEST(ShmDump, FinishesWhileAnotherProcessHoldsAStripeLock) {
  Populated p;
  testing::Gate locked, release;
  pid_t child = testing::spawn([&] {
    auto seg = Segment::attach(p.name.name, false, Segment::Access::read_write);
    auto& h = *reinterpret_cast<layout::StripeHeader*>(seg->stripe_base(0));
    // The stripe lock word (stripe_lock.h), taken as a writer would.
    if (!stripe_lock::lock(h, std::chrono::steady_clock::now() + std::chrono::seconds(5)).acquired) {
      return 1;
    }
    locked.open();
    release.wait();
    stripe_lock::unlock(h);
    return 0;
  });
  locked.wait();
  Result r = dump(p.name.name);
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "entries   4 shown")) << r.out;
  EXPECT_EQ(dump(p.name.name, "--check").code, 0);
  EXPECT_EQ(hc("stats", p.name.name).code, 0);
  release.open();
  EXPECT_EQ(testing::wait_for(child), 0);
}

TEST(ShmDump, RunsUnderLiveWriteLoad) {
  testing::ScopedName n{"tools"};
  Cache cache = Cache::open(testing::small_config(n.name, 2u << 20, 8));
  struct Shared {
    std::atomic<int> stop;
    std::atomic<std::uint64_t> sets[2];
  };
  auto* shared = new (testing::shared_memory(sizeof(Shared))) Shared{};
  std::vector<pid_t> writers;
  for (int w = 0; w < 2; ++w) {
    writers.push_back(testing::spawn([&, w] {
      Cache c = Cache::attach(n.name);
      std::mt19937 rng(w);
      const std::string tag = "w" + std::to_string(w);  // outlives the string_view in tagged
      SetOptions tagged{std::chrono::minutes(1), {tag}};
      while (!shared->stop.load(std::memory_order_relaxed)) {
        if (c.set("k" + std::to_string(rng() % 5000), std::string(rng() % 300, 'x'), tagged) !=
            Errc::ok) {
          return 1;
        }
        c.get("k" + std::to_string(rng() % 5000));
        shared->sets[w].fetch_add(1, std::memory_order_relaxed);
      }
      return 0;
    }));
  }
  ASSERT_TRUE(await_progress(shared->sets, writers, 2000)) << "a writer exited early";
  for (int round = 0; round < 3; ++round) {
    Result r = dump(n.name);
    EXPECT_EQ(r.code, 0) << show(r);
    r = dump(n.name, "--json", "--limit", "50");
    ASSERT_EQ(r.code, 0) << show(r);
    EXPECT_NO_THROW(json::parse(r.out));
    r = hc("stats", n.name, "--json");
    ASSERT_EQ(r.code, 0) << show(r);
    EXPECT_GT(json::parse(r.out)["stats"]["sets"].get<std::uint64_t>(), 0u);
  }
  shared->stop.store(1);
  for (pid_t w : writers) EXPECT_EQ(testing::wait_for(w), 0);
  EXPECT_EQ(dump(n.name, "--check").code, 0);
}

}  // namespace
}  // namespace hostcache
