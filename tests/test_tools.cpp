// The hostcache binary, run for real: every subcommand's happy path and its
// exit codes, --json parsed back, and save/load (including damaged files).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <hostcache/outbox.h>

#include "tools_test_support.h"

namespace hostcache {
namespace {

using namespace tools_testing;
using nlohmann::json;

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
  EXPECT_EQ(
      hc("set", n, "k", "v", "--tag", "1", "--tag", "2", "--tag", "3", "--tag", "4", "--tag", "5")
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
  for (const char* cmd : {"stats", "clear", "invalidate", "get", "set", "add", "incr", "decr",
                          "touch", "ttl", "erase", "create", "remove", "list", "save", "load"}) {
    Result r = hc(cmd, "--help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_TRUE(has(r.out, "Example:\n  hostcache " + std::string(cmd))) << r.out;
  }
  Result r = dump("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "Examples:"));
  r = hc("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "Run 'hostcache COMMAND --help'")) << r.out;
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
  // The read-only tools refuse it too (issue 11: what they read, save
  // would carry on), and say which check failed and how to override.
  r = dump(p.name.name);
  EXPECT_EQ(r.code, 4) << show(r);
  if (::geteuid() == 0) {
    EXPECT_TRUE(has(r.err, "owned by uid 65534") && has(r.err, "--allow-foreign")) << r.err;
    EXPECT_EQ(hc("stats", p.name.name).code, 4);
    r = hc("get", p.name.name, "text:1", "--allow-foreign");
    EXPECT_EQ(r.code, 0) << show(r);
    EXPECT_TRUE(has(r.err, "warning")) << r.err;
    r = dump(p.name.name, "--allow-foreign");
    EXPECT_EQ(r.code, 0) << show(r);
    EXPECT_TRUE(has(r.err, "warning")) << r.err;
  }
}

TEST(HostcacheTool, SaveThenLoadIntoAFreshSegment) {
  Populated p;
  for (int i = 0; i < 200; ++i) {
    const std::string tag = "t" + std::to_string(i % 3);  // outlives the string_view in o
    SetOptions o{std::chrono::minutes(5), {"bulk", tag}};
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
  for (std::size_t at :
       {std::size_t(0), std::size_t(9), std::size_t(20), good.size() / 2, good.size() - 3}) {
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
  r = hc("save", p.name.name, "/nonexistent-dir/snap");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_EQ(hc("save", "no-such-segment-here", file + ".x").code, 3);
  EXPECT_TRUE(has(try_load(good).out, "loaded 3 entries"));
  EXPECT_EQ(hc("load", "no-such-segment-here", file).code, 3);
  std::remove(file.c_str());
}


// ---- issue 12: add, incr/decr, touch, ttl, namespaces --------------------------

std::string value_of(const Cache& cache, const std::string& key) {
  std::optional<std::string> v = cache.get(key);
  return v ? *v : "<absent>";
}

TEST(HostcacheTool, AddStoresOnlyWhenAbsent) {
  Populated p;
  const std::string& n = p.name.name;
  Result r = hc("add", n, "fresh", "one", "--ttl", "10m", "--tag", "a", "--namespace", "app");
  ASSERT_EQ(r.code, 0) << show(r);
  r = hc("add", n, "fresh", "two");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.err, n) && has(r.err, "already has a valid entry")) << r.err;
  EXPECT_EQ(value_of(p.cache, "fresh"), "one");
  const auto e = valid_entries(n).at("fresh");
  EXPECT_EQ(e.ns, "app");
  ASSERT_EQ(e.tags.size(), 1u);
  EXPECT_GT(e.ttl_left_ms, 9 * 60 * 1000);
  // A stale entry counts as absent.
  ASSERT_EQ(hc("invalidate", n, "a").code, 0);
  EXPECT_EQ(hc("add", n, "fresh", "three").code, 0);
  EXPECT_EQ(value_of(p.cache, "fresh"), "three");
  // Bad input: refused before anything is written.
  r = hc("add", n, "other", "v", "--ttl=-5s");
  EXPECT_EQ(r.code, 2) << show(r);
  EXPECT_TRUE(has(r.err, "--ttl") && has(r.err, "positive")) << r.err;
  EXPECT_EQ(hc("add", n, "other", "v", "--namespace", std::string(65, 'n')).code, 2);
  EXPECT_EQ(hc("get", n, "other").code, 1) << "a refused add wrote something";
}

TEST(HostcacheTool, IncrAndDecr) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(hc("set", n, "c", "41", "--namespace", "app", "--tag", "t").code, 0);
  Result r = hc("incr", n, "c");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(r.out, "42\n");
  r = hc("incr", n, "c", "8");
  EXPECT_EQ(r.out, "50\n") << show(r);
  r = hc("decr", n, "c", "60");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(r.out, "-10\n");
  EXPECT_EQ(hc("decr", n, "c").out, "-11\n");
  EXPECT_EQ(value_of(p.cache, "c"), "-11");
  // The entry keeps its namespace and tags.
  const auto e = valid_entries(n).at("c");
  EXPECT_EQ(e.ns, "app");
  ASSERT_EQ(e.tags.size(), 1u);
  EXPECT_EQ(e.tags[0].name, "t");

  // Not found: 1.
  r = hc("incr", n, "absent");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.err, "'absent' not found")) << r.err;
  EXPECT_EQ(hc("get", n, "absent").code, 1) << "incr created the key";
  // Not an integer: 5, with a message, the value intact.
  r = hc("incr", n, "text:1", "3");
  EXPECT_EQ(r.code, 5) << show(r);
  EXPECT_TRUE(has(r.err, "not a decimal integer") && has(r.err, "not_integer")) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(value_of(p.cache, "text:1"), "hello world");
  EXPECT_EQ(hc("decr", n, "text:1").code, 5);
  EXPECT_EQ(value_of(p.cache, "text:1"), "hello world");
  // Overflow: 6, intact.
  ASSERT_EQ(hc("set", n, "big", "9223372036854775806").code, 0);
  EXPECT_EQ(hc("incr", n, "big").out, "9223372036854775807\n");
  r = hc("incr", n, "big");
  EXPECT_EQ(r.code, 6) << show(r);
  EXPECT_TRUE(has(r.err, "64-bit") && has(r.err, "overflow")) << r.err;
  EXPECT_EQ(value_of(p.cache, "big"), "9223372036854775807");
  ASSERT_EQ(hc("set", n, "small", "-9223372036854775807").code, 0);
  EXPECT_EQ(hc("decr", n, "small", "2").code, 6);
  EXPECT_EQ(value_of(p.cache, "small"), "-9223372036854775807");
  // A DELTA that is not a non-negative integer: usage, nothing changed.
  for (const char* bad : {"abc", "1.5", "99999999999999999999", "", "+3"}) {
    r = hc("incr", n, "c", bad);
    EXPECT_EQ(r.code, 2) << bad << " " << show(r);
    EXPECT_TRUE(has(r.err, "DELTA")) << r.err;
  }
  EXPECT_EQ(hc("incr", n, "c", "--", "-1").code, 2);
  EXPECT_EQ(value_of(p.cache, "c"), "-11");
  EXPECT_EQ(hc("incr", "no-such-segment-here", "c").code, 3);
  Result check = dump(n, "--check");  // the rewritten entries are sound
  EXPECT_EQ(check.code, 0) << show(check);
}

TEST(HostcacheTool, TouchAndTtl) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(hc("set", n, "k", "v", "--ttl", "10m").code, 0);
  Result r = hc("ttl", n, "k");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "9m5") || has(r.out, "10m00s")) << r.out;
  r = hc("ttl", n, "k", "--ms");
  ASSERT_EQ(r.code, 0) << show(r);
  const long long ms = std::stoll(r.out);
  EXPECT_GT(ms, 9 * 60 * 1000);
  EXPECT_LE(ms, 10 * 60 * 1000);

  ASSERT_EQ(hc("touch", n, "k", "2h").code, 0);
  EXPECT_GT(std::stoll(hc("ttl", n, "k", "--ms").out), 119LL * 60 * 1000);
  EXPECT_EQ(value_of(p.cache, "k"), "v");
  ASSERT_EQ(hc("touch", n, "k", "never").code, 0);
  EXPECT_EQ(hc("ttl", n, "k").out, "never\n");
  EXPECT_EQ(hc("ttl", n, "k", "--ms").out, "never\n");
  EXPECT_EQ(p.cache.ttl("k"), kNoExpiry);

  // A negative, zero or malformed TTL: usage, the entry's TTL unchanged.
  for (const char* bad : {"-5s", "0", "soon", "-1"}) {
    r = hc("touch", n, "k", bad);
    EXPECT_EQ(r.code, 2) << bad << " " << show(r);
  }
  r = hc("touch", n, "k", "--", "-5s");
  EXPECT_EQ(r.code, 2) << show(r);
  EXPECT_TRUE(has(r.err, "positive duration") && has(r.err, "invalid_ttl")) << r.err;
  EXPECT_EQ(hc("ttl", n, "k").out, "never\n");

  r = hc("touch", n, "absent", "5m");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.err, "not found")) << r.err;
  r = hc("ttl", n, "absent");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(hc("ttl", n, "meta:group:1").code, 1);  // stale: a miss
  EXPECT_EQ(hc("touch", n, "meta:group:1", "5m").code, 1);
  Result check = dump(n, "--check");
  EXPECT_EQ(check.code, 0) << show(check);
}

