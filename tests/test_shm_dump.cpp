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

#include <hostcache/outbox.h>

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


// ---- namespaces, compression and the relay (issues 12 and 14) --------------------

std::string compressible(std::size_t n) {
  std::string v;
  while (v.size() < n) v += "metadata_field_" + std::to_string(v.size() % 7) + ";";
  return v.substr(0, n);
}

struct WithNamespacesAndCompression {
  testing::ScopedName name{"tools"};
  Cache cache = [this] {
    Config c = testing::small_config(name.name, 1u << 20, 2);
    c.compress_min_bytes = 256;
    return Cache::open(c);
  }();
  std::string big = compressible(4000);
  WithNamespacesAndCompression() {
    EXPECT_EQ(cache.set("z:big", big, SetOptions{std::chrono::minutes(5), {"t"}, "django"}), Errc::ok);
    EXPECT_EQ(cache.set("d:1", "one", SetOptions{std::chrono::minutes(5), {}, "django"}), Errc::ok);
    EXPECT_EQ(cache.set("d:2", "two", SetOptions{std::chrono::minutes(5), {}, "django"}), Errc::ok);
    EXPECT_EQ(cache.set("o:1", "other", SetOptions{kNoExpiry, {}, "other"}), Errc::ok);
    EXPECT_EQ(cache.set("plain", "none"), Errc::ok);
    EXPECT_EQ(cache.set("o:2", "gone", SetOptions{std::chrono::minutes(5), {}, "other"}), Errc::ok);
    EXPECT_GT(cache.stats().compressed_in, cache.stats().compressed_out);
  }
};

TEST(ShmDump, ShowsNamespacesAndCompressedEntries) {
  WithNamespacesAndCompression w;
  const std::string& n = w.name.name;
  Result r = dump(n, "--width", "10000");
  ASSERT_EQ(r.code, 0) << show(r);
  for (const char* word : {"namespace", "django", "other", "compressed, ", "-> 3.9 KiB", "never"}) {
    EXPECT_TRUE(has(r.out, word)) << "missing '" << word << "' in:\n" << r.out;
  }
  EXPECT_TRUE(has(r.out, w.big)) << "the value is not shown decompressed";
  EXPECT_FALSE(has(r.out, "not decompressed")) << r.out;
  EXPECT_TRUE(has(r.out, "compressed 3.9 KiB -> ")) << r.out;  // the stats line

  r = dump(n, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  json doc = json::parse(r.out);
  std::map<std::string, json> by_key;
  for (const json& e : doc["entries"]) by_key[e["key"]] = e;
  ASSERT_EQ(by_key.size(), 6u);
  const json& big = by_key["z:big"];
  EXPECT_EQ(big["namespace"], "django");
  EXPECT_EQ(big["compressed"], true);
  EXPECT_EQ(big["decompressed"], true);
  EXPECT_EQ(big["orig_bytes"], 4000);
  EXPECT_LT(big["stored_bytes"].get<std::uint64_t>(), 4000u);
  EXPECT_EQ(big["value_bytes"], 4000);
  EXPECT_EQ(big["value"], w.big);
  EXPECT_EQ(by_key["d:1"]["compressed"], false);
  EXPECT_EQ(by_key["d:1"]["stored_bytes"], 3);
  EXPECT_TRUE(by_key["plain"]["namespace"].is_null());
  EXPECT_EQ(by_key["o:1"]["no_expiry"], true);
  EXPECT_EQ(by_key["o:1"]["ttl_left_ms"], std::numeric_limits<std::int64_t>::max());
  EXPECT_EQ(by_key["d:1"]["no_expiry"], false);
  EXPECT_EQ(doc["stats"]["compressed_in"], w.cache.stats().compressed_in);

  // The per-namespace summary counts every live entry, whatever --limit says.
  w.cache.clear("other");
  r = dump(n, "--json", "--limit", "0");
  ASSERT_EQ(r.code, 0) << show(r);
  doc = json::parse(r.out);
  EXPECT_TRUE(doc["entries"].empty());
  ASSERT_EQ(doc["namespaces"].size(), 2u) << doc["namespaces"];
  EXPECT_EQ(doc["namespaces"][0]["name"], "django");
  EXPECT_EQ(doc["namespaces"][0]["entries"], 3);
  EXPECT_EQ(doc["namespaces"][0]["valid"], 3);
  EXPECT_GT(doc["namespaces"][0]["bytes"].get<std::uint64_t>(), 0u);
  EXPECT_EQ(doc["namespaces"][1]["name"], "other");
  EXPECT_EQ(doc["namespaces"][1]["entries"], 2);
  EXPECT_EQ(doc["namespaces"][1]["valid"], 0);  // cleared: stale until reclaimed
  r = dump(n, "--limit", "0");
  EXPECT_TRUE(has(r.out, "django") && has(r.out, "entries   0 shown")) << r.out;

  // --namespace filters; '' selects entries without one.
  EXPECT_TRUE(has(dump(n, "--namespace", "django").out, "entries   3 shown"));
  EXPECT_TRUE(has(dump(n, "--namespace", "other", "--state", "stale").out, "entries   2 shown"));
  r = dump(n, "--namespace", "", "--json");
  doc = json::parse(r.out);
  ASSERT_EQ(doc["entries"].size(), 1u) << r.out;
  EXPECT_EQ(doc["entries"][0]["key"], "plain");
  EXPECT_EQ(dump(n, "--check").code, 0);
}

// A compressed entry whose frame no longer decodes (rewritten with a valid
// checksum, as only a writer of the segment could): shown as stored and
// marked, reported as a problem, and a violation for --check.
TEST(ShmDump, MarksACompressedValueThatDoesNotDecode) {
  WithNamespacesAndCompression w;
  const std::string& n = w.name.name;
  Segment& seg = detail::Access::segment(w.cache);
  bool forged = false;
  for (std::uint32_t s = 0; s < seg.geometry().stripe_count && !forged; ++s) {
    const auto v = arena::StripeView::over(seg.stripe_base(s), seg.geometry());
    arena::walk(v, v.hdr->tail, v.hdr->head, [&](std::uint64_t off, const layout::EntryHeader& h) {
      if (forged || h.live == 0 || (h.flags & layout::kFlagCompressed) == 0) return;
      std::uint8_t* image = v.arena + off;
      image[arena::value_off(off, h) - off] ^= 0x5a;  // the frame's magic number
      auto* header = reinterpret_cast<layout::EntryHeader*>(image);
      header->checksum = arena::checksum_of(image, *header);
      forged = true;
    }, nullptr, nullptr);
  }
  ASSERT_TRUE(forged);
  Result r = dump(n, "--json", "--prefix", "z:");
  ASSERT_EQ(r.code, 0) << show(r);
  json doc = json::parse(r.out);
  ASSERT_EQ(doc["entries"].size(), 1u);
  const json& e = doc["entries"][0];
  EXPECT_EQ(e["compressed"], true);
  EXPECT_EQ(e["decompressed"], false);
  EXPECT_EQ(e["value_bytes"], e["stored_bytes"]);
  bool reported = false;
  for (const json& p : doc["problems"]) reported |= has(p.get<std::string>(), "not decompressed");
  EXPECT_TRUE(reported) << doc["problems"];
  r = dump(n, "--prefix", "z:");
  EXPECT_TRUE(has(r.out, "[stored zstd frame, not decompressed]")) << r.out;
  r = dump(n, "--check");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.out, "does not decode")) << r.out;
  EXPECT_FALSE(w.cache.get("z:big").has_value());  // the library calls it a miss too
}

