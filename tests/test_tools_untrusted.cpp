// The tools must not trust what they read (issue 11): segments and snapshot
// files of another user, segments whose geometry asks for gigabytes, planted
// symlinks at the names `save` writes, and keys, tags and values made to
// reach the terminal as control sequences or to print like another key.
//
// "Another user" is uid/gid 65534 (nobody): `setpriv` for the binaries, a
// forked child that drops to it for everything else. These tests need root
// to become it, and skip otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <grp.h>
#include <pty.h>
#include <signal.h>
#include <termios.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <set>

#include "arena.h"
#include "cache_impl.h"
#include "tools_test_support.h"

namespace hostcache {
namespace {

using namespace tools_testing;
using nlohmann::json;

constexpr uid_t kNobody = 65534;

#define REQUIRE_ROOT()                                                              \
  do {                                                                              \
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";      \
  } while (0)

// Runs fn in a forked child that has become uid/gid 65534 first.
int as_nobody(const std::function<int()>& fn) {
  return testing::wait_for(testing::spawn([&] {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
        ::setresuid(kNobody, kNobody, kNobody) != 0) {
      return 98;
    }
    return fn();
  }));
}

// A binary run as uid/gid 65534 through setpriv.
Result run_as_nobody(const char* bin, std::vector<std::string> args) {
  std::vector<std::string> all{"--reuid=65534", "--regid=65534", "--clear-groups", bin};
  all.insert(all.end(), args.begin(), args.end());
  return run("/usr/bin/setpriv", all);
}
template <class... A>
Result hc_nobody(A&&... a) {
  return run_as_nobody(HOSTCACHE_BIN, {std::string(a)...});
}

// Like run(), with the child's pid known before it execs: `before_exec(pid)`
// runs in the parent while the child waits, so names that embed the pid can
// be planted first. The child is killed (SIGALRM) after `timeout_s`.
Result run_hooked(const char* bin, const std::vector<std::string>& args,
                  const std::function<void(pid_t)>& before_exec, unsigned timeout_s = 60) {
  int out = ::memfd_create("out", 0), err = ::memfd_create("err", 0);
  int go[2];
  if (::pipe(go) != 0) return {};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(go[1]);
    char c;
    if (::read(go[0], &c, 1) != 1) ::_exit(126);
    ::alarm(timeout_s);  // survives execv
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv{const_cast<char*>(bin)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin, argv.data());
    ::_exit(127);
  }
  ::close(go[0]);
  before_exec(pid);
  (void)!::write(go[1], "g", 1);
  ::close(go[1]);
  Result r;
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A run with its wall time and peak resident set.
struct Measured {
  Result r;
  double seconds = 0;
  long max_rss_kib = 0;
};
Measured run_measured(const char* bin, const std::vector<std::string>& args) {
  int out = ::memfd_create("out", 0), err = ::memfd_create("err", 0);
  const auto start = std::chrono::steady_clock::now();
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
  Measured m;
  int status = 0;
  rusage ru{};
  ::wait4(pid, &status, 0, &ru);
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.max_rss_kib = ru.ru_maxrss;
  m.r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  m.r.out = slurp(out);
  m.r.err = slurp(err);
  return m;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::set<std::string> dir_entries(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.insert(n);
    }
    ::closedir(d);
  }
  return out;
}

// A private directory under /tmp, removed (with what is in it) at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/hc-untrusted-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    for (const std::string& e : dir_entries(path)) ::unlink((path + "/" + e).c_str());
    ::rmdir(path.c_str());
  }
};

// ---- item 4: another user's segment -----------------------------------------------