TEST(HostcacheTool, SetWithNoExpiryAndNamespaces) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(hc("set", n, "forever", "v", "--ttl", "never").code, 0);
  EXPECT_EQ(p.cache.ttl("forever"), kNoExpiry);
  EXPECT_EQ(hc("ttl", n, "forever").out, "never\n");
  Result r = hc("set", n, "k", "v", "--ttl", "-5s");
  EXPECT_EQ(r.code, 2) << show(r);
  EXPECT_TRUE(has(r.err, "--ttl") && has(r.err, "invalid_ttl")) << r.err;
  EXPECT_EQ(hc("set", n, "k", "v", "--ttl", "forever").code, 2);
  EXPECT_EQ(hc("create", n + "x", "--ttl", "never").code, 2);  // a default TTL must be a duration

  ASSERT_EQ(hc("set", n, "a:1", "x", "--namespace", "a").code, 0);
  ASSERT_EQ(hc("set", n, "a:2", "x", "--namespace", "a").code, 0);
  ASSERT_EQ(hc("set", n, "b:1", "x", "--namespace", "b").code, 0);
  r = hc("clear", n, "--namespace", "a");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "cleared namespace 'a' in " + n)) << r.out;
  EXPECT_EQ(hc("get", n, "a:1").code, 1);
  EXPECT_EQ(hc("get", n, "a:2").code, 1);
  EXPECT_EQ(hc("get", n, "b:1").code, 0);
  EXPECT_EQ(hc("get", n, "text:1").code, 0);  // no namespace: untouched
  EXPECT_EQ(hc("get", n, "forever").code, 0);

  // Invalid namespaces: usage, nothing written or cleared.
  for (const std::string& bad : {std::string(), std::string(65, 'n')}) {
    r = hc("set", n, "c:1", "x", "--namespace", bad);
    EXPECT_EQ(r.code, 2) << show(r);
    EXPECT_TRUE(has(r.err, "invalid_namespace")) << r.err;
    r = hc("clear", n, "--namespace", bad);
    EXPECT_EQ(r.code, 2) << show(r);
  }
  EXPECT_EQ(hc("get", n, "c:1").code, 1);
  EXPECT_EQ(hc("get", n, "b:1").code, 0);
  ASSERT_EQ(hc("set", n, "c:1", "x", "--namespace", std::string(64, 'n')).code, 0);
}

