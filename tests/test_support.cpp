#include "test_support.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <stdexcept>

#include <xxhash.h>

#include "clock.h"

namespace hostcache::testing {

std::string unique_name(const std::string& stem) {
  static std::atomic<int> counter{0};
  static const std::uint64_t salt = std::random_device{}();
  return stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(salt % 100000);
}

Config small_config(const std::string& name, std::size_t capacity, unsigned stripes) {
  Config c;
  c.name = name;
  c.capacity_bytes = capacity;
  c.stripes = stripes;
  c.max_value_bytes = 64 << 10;
  return c;
}

pid_t spawn(const std::function<int()>& fn) {
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int rc = 99;
    try {
      rc = fn();
    } catch (...) {
      rc = 99;
    }
    ::_exit(rc);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::vector<int> run_children(int n, const std::function<int(int)>& fn) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) pids.push_back(spawn([&fn, i] { return fn(i); }));
  std::vector<int> statuses;
  for (pid_t p : pids) statuses.push_back(wait_for(p));
  return statuses;
}

void* shared_memory(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
  return p;
}

FakeClock::FakeClock(std::int64_t start_ms) : now_(new std::int64_t(start_ms)) {
  clock::set_fake_for_testing(now_);
}
FakeClock::~FakeClock() {
  clock::set_fake_for_testing(nullptr);
  delete now_;
}
void FakeClock::advance(std::int64_t ms) { std::atomic_ref<std::int64_t>(*now_).fetch_add(ms); }
std::int64_t FakeClock::now() const { return std::atomic_ref<std::int64_t>(*now_).load(); }

// Layout: "<key>|<version>|<filler...>|<16 hex checksum>".
std::string make_value(const std::string& key, std::uint64_t version, std::size_t size) {
  std::string v = key + "|" + std::to_string(version) + "|";
  const std::size_t body = size > v.size() + 16 ? size - 16 : v.size();
  for (std::size_t i = v.size(); i < body; ++i) v.push_back(char('a' + (version + i) % 26));
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(XXH3_64bits(v.data(), v.size())));
  return v + hex;
}

bool verify_value(const std::string& key, const std::string& value) {
  if (value.size() < key.size() + 18 || value.compare(0, key.size() + 1, key + "|") != 0) return false;
  const std::string body = value.substr(0, value.size() - 16);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(XXH3_64bits(body.data(), body.size())));
  return value.compare(value.size() - 16, 16, hex) == 0;
}

Gate::Gate() {
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
}
Gate::~Gate() {
  ::close(fds[0]);
  if (fds[1] >= 0) ::close(fds[1]);
}
void Gate::open() {
  ::close(fds[1]);
  fds[1] = -1;
}
void Gate::wait() {
  if (fds[1] >= 0) {
    ::close(fds[1]);
    fds[1] = -1;
  }
  char c;
  while (::read(fds[0], &c, 1) < 0 && errno == EINTR) {
  }
}

pid_t spawn_rewriter(const std::string& name, const std::string& key, std::atomic<std::uint64_t>* sets,
                     const std::atomic<std::uint64_t>* quit) {
  return spawn([name, key, sets, quit] {
    Cache c = Cache::attach(name);
    std::string v(64, 'w');
    for (std::uint64_t i = 0; quit->load() == 0 && ::getppid() != 1; ++i) {
      v[0] = char('a' + i % 26);
      if (c.set(key, v) != Errc::ok) return 1;
      sets->fetch_add(1);
    }
    return 0;
  });
}

}  // namespace hostcache::testing