// nobody's segment, with an entry nobody chose: the tools refuse it unless
// told otherwise, so `save` cannot carry it into root's cache via `load`.
TEST(Untrusted, ToolsRefuseASegmentOfAnotherUser) {
  REQUIRE_ROOT();
  testing::ScopedName n{"foreign"};
  Result r = hc_nobody("create", n.name, "--capacity", "1M", "--stripes", "2", "--max-value", "64K");
  ASSERT_EQ(r.code, 0) << show(r);
  ASSERT_EQ(hc_nobody("set", n.name, "metadata_fields_shop_Order_u42_", "forged").code, 0);
  struct stat st;
  ASSERT_EQ(::stat(("/dev/shm/hostcache." + n.name).c_str(), &st), 0);
  ASSERT_EQ(st.st_uid, kNobody);

  TempDir dir;
  const std::string file = dir.path + "/snap.bin";
  for (const Result& refused : {dump(n.name), dump(n.name, "--json"), dump(n.name, "--check"),
                                hc("stats", n.name), hc("stats", n.name, "--json"),
                                hc("save", n.name, file)}) {
    EXPECT_EQ(refused.code, 4) << show(refused);
    EXPECT_TRUE(has(refused.err, "owned by uid 65534")) << refused.err;
    EXPECT_TRUE(has(refused.err, "--allow-foreign")) << refused.err;
    EXPECT_FALSE(has(refused.out, "forged")) << refused.out;
  }
  EXPECT_NE(::access(file.c_str(), F_OK), 0) << "save wrote a snapshot of a foreign segment";

  // Asked for, it is read, with a warning on stderr.
  r = dump(n.name, "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "metadata_fields_shop_Order_u42_")) << r.out;
  EXPECT_TRUE(has(r.err, "warning") && has(r.err, "65534")) << r.err;
  r = dump(n.name, "--check", "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "warning")) << r.err;
  r = hc("stats", n.name, "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "warning")) << r.err;
  r = hc("save", n.name, file, "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "warning")) << r.err;
  EXPECT_TRUE(has(r.out, "saved 1 entries")) << r.out;
}

TEST(Untrusted, ToolsRefuseAWorldWritableSegment) {
  testing::ScopedName n{"wide"};
  ASSERT_EQ(hc("create", n.name, "--capacity", "1M", "--max-value", "64K", "--mode", "0666").code,
            0);
  for (const Result& refused :
       {dump(n.name), dump(n.name, "--check"), hc("stats", n.name), hc("save", n.name, "/tmp/x")}) {
    EXPECT_EQ(refused.code, 4) << show(refused);
    EXPECT_TRUE(has(refused.err, "writable by")) << refused.err;
    EXPECT_TRUE(has(refused.err, "--allow-foreign")) << refused.err;
  }
  Result r = dump(n.name, "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "warning") && has(r.err, "0666")) << r.err;
}

// A 1 GiB one-stripe segment of a few KiB of real memory (tmpfs is sparse):
// the tools must neither allocate nor copy what its geometry claims.
TEST(Untrusted, AHugeSparseStripeCostsNeitherMemoryNorTime) {
  testing::ScopedName n{"huge"};
  Result r = hc("create", n.name, "--capacity", "1G", "--stripes", "1");
  ASSERT_EQ(r.code, 0) << show(r);
  ASSERT_EQ(hc("set", n.name, "k", "v").code, 0);
  TempDir dir;
  const std::string file = dir.path + "/snap.bin";
  const std::vector<std::vector<std::string>> runs = {
      {n.name},
      {n.name, "--json"},
      {n.name, "--check"},
  };
  for (const auto& args : runs) {
    const Measured m = run_measured(SHM_DUMP_BIN, args);
    EXPECT_LT(m.r.code, 5) << show(m.r);
    EXPECT_LT(m.max_rss_kib, 128 * 1024) << "shm-dump " << args.back() << ": peak RSS "
                                         << m.max_rss_kib << " KiB";
    EXPECT_LT(m.seconds, 3.0) << "shm-dump " << args.back();
    EXPECT_TRUE(has(m.r.out + m.r.err, "--max-stripe-bytes")) << show(m.r);
  }
  const Measured m = run_measured(HOSTCACHE_BIN, {"save", n.name, file});
  EXPECT_LT(m.max_rss_kib, 128 * 1024) << "save: peak RSS " << m.max_rss_kib << " KiB";
  EXPECT_LT(m.seconds, 3.0);
  EXPECT_TRUE(has(m.r.err, "stripe 0") && has(m.r.err, "--max-stripe-bytes")) << show(m.r);
  // Headers only: cheap, and it works whatever the stripe size.
  const Measured s = run_measured(HOSTCACHE_BIN, {"stats", n.name});
  EXPECT_EQ(s.r.code, 0) << show(s.r);
  EXPECT_LT(s.max_rss_kib, 128 * 1024);
}

// The same, created by another user and read with --allow-foreign (the case
// of the issue): the limit holds there too.
TEST(Untrusted, AHugeSparseStripeOfAnotherUser) {
  REQUIRE_ROOT();
  testing::ScopedName n{"huge"};
  Result r = hc_nobody("create", n.name, "--capacity", "1G", "--stripes", "1");
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(dump(n.name).code, 4);
  const Measured m = run_measured(SHM_DUMP_BIN, {n.name, "--allow-foreign"});
  EXPECT_EQ(m.r.code, 0) << show(m.r);
  EXPECT_LT(m.max_rss_kib, 128 * 1024) << "peak RSS " << m.max_rss_kib << " KiB";
  EXPECT_LT(m.seconds, 3.0);
  EXPECT_TRUE(has(m.r.out, "--max-stripe-bytes")) << show(m.r);
}

TEST(Untrusted, StripeAndReadLimitsCanBeChosen) {
  Populated p;  // 1 MiB, 2 stripes, 4 entries
  Result r = dump(p.name.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  const std::uint64_t stripe = json::parse(r.out)["segment"]["stripe_bytes"];
  r = dump(p.name.name, "--max-stripe-bytes", std::to_string(stripe - 64));
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "entries   0 shown")) << r.out;
  EXPECT_TRUE(has(r.out, "larger than --max-stripe-bytes")) << r.out;
  r = dump(p.name.name, "--max-stripe-bytes", std::to_string(stripe));
  EXPECT_TRUE(has(r.out, "entries   4 shown")) << r.out;
  // A read budget of one and a half stripes: the second is skipped, and says why.
  r = dump(p.name.name, "--max-read-bytes", std::to_string(stripe * 3 / 2), "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  const json doc = json::parse(r.out);
  ASSERT_EQ(doc["problems"].size(), 1u) << doc["problems"];
  EXPECT_TRUE(has(doc["problems"][0].get<std::string>(), "--max-read-bytes"));
  EXPECT_FALSE(doc["stripes"][1]["consistent"].get<bool>());
  EXPECT_EQ(dump(p.name.name, "--max-stripe-bytes", "lots").code, 2);
  r = dump(p.name.name, "--check", "--max-stripe-bytes", "64K");
  EXPECT_EQ(r.code, 1) << show(r);
  EXPECT_TRUE(has(r.out, "not verified") && has(r.out, "--max-stripe-bytes")) << r.out;
  r = hc("save", p.name.name, "/tmp/unused-snapshot", "--max-stripe-bytes", "64K");
  EXPECT_TRUE(has(r.err, "--max-stripe-bytes")) << show(r);
  std::remove("/tmp/unused-snapshot");
}

// ---- item 5: save never follows a planted symlink ------------------------------------

TEST(Untrusted, SaveNeverFollowsAPlantedSymlink) {
  REQUIRE_ROOT();
  Populated p;
  TempDir dir;  // where root saves; nobody owns it, so nobody can plant names in it
  ASSERT_EQ(::chown(dir.path.c_str(), kNobody, kNobody), 0);
  ASSERT_EQ(::chmod(dir.path.c_str(), 0755), 0);
  TempDir safe;
  const std::string victim = safe.path + "/victim";
  std::ofstream(victim) << "precious\n";
  const std::string target = dir.path + "/snap.bin";

  std::vector<std::string> planted;
  auto plant = [&](pid_t pid) {
    planted.clear();
    for (int d = -8; d <= 64; ++d) planted.push_back(target + ".tmp." + std::to_string(pid + d));
    for (const char* s : {".tmp", "~", ".new", ".part", ".swp"}) planted.push_back(target + s);
    planted.push_back(dir.path + "/.snap.bin.tmp");
    ASSERT_EQ(as_nobody([&] {
                for (const std::string& l : planted) {
                  if (::symlink(victim.c_str(), l.c_str()) != 0) return 1;
                }
                return 0;
              }),
              0);
  };
  auto still_planted = [&] {
    for (const std::string& l : planted) {
      char buf[4096];
      const ssize_t len = ::readlink(l.c_str(), buf, sizeof buf);
      EXPECT_EQ(std::string(buf, len > 0 ? std::size_t(len) : 0), victim) << l;
    }
  };
  Result r = run_hooked(HOSTCACHE_BIN, {"save", p.name.name, target}, plant);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(read_all(victim), "precious\n") << "save wrote through a planted symlink";
  struct stat st;
  ASSERT_EQ(::lstat(target.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  still_planted();
  // Nothing but the snapshot and the planted links: no temporary left behind.
  std::set<std::string> expected{"snap.bin"};
  for (const std::string& l : planted) expected.insert(l.substr(dir.path.size() + 1));
  EXPECT_EQ(dir_entries(dir.path), expected);

  // A symlink planted at the final name is replaced, not followed.
  for (const std::string& l : planted) ::unlink(l.c_str());
  ::unlink(target.c_str());
  ASSERT_EQ(as_nobody([&] { return ::symlink(victim.c_str(), target.c_str()); }), 0);
  r = run_hooked(HOSTCACHE_BIN, {"save", p.name.name, target}, plant);
  ASSERT_EQ(r.code, 0) << show(r);
  EXPECT_EQ(read_all(victim), "precious\n");
  ASSERT_EQ(::lstat(target.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  still_planted();

  // What was written is a good snapshot.
  testing::ScopedName fresh{"tools"};
  ASSERT_EQ(hc("create", fresh.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  r = hc("load", fresh.name, target);
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "loaded 3 entries")) << r.out;
}

// ---- item 6: load refuses a file it cannot trust -------------------------------------

TEST(Untrusted, LoadRefusesASnapshotOfAnotherUserOrWritableByOthers) {
  REQUIRE_ROOT();
  Populated p;
  TempDir dir;
  const std::string file = dir.path + "/snap.bin";
  ASSERT_EQ(hc("save", p.name.name, file).code, 0);
  testing::ScopedName fresh{"tools"};
  ASSERT_EQ(hc("create", fresh.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  auto refused = [&](const std::string& path, const std::string& why) {
    Result r = hc("load", fresh.name, path);
    EXPECT_EQ(r.code, 4) << why << "\n" << show(r);
    EXPECT_TRUE(has(r.err, why)) << r.err;
    EXPECT_TRUE(has(r.err, "--allow-foreign")) << r.err;
    EXPECT_TRUE(valid_entries(fresh.name).empty()) << "a refused snapshot loaded entries";
  };

  ASSERT_EQ(::chown(file.c_str(), kNobody, kNobody), 0);
  refused(file, "owned by uid 65534");
  ASSERT_EQ(::chown(file.c_str(), 0, 0), 0);
  ASSERT_EQ(::chmod(file.c_str(), 0620), 0);
  refused(file, "writable by group or others");
  ASSERT_EQ(::chmod(file.c_str(), 0602), 0);
  refused(file, "writable by group or others");
  const std::string link = dir.path + "/link.bin";
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  ASSERT_EQ(::symlink(file.c_str(), link.c_str()), 0);
  refused(link, "symbolic link");

  // A FIFO is refused at once, not waited on.
  const std::string fifo = dir.path + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  Result r = run_hooked(HOSTCACHE_BIN, {"load", fresh.name, fifo}, [](pid_t) {}, 10);
  EXPECT_NE(r.code, 128 + SIGALRM) << "load waited on a FIFO";
  EXPECT_NE(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "not a regular file")) << r.err;

  // The override loads it, and says so.
  ASSERT_EQ(::chmod(file.c_str(), 0666), 0);
  r = hc("load", fresh.name, file, "--allow-foreign");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.err, "warning")) << r.err;
  EXPECT_EQ(valid_entries(fresh.name).size(), 3u);
  // Readable by others is fine; only writing matters.
  ASSERT_EQ(hc("clear", fresh.name).code, 0);
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  r = hc("load", fresh.name, file);
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(r.err.empty()) << r.err;
}

// The attack end to end: nobody writes a well-formed snapshot of its own
// segment, with forged entries; root's load refuses it.
TEST(Untrusted, LoadRefusesAForgedSnapshotWrittenByAnotherUser) {
  REQUIRE_ROOT();
  testing::ScopedName theirs{"foreign"};
  ASSERT_EQ(hc_nobody("create", theirs.name, "--capacity", "1M", "--max-value", "64K").code, 0);
  ASSERT_EQ(hc_nobody("set", theirs.name, "metadata_perms_u1_", "{\"admin\":true}").code, 0);
  TempDir dir;
  ASSERT_EQ(::chown(dir.path.c_str(), kNobody, kNobody), 0);
  const std::string file = dir.path + "/forged.bin";
  Result r = hc_nobody("save", theirs.name, file);
  ASSERT_EQ(r.code, 0) << show(r);
  Populated mine;
  r = hc("load", mine.name.name, file);
  EXPECT_EQ(r.code, 4) << show(r);
  EXPECT_TRUE(has(r.err, "owned by uid 65534") && has(r.err, "--allow-foreign")) << r.err;
  EXPECT_EQ(hc("get", mine.name.name, "metadata_perms_u1_").code, 1);
}

// ---- item 8: what reaches a terminal, and what JSON says -----------------------------

// Bytes that must never reach a terminal as they are.
const std::vector<std::string>& hostile() {
  static const std::vector<std::string> v = {
      "\x1b]0;pwned\x07",  // OSC: sets the window title
      "\x1b[2J",           // CSI: clears the screen
      "\xc2\x9b" "31m",    // U+009B, the C1 CSI
      "\xc2\x85",          // U+0085, C1 NEL
      "\x7f",              // DEL
      "\xff\xfe\xc0\xaf",  // invalid UTF-8 (and an overlong '/')
      "\xe2\x80\xae",      // U+202E RIGHT-TO-LEFT OVERRIDE
      "\xe2\x80\xaa",      // U+202A
      "\xe2\x81\xa6",      // U+2066 LEFT-TO-RIGHT ISOLATE
      "\xe2\x81\xa9",      // U+2069
      "\xe2\x80\x8e",      // U+200E LRM
      "\xe2\x80\x8f",      // U+200F RLM
      "\xed\xa0\x80",      // an encoded surrogate (invalid)
      "\r\b\t",            // plain C0
  };
  return v;
}

// Decodes strict UTF-8; false at the first byte that is not part of a
// printable character (anything but '\n' below 0x20, DEL, C1, bidi controls).
bool terminal_safe(const std::string& s, std::string& why) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if ((c < 0x20 && c != '\n') || c == 0x7f) {
        why = "byte " + std::to_string(c) + " at " + std::to_string(i);
        return false;
      }
      ++i;
      continue;
    }
    std::size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
      why = "invalid UTF-8 at " + std::to_string(i);
      return false;
    }
    std::uint32_t cp = c & (0x7f >> n);
    for (std::size_t k = 1; k < n; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) {
        why = "invalid UTF-8 at " + std::to_string(i);
        return false;
      }
      cp = (cp << 6) | (d & 0x3f);
    }
    const bool overlong = (n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000);
    const bool unsafe = (cp >= 0x80 && cp < 0xa0) || (cp >= 0x202a && cp <= 0x202e) ||
                        (cp >= 0x2066 && cp <= 0x2069) || cp == 0x200e || cp == 0x200f ||
                        (cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff;
    if (overlong || unsafe) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "U+%04X at %zu", unsigned(cp), i);
      why = buf;
      return false;
    }
    i += n;
  }
  return true;
}

std::string escape_for_test(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    char buf[8];
    std::snprintf(buf, sizeof buf, c >= 0x20 && c < 0x7f ? "%c" : "<%02x>", c);
    out += buf;
  }
  return out;
}

std::string packed_string(const std::string& s) {
  msgpack::sbuffer b;
  msgpack::pack(b, s);
  return std::string(b.data(), b.size());
}

// A segment with one entry per hostile sequence in its key, in a tag, in a
// msgpack string value and in a raw value.
struct HostileSegment {
  testing::ScopedName name{"hostile"};
  Cache cache = Cache::open(testing::small_config(name.name, 1u << 20, 2));
  HostileSegment() {
    int i = 0;
    for (const std::string& h : hostile()) {
      const std::string tag = "t" + std::to_string(i) + h;
      SetOptions o{std::chrono::minutes(30), {tag}};
      EXPECT_EQ(cache.set("key" + std::to_string(i) + h, packed_string("val" + h + "ue"), o),
                Errc::ok);
      EXPECT_EQ(cache.set("raw" + std::to_string(i) + h, "r" + h + "aw", o), Errc::ok);
      ++i;
    }
  }
};

TEST(Untrusted, TextDumpsEscapeEveryUnprintableByte) {
  HostileSegment s;
  for (const Result& r : {dump(s.name.name, "--width", "2000"), dump(s.name.name, "--stripes"),
                          dump(s.name.name, "--json"), hc("stats", s.name.name)}) {
    ASSERT_EQ(r.code, 0) << show(r);
    std::string why;
    EXPECT_TRUE(terminal_safe(r.out, why)) << why << " in:\n" << r.out;
    EXPECT_TRUE(terminal_safe(r.err, why)) << why;
  }
  const Result r = dump(s.name.name, "--width", "2000");
  EXPECT_TRUE(has(r.out, "entries   28 shown")) << r.out;
  for (const char* escaped : {"\\x1b]0;pwned\\x07", "\\x1b[2J", "\\u009b31m", "\\u202e", "\\x7f",
                              "\\xff\\xfe\\xc0\\xaf", "\\u2066", "\\u200e", "\\u200f"}) {
    EXPECT_TRUE(has(r.out, escaped)) << "missing " << escaped << " in:\n" << r.out;
  }
  // Printable UTF-8 is shown as it is.
  ASSERT_EQ(s.cache.set("caf\xc3\xa9", packed_string("cr\xc3\xa8me")), Errc::ok);
  EXPECT_TRUE(has(dump(s.name.name, "--prefix", "caf").out, "caf\xc3\xa9"));
  EXPECT_TRUE(has(dump(s.name.name, "--prefix", "caf").out, "\"cr\xc3\xa8me\""));
}

// A tag recorded in the wrong generation slot is reported by --check, with
// the tag in the message: escaped there too.
TEST(Untrusted, CheckEscapesTheTagsItReports) {
  testing::ScopedName n{"hostile"};
  Cache cache = Cache::open(testing::small_config(n.name, 1u << 20, 1));
  const std::string tag = std::string("t\x1b]0;pwned\x07\x1b[2J\xc2\x9b\xe2\x80\xae", 16);
  SetOptions o{std::chrono::minutes(30), {tag}};
  ASSERT_EQ(cache.set("k", "v", o), Errc::ok);
  Segment& seg = detail::Access::segment(cache);
  auto view = arena::StripeView::over(seg.stripe_base(0), seg.geometry());
  std::uint64_t at = UINT64_MAX;
  arena::walk(
      view, view.hdr->tail, view.hdr->head,
      [&](std::uint64_t off, const layout::EntryHeader& h) {
        if (h.live && h.ntags == 1) at = off;
      },
      nullptr, nullptr);
  ASSERT_NE(at, UINT64_MAX);
  auto* h = reinterpret_cast<layout::EntryHeader*>(view.arena + at);
  h->tag_slot[0] ^= 1;
  h->checksum = arena::checksum_of(view.arena + at, *h);
  for (const Result& r : {dump(n.name, "--check"), dump(n.name, "--check", "--json")}) {
    EXPECT_EQ(r.code, 1) << show(r);
    EXPECT_TRUE(has(r.out, "wrong generation slot")) << r.out;
    std::string why;
    EXPECT_TRUE(terminal_safe(r.out, why)) << why << " in:\n" << r.out;
  }
  EXPECT_TRUE(has(dump(n.name, "--check").out, "\\x1b]0;pwned\\x07")) << dump(n.name, "--check").out;
}

// In JSON, bytes that are not UTF-8 are marked as such: the binary key a\x80
// and the text key `a\x80` (a backslash, an x, an 8 and a 0) never print alike,
// in keys, tags, values or the keys of a msgpack map.
TEST(Untrusted, JsonMarksWhatIsNotUtf8) {
  testing::ScopedName n{"hostile"};
  Cache cache = Cache::open(testing::small_config(n.name, 1u << 20, 2));
  const std::string binary("a\x80", 2), text = "a\\x80";
  SetOptions tb{std::chrono::minutes(30), {binary}}, tt{std::chrono::minutes(30), {text}};
  ASSERT_EQ(cache.set(binary, binary, tb), Errc::ok);
  ASSERT_EQ(cache.set(text, text, tt), Errc::ok);
  // One msgpack map holding both as keys (and both as string values).
  msgpack::sbuffer b;
  msgpack::packer<msgpack::sbuffer> pk(b);
  pk.pack_map(2);
  pk.pack(binary), pk.pack(binary);
  pk.pack(text), pk.pack(text);
  ASSERT_EQ(cache.set("map", std::string(b.data(), b.size())), Errc::ok);

  Result r = dump(n.name, "--json");
  ASSERT_EQ(r.code, 0) << show(r);
  const json doc = json::parse(r.out);
  ASSERT_EQ(doc["entries"].size(), 3u);
  std::set<std::string> keys, tags, values;
  for (const json& e : doc["entries"]) {
    if (e["key"] == "map") {
      // Both members survive, distinct.
      EXPECT_NE(e["value"].dump().find("base64"), std::string::npos) << e["value"].dump();
      const std::string v = e["value"].dump();
      EXPECT_EQ(e["value_encoding"], "msgpack");
      EXPECT_NE(v.find("a\\\\x80"), std::string::npos) << v;
      EXPECT_NE(v.find("YYA="), std::string::npos) << v;  // base64 of a\x80
      continue;
    }
    keys.insert(e["key"].dump());
    tags.insert(e["tags"][0]["name"].dump());
    values.insert(e["value"].dump() + e["value_encoding"].dump());
  }
  EXPECT_EQ(keys.size(), 2u) << r.out;
  EXPECT_EQ(tags.size(), 2u) << r.out;
  EXPECT_EQ(values.size(), 2u) << r.out;
  EXPECT_TRUE(keys.count("\"a\\\\x80\"")) << r.out;
  EXPECT_TRUE(keys.count("{\"base64\":\"YYA=\"}")) << r.out;
  // And the text dump does not show them alike either.
  r = dump(n.name);
  EXPECT_TRUE(has(r.out, "a\\\\x80") && has(r.out, "a\\x80")) << r.out;
}

// Runs a binary with stdout on a pseudo-terminal (stderr discarded) and
// returns what the terminal received.
std::string run_on_terminal(const char* bin, const std::vector<std::string>& args) {
  int master = -1, slave = -1;
  if (::openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) return "<no pty>";
  termios t{};
  ::tcgetattr(slave, &t);
  t.c_oflag &= ~tcflag_t(OPOST);  // bytes as written: no \n -> \r\n
  ::tcsetattr(slave, TCSANOW, &t);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(slave, 1);
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 2);
    std::vector<char*> argv{const_cast<char*>(bin)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(bin, argv.data());
    ::_exit(127);
  }
  ::close(slave);
  std::string got;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;  // EIO once the child closed the terminal
    got.append(buf, std::size_t(n));
  }
  ::close(master);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return got;
}