TEST(HostcacheTool, SaveAndLoadKeepNamespacesAndNoExpiry) {
  Populated p;
  const std::string& n = p.name.name;
  ASSERT_EQ(p.cache.set("ns:1", "x", SetOptions{std::chrono::minutes(5), {}, "app"}), Errc::ok);
  ASSERT_EQ(p.cache.set("never:1", "y", SetOptions{kNoExpiry, {"t"}, {}}), Errc::ok);
  const std::string file = ::testing::TempDir() + "/snap-ns-" + n;
  ASSERT_EQ(hc("save", n, file).code, 0);
  testing::ScopedName fresh{"tools"};
  ASSERT_EQ(hc("create", fresh.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  Result r = hc("load", fresh.name, file);
  ASSERT_EQ(r.code, 0) << show(r);
  const auto after = valid_entries(fresh.name);
  ASSERT_TRUE(after.count("ns:1") && after.count("never:1"));
  EXPECT_EQ(after.at("ns:1").ns, "app");
  EXPECT_TRUE(after.at("never:1").no_expiry);
  EXPECT_EQ(hc("ttl", fresh.name, "never:1").out, "never\n");
  ASSERT_EQ(hc("clear", fresh.name, "--namespace", "app").code, 0);
  EXPECT_EQ(hc("get", fresh.name, "ns:1").code, 1);
  EXPECT_EQ(hc("get", fresh.name, "never:1").code, 0);
  std::remove(file.c_str());
}

// ---- issue 12 and 14 in `hostcache stats`: compression and the relay ------------

TEST(HostcacheTool, StatsShowCompressionAndTheRelay) {
  testing::ScopedName name{"tools"};
  Config config = testing::small_config(name.name, 1u << 20, 2);
  config.compress_min_bytes = 256;
  Cache cache = Cache::open(config);
  std::string big;
  for (int i = 0; i < 200; ++i) big += "field_" + std::to_string(i % 10) + ",";
  ASSERT_EQ(cache.set("big", big), Errc::ok);
  const Stats s = cache.stats();
  ASSERT_GT(s.compressed_in, s.compressed_out) << "the value was not compressed";

  // No relay yet.
  Result r = hc("stats", name.name);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "compressed") && has(r.out, "saved")) << r.out;
  EXPECT_TRUE(has(r.out, "relay") && has(r.out, "none")) << r.out;
  r = hc("stats", name.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  json doc = json::parse(r.out);
  EXPECT_EQ(doc["stats"]["compressed_in"], s.compressed_in);
  EXPECT_EQ(doc["stats"]["compressed_out"], s.compressed_out);
  EXPECT_EQ(doc["stats"]["compressed_saved"], s.compressed_in - s.compressed_out);
  EXPECT_EQ(doc["relay"]["ever_ran"], false);
  EXPECT_EQ(doc["relay"]["host_id"], outbox::host_id(cache));

  // A relay that ran (this process plays it), with three events it has not read.
  cache.clear();
  cache.invalidate("t");
  cache.clear("ns");
  outbox::RelayStatus st;
  st.pid = std::uint32_t(::getpid());
  st.connected = true;
  st.heartbeat_ms = outbox::now_ms() - 1500;
  st.cursor = outbox::head(cache) - 2;
  st.last_id_ms = 1700000000123;
  st.last_id_seq = 4;
  st.published = 11;
  st.applied = 7;
  st.lag_events = 1;
  st.lag_ms = 25;
  st.resync_lost = 1;
  st.resync_trimmed = 2;
  st.resync_replay = 3;
  st.overflow_clears = 4;
  st.stale_clears = 5;
  outbox::set_relay_status(cache, st);
  r = hc("stats", name.name);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "pid " + std::to_string(::getpid()) + " (running), connected")) << r.out;
  EXPECT_TRUE(has(r.out, "outbox pending 2")) << r.out;
  EXPECT_TRUE(has(r.out, "last id 1700000000123-4")) << r.out;
  EXPECT_TRUE(has(r.out, "published 11, applied 7")) << r.out;
  r = hc("stats", name.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  doc = json::parse(r.out);
  const json& relay = doc["relay"];
  EXPECT_EQ(relay["ever_ran"], true);
  EXPECT_EQ(relay["pid"], ::getpid());
  EXPECT_EQ(relay["alive"], true);
  EXPECT_EQ(relay["connected"], true);
  EXPECT_EQ(relay["outbox_head"], outbox::head(cache));
  EXPECT_EQ(relay["cursor"], st.cursor);
  EXPECT_EQ(relay["pending"], 2);
  EXPECT_GE(relay["heartbeat_age_ms"].get<std::int64_t>(), 1500);
  EXPECT_LT(relay["heartbeat_age_ms"].get<std::int64_t>(), 60'000);
  EXPECT_EQ(relay["last_id"], "1700000000123-4");
  EXPECT_EQ(relay["published"], 11);
  EXPECT_EQ(relay["applied"], 7);
  EXPECT_EQ(relay["lag_events"], 1);
  EXPECT_EQ(relay["lag_ms"], 25);
  EXPECT_EQ(relay["resync_lost"], 1);
  EXPECT_EQ(relay["resync_trimmed"], 2);
  EXPECT_EQ(relay["resync_replay"], 3);
  EXPECT_EQ(relay["overflow_clears"], 4);
  EXPECT_EQ(relay["stale_clears"], 5);
  r = hc("stats", name.name, "--prometheus");
  ASSERT_EQ(r.code, 0) << show(r);
  const std::string seg = "{segment=\"" + name.name + "\"}";
  for (const std::string& line :
       {"hostcache_compressed_in_bytes_total" + seg + " " + std::to_string(s.compressed_in) + "\n",
        "hostcache_compressed_out_bytes_total" + seg + " " + std::to_string(s.compressed_out) + "\n",
        "hostcache_relay_running" + seg + " 1\n", "hostcache_relay_connected" + seg + " 1\n",
        "hostcache_relay_outbox_pending" + seg + " 2\n",
        "hostcache_relay_published_total" + seg + " 11\n",
        "hostcache_relay_resyncs_total{segment=\"" + name.name + "\",cause=\"trimmed\"} 2\n",
        "hostcache_relay_stale_clears_total" + seg + " 5\n", std::string("# TYPE hostcache_relay_lag_seconds gauge\n")}) {
    EXPECT_TRUE(has(r.out, line)) << "missing " << line << " in:\n" << r.out;
  }
  // A relay whose process is gone, disconnected.
  pid_t dead = testing::spawn([] { return 0; });
  testing::wait_for(dead);
  st.pid = std::uint32_t(dead);
  st.connected = false;
  outbox::set_relay_status(cache, st);
  r = hc("stats", name.name);
  EXPECT_TRUE(has(r.out, "(not running), not connected")) << r.out;
  EXPECT_TRUE(has(hc("stats", name.name, "--prometheus").out, "hostcache_relay_running" + seg + " 0\n"));
}

}  // namespace
}  // namespace hostcache
