// The tools, run as real binaries (paths from CMake): every hostcache
// subcommand's happy path and exit codes, shm-dump's output, --json parsed
// back, save/load, and both tools on segments that are corrupt, locked by
// another process, or under live write load.
#include <hostcache/inspect.h>

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "arena.h"
#include "cache_impl.h"
#include "test_support.h"

namespace hostcache {
namespace {

using nlohmann::json;

struct Result {
  int code = -1;  // exit status, or 128 + signal
  std::string out, err;
};

std::string slurp(int fd) {
  std::string s;
  ::lseek(fd, 0, SEEK_SET);
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, std::size_t(n));
  ::close(fd);
  return s;
}

// Runs a binary with stdout and stderr captured in memory files (no pipe to
// fill up), and waits for it.
Result run(const char* bin, const std::vector<std::string>& args) {
  int out = ::memfd_create("out", 0), err = ::memfd_create("err", 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv{const_cast<char*>(bin)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin, argv.data());
    ::_exit(127);
  }
  Result r;
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

template <class... A>
Result hc(A&&... a) {
  return run(HOSTCACHE_BIN, {std::string(a)...});
}
template <class... A>
Result dump(A&&... a) {
  return run(SHM_DUMP_BIN, {std::string(a)...});
}

std::string show(const Result& r) {
  return "exit " + std::to_string(r.code) + "\nstdout:\n" + r.out + "stderr:\n" + r.err;
}

bool has(const std::string& text, const std::string& word) { return text.find(word) != std::string::npos; }

// A segment with a little of everything: msgpack and raw values, tags, a
// stale entry and an expired one.
struct Populated {
  testing::ScopedName name{"tools"};
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 2));
  Populated() {
    SetOptions user{std::chrono::minutes(30), {"model:user"}};
    SetOptions group{std::chrono::minutes(30), {"model:group"}};
    EXPECT_EQ(cache.put("meta:user:1", std::map<std::string, int>{{"age", 42}, {"id", 1}}, user),
              Errc::ok);
    EXPECT_EQ(cache.set("raw:1", std::string("bin\x00\xff", 5), user), Errc::ok);
    EXPECT_EQ(cache.set("text:1", "hello world"), Errc::ok);
    EXPECT_EQ(cache.set("meta:group:1", "gone", group), Errc::ok);
    cache.invalidate("model:group");
  }
  std::string path() const { return "/dev/shm/hostcache." + name.name; }
};

std::map<std::string, inspect::EntryInfo> valid_entries(const std::string& name) {
  inspect::Filter f;
  f.state = inspect::EntryState::valid;
  std::map<std::string, inspect::EntryInfo> out;
  for (auto& e : inspect::read(name, f).entries) out[e.key] = e;
  return out;
}

// ---- hostcache ----------------------------------------------------------------

TEST(HostcacheTool, CreateListStatsRemove) {
  testing::ScopedName n{"tools"};
  Result r = hc("create", n.name, "--capacity", "1M", "--stripes", "2", "--max-value", "64K");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "created " + n.name));
  r = hc("create", n.name, "--capacity", "1M", "--max-value", "64K");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.err, n.name) && has(r.err, "already exists")) << r.err;

  r = hc("list");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, n.name));
  r = hc("list", "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  bool listed = false;
  for (const json& s : json::parse(r.out)) {
    if (s["name"] == n.name) {
      listed = true;
      EXPECT_EQ(s["bytes"], 1u << 20);
      EXPECT_EQ(s["mode"], 0600);
    }
  }
  EXPECT_TRUE(listed);

  ASSERT_EQ(hc("set", n.name, "k", "v").code, 0);
  ASSERT_EQ(hc("get", n.name, "k").code, 0);
  ASSERT_EQ(hc("get", n.name, "absent").code, 1);
  r = hc("stats", n.name);
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "hit ratio") && has(r.out, "50.0%")) << r.out;
  r = hc("stats", n.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  const json stats = json::parse(r.out);
  EXPECT_EQ(stats["stats"]["hits"], 1);
  EXPECT_EQ(stats["stats"]["misses"], 1);
  EXPECT_EQ(stats["stats"]["sets"], 1);
  EXPECT_EQ(stats["segment"]["stripes"], 2);
  r = hc("stats", n.name, "--prometheus");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "# TYPE hostcache_hits_total counter"));
  EXPECT_TRUE(has(r.out, "hostcache_hits_total{segment=\"" + n.name + "\"} 1\n")) << r.out;
  r = hc("stats", n.name, "--json", "--watch", "10ms", "--count", "3");
  ASSERT_EQ(r.code, 0) << show(r);
  std::istringstream lines(r.out);
  int documents = 0;
  for (std::string line; std::getline(lines, line); ++documents) EXPECT_NO_THROW(json::parse(line));
  EXPECT_EQ(documents, 3);
  r = hc("stats", n.name, "--watch", "10ms", "--count", "2");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "/s")) << r.out;  // the second table shows rates

  EXPECT_EQ(hc("remove", n.name).code, 0);
  r = hc("remove", n.name);
  EXPECT_EQ(r.code, 3) << show(r);
  r = hc("stats", n.name);
  EXPECT_EQ(r.code, 3) << show(r);
  EXPECT_TRUE(has(r.err, n.name)) << r.err;
}

