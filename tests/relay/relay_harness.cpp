#include "relay_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace hostcache::relay::harness {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/hcrelay-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

int listen_loopback(int& port, int backlog, const char* who) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, backlog) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(std::string(who) + ": bind/listen failed");
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    throw std::runtime_error("bind failed");
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string unique_segment(const std::string& stem) {
  static std::atomic<int> n{0};
  static const unsigned salt = std::random_device{}() % 100000;
  return stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++) + "-" + std::to_string(salt);
}

bool await(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= end) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, argv[0].c_str(), &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("posix_spawn " + argv[0] + ": " + std::strerror(rc));
  return pid;
}

int reap(pid_t pid, std::chrono::milliseconds grace) {
  const auto end = std::chrono::steady_clock::now() + grace;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() >= end) {
      ::kill(pid, SIGKILL);
      ::kill(pid, SIGCONT);
      ::waitpid(pid, &status, 0);
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- Redis ------------------------------------------------------------------

RedisClient::RedisClient(int port) {
  timeval tv{2, 0};
  c_ = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (c_ && !c_->err) redisSetTimeout(c_, tv);
}

RedisClient::~RedisClient() {
  if (c_) redisFree(c_);
}

Reply RedisClient::cmd(const std::vector<std::string>& args) {
  if (!ok()) return nullptr;
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  return Reply(static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), argv.data(), lens.data())));
}

StreamId RedisClient::last_generated(const std::string& stream) {
  Reply r = cmd({"XINFO", "STREAM", stream});
  if (!r || r->type != REDIS_REPLY_ARRAY) return {};
  for (std::size_t i = 0; i + 1 < r->elements; i += 2) {
    if (std::string_view(r->element[i]->str, r->element[i]->len) == "last-generated-id") {
      return StreamId::parse(std::string_view(r->element[i + 1]->str, r->element[i + 1]->len)).value_or(StreamId{});
    }
  }
  return {};
}

std::uint64_t RedisClient::length(const std::string& stream) {
  Reply r = cmd({"XLEN", stream});
  return r && r->type == REDIS_REPLY_INTEGER ? std::uint64_t(r->integer) : 0;
}

RedisServer::RedisServer(std::string dir, int port, std::vector<std::string> extra)
    : dir_(std::move(dir)), port_(port), extra_(std::move(extra)) {}

RedisServer::~RedisServer() {
  if (pid_ > 0) kill9();
}

void RedisServer::start() {
  std::vector<std::string> argv{HOSTCACHE_REDIS_SERVER, "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                "--dir", dir_, "--daemonize", "no", "--protected-mode", "no"};
  bool has_save = false;
  for (const auto& e : extra_) has_save = has_save || e == "--save";
  if (!has_save) {
    argv.push_back("--save");
    argv.push_back("");
  }
  argv.insert(argv.end(), extra_.begin(), extra_.end());
  pid_ = spawn_process(argv, dir_ + "/redis.log");
  ++starts_;
  const bool up = await(
      [&] {
        RedisClient c(port_);
        if (!c.ok()) return false;
        Reply r = c.cmd({"PING"});
        return r && r->type == REDIS_REPLY_STATUS;
      },
      std::chrono::seconds(10));
  if (!up) throw std::runtime_error("redis-server did not start: " + read_file(dir_ + "/redis.log"));
}

void RedisServer::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  reap(pid_);
  pid_ = -1;
}

void RedisServer::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  reap(pid_);
  pid_ = -1;
}

// ---- the proxy ------------------------------------------------------------------

