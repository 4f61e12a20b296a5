// tools_test_support.h — helpers of the tests that run the tool binaries
// (test_tools.cpp, test_shm_dump.cpp): run a binary and capture its exit code
// and output, and a segment populated with a little of everything.
// SHM_DUMP_BIN and HOSTCACHE_BIN are the binaries' paths, defined by CMake.
#pragma once

#include <gtest/gtest.h>
#include <hostcache/cache.h>
#include <hostcache/inspect.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "test_support.h"

namespace hostcache::tools_testing {

using testing::await_progress;

struct Result {
  int code = -1;  // exit status, or 128 + signal
  std::string out, err;
};

inline std::string slurp(int fd) {
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
inline Result run(const char* bin, const std::vector<std::string>& args) {
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
  // In a sanitizer build a tool's memory error is an exit status like any
  // other; its report must still fail the test.
  if (r.err.find("Sanitizer") != std::string::npos) ADD_FAILURE() << bin << ":\n" << r.err;
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

inline std::string show(const Result& r) {
  return "exit " + std::to_string(r.code) + "\nstdout:\n" + r.out + "stderr:\n" + r.err;
}

inline bool has(const std::string& text, const std::string& word) {
  return text.find(word) != std::string::npos;
}

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

inline std::map<std::string, inspect::EntryInfo> valid_entries(const std::string& name) {
  inspect::Filter f;
  f.state = inspect::EntryState::valid;
  std::map<std::string, inspect::EntryInfo> out;
  for (auto& e : inspect::read(name, f).entries) out[e.key] = e;
  return out;
}

}  // namespace hostcache::tools_testing