// `hostcache get` on a terminal: the value is escaped; piped or --raw it is
// the exact bytes.
TEST(Untrusted, GetEscapesAValueOnATerminalOnly) {
  testing::ScopedName n{"hostile"};
  Cache cache = Cache::open(testing::small_config(n.name, 1u << 20, 2));
  const std::string value = "x\x1b]0;pwned\x07\x1b[2J\xc2\x9b\xe2\x80\xae\x7f";
  ASSERT_EQ(cache.set("k", value), Errc::ok);
  const std::string shown = run_on_terminal(HOSTCACHE_BIN, {"get", n.name, "k"});
  std::string why;
  EXPECT_TRUE(terminal_safe(shown, why)) << why << ": " << escape_for_test(shown);
  EXPECT_EQ(shown, "x\\x1b]0;pwned\\x07\\x1b[2J\\u009b\\u202e\\x7f\n");
  EXPECT_EQ(run_on_terminal(HOSTCACHE_BIN, {"get", n.name, "k", "--raw"}), value);
  EXPECT_EQ(hc("get", n.name, "k").out, value + "\n");
}

// ---- every tool has --help, naming the new overrides ---------------------------------

TEST(Untrusted, HelpNamesTheOverrides) {
  Result r = hc("--help");
  EXPECT_EQ(r.code, 0) << show(r);
  EXPECT_TRUE(has(r.out, "save") && has(r.out, "load")) << r.out;
  r = dump("--help");
  EXPECT_EQ(r.code, 0) << show(r);
  for (const char* flag : {"--allow-foreign", "--max-stripe-bytes", "--max-read-bytes"}) {
    EXPECT_TRUE(has(r.out, flag)) << flag << " in\n" << r.out;
  }
  for (const char* cmd : {"stats", "save", "load", "get", "set", "clear"}) {
    r = hc(cmd, "--help");
    EXPECT_EQ(r.code, 0) << cmd;
    EXPECT_TRUE(has(r.out, "--allow-foreign")) << cmd << ":\n" << r.out;
  }
  r = hc("save", "--help");
  EXPECT_TRUE(has(r.out, "--max-stripe-bytes")) << r.out;
}

}  // namespace
}  // namespace hostcache