namespace {

void set_nonblock(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void close_with_reset(int fd) {
  linger l{1, 0};  // RST instead of FIN
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

struct Pipe {
  int a = -1, b = -1;   // a: the client, b: upstream
  std::string a2b, b2a; // bytes read, not yet written
};

// Reads what `from` has and writes what it can to `to`; false on EOF or error.
bool pump(int from, int to, std::string& pending, bool readable) {
  if (readable && pending.size() < (1 << 20)) {
    char buf[16384];
    const ssize_t n = ::read(from, buf, sizeof buf);
    if (n == 0) return false;
    if (n < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (n > 0) pending.append(buf, std::size_t(n));
  }
  while (!pending.empty()) {
    const ssize_t w = ::send(to, pending.data(), pending.size(), MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      return false;
    }
    pending.erase(0, std::size_t(w));
  }
  return true;
}

}  // namespace

Proxy::Proxy(int upstream_port) : upstream_(upstream_port) {
  listen_fd_ = listen_loopback(port_, 64, "proxy");
  set_nonblock(listen_fd_);
  if (::pipe(wake_) != 0) throw std::runtime_error("pipe failed");
  set_nonblock(wake_[0]);
  thread_ = std::thread([this] { loop(); });
}

Proxy::~Proxy() {
  stop_ = true;
  const char c = 1;
  (void)!::write(wake_[1], &c, 1);
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

void Proxy::set_mode(Mode m) {
  mode_ = m;
  const char c = 1;
  (void)!::write(wake_[1], &c, 1);
}

void Proxy::loop() {
  std::vector<Pipe> pipes;
  while (!stop_) {
    const Mode m = mode_.load();
    if (m == Mode::reset) {
      for (auto& p : pipes) {
        close_with_reset(p.a);
        close_with_reset(p.b);
      }
      pipes.clear();
    }
    std::vector<pollfd> fds;
    fds.push_back({wake_[0], POLLIN, 0});
    if (m != Mode::blackhole) {
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& p : pipes) {
        fds.push_back({p.a, short(POLLIN | (p.b2a.empty() ? 0 : POLLOUT)), 0});
        fds.push_back({p.b, short(POLLIN | (p.a2b.empty() ? 0 : POLLOUT)), 0});
      }
    }
    ::poll(fds.data(), fds.size(), 100);
    char drain[64];
    while (::read(wake_[0], drain, sizeof drain) > 0) {
    }
    if (stop_ || mode_.load() != m || m == Mode::blackhole) continue;
    if (fds[1].revents & POLLIN) {
      for (;;) {
        const int c = ::accept(listen_fd_, nullptr, nullptr);
        if (c < 0) break;
        if (m == Mode::reset) {
          close_with_reset(c);
          continue;
        }
        const int u = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(std::uint16_t(upstream_));
        if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
          ::close(u);
          close_with_reset(c);
          continue;
        }
        int one = 1;
        ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblock(c);
        set_nonblock(u);
        pipes.push_back(Pipe{c, u, {}, {}});
      }
    }
    // fds[2 + 2i] and fds[3 + 2i] are pipes[i] (as they were when polled).
    const std::size_t polled = (fds.size() - 2) / 2;
    std::vector<Pipe> keep;
    for (std::size_t i = 0; i < pipes.size(); ++i) {
      Pipe& p = pipes[i];
      bool ok = true;
      if (i < polled) {
        const short ra = fds[2 + 2 * i].revents, rb = fds[3 + 2 * i].revents;
        if ((ra | rb) & (POLLERR | POLLNVAL)) ok = false;
        ok = ok && pump(p.a, p.b, p.a2b, ra & (POLLIN | POLLHUP));
        ok = ok && pump(p.b, p.a, p.b2a, rb & (POLLIN | POLLHUP));
      }
      if (ok) {
        keep.push_back(std::move(p));
      } else {
        ::close(p.a);
        ::close(p.b);
      }
    }
    pipes = std::move(keep);
  }
  for (auto& p : pipes) {
    ::close(p.a);
    ::close(p.b);
  }
}

// ---- relay processes ----------------------------------------------------------------

void RelayProcess::start() {
  std::vector<std::string> argv{HOSTCACHE_RELAY_BIN};
  argv.insert(argv.end(), args_.begin(), args_.end());
  pid_ = spawn_process(argv, log_);
}

void RelayProcess::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  reap(pid_);
  pid_ = -1;
}

void RelayProcess::pause() {
  if (pid_ > 0) ::kill(pid_, SIGSTOP);
}

void RelayProcess::resume() {
  if (pid_ > 0) ::kill(pid_, SIGCONT);
}

void RelayProcess::terminate() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGCONT);
  ::kill(pid_, SIGTERM);
  reap(pid_);
  pid_ = -1;
}

int RelayProcess::wait() {
  if (pid_ <= 0) return -1;
  const int status = reap(pid_, std::chrono::seconds(10));
  pid_ = -1;
  return status;
}

double RelayProcess::cpu_seconds() const {
  if (pid_ <= 0) return 0;
  const std::string stat = read_file("/proc/" + std::to_string(pid_) + "/stat");
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

}  // namespace hostcache::relay::harness