TEST(ShmDump, CheckFlagsANamespaceInTheWrongSlot) {
  WithNamespacesAndCompression w;
  Segment& seg = detail::Access::segment(w.cache);
  bool forged = false;
  for (std::uint32_t s = 0; s < seg.geometry().stripe_count && !forged; ++s) {
    const auto v = arena::StripeView::over(seg.stripe_base(s), seg.geometry());
    arena::walk(v, v.hdr->tail, v.hdr->head, [&](std::uint64_t off, const layout::EntryHeader& h) {
      if (forged || h.live == 0 || (h.flags & layout::kFlagNamespace) == 0) return;
      auto* header = reinterpret_cast<layout::EntryHeader*>(v.arena + off);
      header->ns_slot = (header->ns_slot + 1) % seg.geometry().tag_slots;
      header->checksum = arena::checksum_of(v.arena + off, *header);
      forged = true;
    }, nullptr, nullptr);
  }
  ASSERT_TRUE(forged);
  Result r = dump(w.name.name, "--check");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.out, "namespace") && has(r.out, "wrong generation slot")) << r.out;
}

TEST(ShmDump, ShowsTheRelay) {
  Populated p;
  const std::string& n = p.name.name;
  Result r = dump(n);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "relay     none")) << r.out;
  EXPECT_TRUE(has(r.out, "host id " + outbox::host_id(p.cache))) << r.out;
  json doc = json::parse(dump(n, "--json").out);
  EXPECT_EQ(doc["relay"]["ever_ran"], false);
  EXPECT_EQ(doc["relay"]["outbox_head"], outbox::head(p.cache));  // Populated invalidated once

  for (int i = 0; i < 5; ++i) p.cache.invalidate("x" + std::to_string(i));
  outbox::RelayStatus st;
  st.pid = std::uint32_t(::getpid());
  st.connected = false;
  st.heartbeat_ms = outbox::now_ms() - 65'000;
  st.cursor = outbox::head(p.cache) - 5;
  st.last_id_ms = 1700000000999;
  st.last_id_seq = 0;
  st.published = 3;
  st.applied = 9;
  st.overflow_clears = 1;
  outbox::set_relay_status(p.cache, st);
  r = dump(n);
  ASSERT_EQ(r.code, 0) << show(r);
  for (const std::string& word :
       {"relay     pid " + std::to_string(::getpid()) + " (running), not connected, heartbeat 1m0",
        std::string("ago"), std::string("outbox pending 5 (head ") + std::to_string(outbox::head(p.cache)),
        std::string("last id 1700000000999-0"), std::string("published 3, applied 9"),
        std::string("overflow clears 1")}) {
    EXPECT_TRUE(has(r.out, word)) << "missing '" << word << "' in:\n" << r.out;
  }
  doc = json::parse(dump(n, "--json").out);
  const json& relay = doc["relay"];
  EXPECT_EQ(relay["ever_ran"], true);
  EXPECT_EQ(relay["pid"], ::getpid());
  EXPECT_EQ(relay["connected"], false);
  EXPECT_EQ(relay["pending"], 5);
  EXPECT_EQ(relay["cursor"], st.cursor);
  EXPECT_GE(relay["heartbeat_age_ms"].get<std::int64_t>(), 65'000);
  EXPECT_EQ(relay["heartbeat_ms"], st.heartbeat_ms);
  EXPECT_EQ(relay["applied"], 9);
  // The tool only read: the relay's state is as the relay left it.
  const outbox::RelayStatus after = outbox::relay_status(p.cache);
  EXPECT_EQ(after.cursor, st.cursor);
  EXPECT_EQ(after.heartbeat_ms, st.heartbeat_ms);
}

}  // namespace
}  // namespace hostcache