TEST(HostcacheTool, SetGetEraseAndTheirErrors) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(hc("set", n, "k", "value one", "--ttl", "10m", "--tag", "a", "--tag", "b").code, 0);
  Result r = hc("get", n, "k");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(r.out, "value one\n");
  EXPECT_EQ(hc("get", n, "k", "--raw").out, "value one");
  const auto entries = valid_entries(n);
  ASSERT_EQ(entries.at("k").tags.size(), 2u);
  EXPECT_GT(entries.at("k").ttl_left_ms, 9 * 60 * 1000);

  r = hc("get", n, "nope");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.err, n) && has(r.err, "not found")) << r.err;
  EXPECT_EQ(hc("erase", n, "k").code, 0);
  EXPECT_EQ(hc("erase", n, "k").code, 1);
  EXPECT_EQ(hc("get", n, "k").code, 1);

  EXPECT_EQ(hc("set", n, "k", "v", "--ttl", "0").code, 2);
  EXPECT_EQ(hc("set", n, "k", "v", "--ttl", "soon").code, 2);
  EXPECT_EQ(hc("set", n, std::string(2000, 'k'), "v").code, 2);
  EXPECT_EQ(hc("set", n, "k", std::string(70000, 'v')).code, 2);
  EXPECT_EQ(hc("set", n, "k", "v", "--tag", "1", "--tag", "2", "--tag", "3", "--tag", "4", "--tag", "5")
                .code,
            2);
  EXPECT_EQ(hc("set", n, "k", "v", "--tag", "").code, 2);
  EXPECT_EQ(hc("get", n, "k").code, 1) << "a refused set wrote something";
  EXPECT_EQ(hc("get", "no-such-segment-here", "k").code, 3);
  EXPECT_EQ(hc("get", "bad/name", "k").code, 2);
}

TEST(HostcacheTool, ClearAndInvalidate) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(hc("get", n, "meta:user:1").code, 0);
  Result r = hc("invalidate", n, "model:user", "model:other");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(hc("get", n, "meta:user:1").code, 1);
  EXPECT_EQ(hc("get", n, "raw:1").code, 1);
  EXPECT_EQ(hc("get", n, "text:1").code, 0);
  EXPECT_EQ(hc("clear", n).code, 0);
  EXPECT_EQ(hc("get", n, "text:1").code, 1);
  EXPECT_EQ(hc("invalidate", n).code, 2);  // TAG is required
  EXPECT_EQ(hc("clear", "no-such-segment-here").code, 3);
}

TEST(HostcacheTool, UsageAndHelp) {
  EXPECT_EQ(hc().code, 2);
  EXPECT_EQ(hc("frobnicate").code, 2);
  EXPECT_EQ(hc("get").code, 2);
  EXPECT_EQ(hc("stats", "x", "--count", "3").code, 2);  // --count needs --watch
  EXPECT_EQ(hc("create", "x", "--capacity", "lots").code, 2);
  EXPECT_EQ(hc("create", "x", "--mode", "999").code, 2);
  for (const char* cmd : {"stats", "clear", "invalidate", "get", "set", "erase", "create", "remove",
                          "list", "save", "load"}) {
    Result r = hc(cmd, "--help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_TRUE(has(r.out, "Example:\n  hostcache " + std::string(cmd))) << r.out;
  }
  Result r = dump("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "Examples:"));
}

TEST(HostcacheTool, PermissionDenied) {
  Populated p;
  // As root, another owner; otherwise no permission bits at all.
  if (::geteuid() == 0) {
    ASSERT_EQ(::chown(p.path().c_str(), 65534, 65534), 0);
  } else {
    ASSERT_EQ(::chmod(p.path().c_str(), 0), 0);
  }
  Result r = hc("get", p.name.name, "text:1");
  EXPECT_EQ(r.code, 4) << show(r);
  EXPECT_TRUE(has(r.err, p.name.name)) << r.err;
  if (::geteuid() == 0) {
    EXPECT_EQ(hc("get", p.name.name, "text:1", "--allow-foreign").code, 0);
  } else {
    EXPECT_EQ(dump(p.name.name).code, 4);
  }
}

TEST(HostcacheTool, SaveThenLoadIntoAFreshSegment) {
  Populated p;
  for (int i = 0; i < 200; ++i) {
    SetOptions o{std::chrono::minutes(5), {"bulk", "t" + std::to_string(i % 3)}};
    ASSERT_EQ(p.cache.set("bulk:" + std::to_string(i), std::string(i, char(i)), o), Errc::ok);
  }
  const std::string file = ::testing::TempDir() + "/snap-" + p.name.name;
  Result r = hc("save", p.name.name, file);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "saved 203 entries")) << r.out;  // not the stale one

  testing::ScopedName fresh{"tools"};
  ASSERT_EQ(hc("create", fresh.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  r = hc("load", fresh.name, file);
  ASSERT_EQ(r.code, 0) << show(r);
  const auto before = valid_entries(p.name.name);
  const auto after = valid_entries(fresh.name);
  ASSERT_EQ(after.size(), before.size());
  for (const auto& [key, e] : before) {
    ASSERT_TRUE(after.count(key)) << key;
    const inspect::EntryInfo& l = after.at(key);
    EXPECT_EQ(l.value, e.value) << key;
    ASSERT_EQ(l.tags.size(), e.tags.size()) << key;
    for (std::size_t t = 0; t < e.tags.size(); ++t) EXPECT_EQ(l.tags[t].name, e.tags[t].name);
    EXPECT_LE(l.ttl_left_ms, e.ttl_left_ms + 1000) << key;  // remaining TTL, not a fresh one
  }
  // Tags still work after the trip.
  EXPECT_EQ(hc("invalidate", fresh.name, "t1").code, 0);
  EXPECT_EQ(valid_entries(fresh.name).size(), before.size() - 67);
  std::remove(file.c_str());
}

TEST(HostcacheTool, DamagedSnapshotsLoadNothing) {
  Populated p;
  const std::string file = ::testing::TempDir() + "/snap-" + p.name.name;
  ASSERT_EQ(hc("save", p.name.name, file).code, 0);
  std::string good;
  {
    std::ifstream in(file, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
  }
  testing::ScopedName fresh{"tools"};
  ASSERT_EQ(hc("create", fresh.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  auto try_load = [&](const std::string& bytes) {
    std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
    return hc("load", fresh.name, file);
  };
  std::vector<std::string> bad = {"", good.substr(0, good.size() - 1), good.substr(0, 40),
                                  good + "x", "not a snapshot at all, just some text here"};
  for (std::size_t at : {std::size_t(0), std::size_t(9), std::size_t(20), good.size() / 2, good.size() - 3}) {
    std::string flipped = good;
    flipped[at] ^= 0x20;
    bad.push_back(flipped);
  }
  for (const std::string& b : bad) {
    Result r = try_load(b);
    EXPECT_EQ(r.code, 1) << show(r);
    EXPECT_TRUE(has(r.err, "nothing loaded")) << r.err;
    EXPECT_TRUE(valid_entries(fresh.name).empty()) << "a damaged snapshot loaded entries";
  }
  Result r = hc("load", fresh.name, file + ".missing");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(try_load(good).out, "loaded 3 entries"));
  std::remove(file.c_str());
}

// ---- shm-dump --------------------------------------------------------------------

TEST(ShmDump, ShowsHeaderStripesStatsAndEntries) {
  Populated p;
  Result r = dump(p.name.name);
  ASSERT_EQ(r.code, 0) << show(r);
  for (const char* word : {"layout    version 1", "capacity  1.0 MiB: 2 stripes", "global generation",
                           "fill", "hit ratio", "entries   4 shown", "meta:user:1", "{\"age\":42,\"id\":1}",
                           "model:user@", "stale", "(now ", "bin\\x00\\xff", "hello world"}) {
    EXPECT_TRUE(has(r.out, word)) << "missing '" << word << "' in:\n" << r.out;
  }
  r = dump(p.name.name, "--stripes");
  EXPECT_TRUE(has(r.out, "stripe  entries")) << r.out;
  r = dump(p.name.name, "--width", "30");
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
  EXPECT_EQ(by_key["raw:1"]["value_encoding"], "escaped");
  EXPECT_EQ(by_key["raw:1"]["value"], "bin\\x00\\xff");
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
      for (std::uint64_t i = sizeof(layout::Header); i < g.stripes_off; ++i) base[i] = std::uint8_t(rng());
    } else {
      for (std::uint64_t i = 0; i < g.stripes_off; ++i) base[i] ^= std::uint8_t(rng() | 1);  // header
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
    if (pthread_mutex_lock(&h.lock) != 0) return 1;
    locked.open();
    release.wait();
    pthread_mutex_unlock(&h.lock);
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
      SetOptions tagged{std::chrono::minutes(1), {"w" + std::to_string(w)}};
      while (!shared->stop.load(std::memory_order_relaxed)) {
        if (c.set("k" + std::to_string(rng() % 5000), std::string(rng() % 300, 'x'), tagged) != Errc::ok) {
          return 1;
        }
        c.get("k" + std::to_string(rng() % 5000));
        shared->sets[w].fetch_add(1, std::memory_order_relaxed);
      }
      return 0;
    }));
  }
  while (shared->sets[0].load() < 2000 || shared->sets[1].load() < 2000) sched_yield();
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
