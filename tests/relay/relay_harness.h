// relay_harness.h — real processes on loopback for the relay's tests and its
// benchmark: a redis-server on a free port (stopped by pid), hostcache-relay
// processes, and a TCP proxy with modes pass / blackhole / reset.
#pragma once

#include <hiredis/hiredis.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "relay.h"

namespace hostcache::relay::harness {

// A fresh directory under $TMPDIR, removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();
// A listening TCP socket on 127.0.0.1, on a port the kernel picks (its
// number in `port`). Throws std::runtime_error naming `who` on failure.
int listen_loopback(int& port, int backlog, const char* who);

// A unique segment name.
std::string unique_segment(const std::string& stem);

// Polls `pred` every millisecond until it holds or `timeout` passes.
bool await(const std::function<bool()>& pred, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Spawns argv[0] with argv (stdout and stderr appended to `log`).
pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log);
// Waits for pid (SIGKILL after `grace`); returns the wait status.
int reap(pid_t pid, std::chrono::milliseconds grace = std::chrono::seconds(5));

struct ReplyFree {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// A plain synchronous client (the test's own view of Redis).
class RedisClient {
 public:
  explicit RedisClient(int port);
  ~RedisClient();
  bool ok() const { return c_ != nullptr && c_->err == 0; }
  Reply cmd(const std::vector<std::string>& args);
  // XINFO STREAM's last-generated-id ({0,0} when the stream does not exist).
  StreamId last_generated(const std::string& stream);
  std::uint64_t length(const std::string& stream);

 private:
  redisContext* c_ = nullptr;
};

// redis-server on 127.0.0.1:port with its files in dir.
class RedisServer {
 public:
  RedisServer(std::string dir, int port, std::vector<std::string> extra = {});
  ~RedisServer();
  void start();             // and waits until it answers PING
  void kill9();             // SIGKILL, reaped
  void stop();              // SIGTERM, reaped
  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  std::string dir_;
  int port_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
  int starts_ = 0;
};

// Forwards 127.0.0.1:port() to 127.0.0.1:upstream.
//  pass:      forwards both ways
//  blackhole: forwards nothing and accepts nothing (connections wait in the
//             kernel's queues, as behind a dropped link)
//  reset:     resets every connection, existing and new
class Proxy {
 public:
  enum class Mode { pass, blackhole, reset };
  explicit Proxy(int upstream_port);
  ~Proxy();
  int port() const { return port_; }
  void set_mode(Mode m);

 private:
  void loop();
  int upstream_;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::atomic<Mode> mode_{Mode::pass};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// One hostcache-relay process.
class RelayProcess {
 public:
  RelayProcess(std::vector<std::string> args, std::string log) : args_(std::move(args)), log_(std::move(log)) {}
  ~RelayProcess() { terminate(); }
  void start();
  void kill9();       // SIGKILL, reaped
  void pause();       // SIGSTOP
  void resume();      // SIGCONT
  void terminate();   // SIGTERM, reaped
  int wait();         // waits for it to exit by itself (SIGKILL after 10 s); the wait status
  pid_t pid() const { return pid_; }
  const std::string& log() const { return log_; }
  // CPU seconds (user + system) so far, from /proc.
  double cpu_seconds() const;

 private:
  std::vector<std::string> args_;
  std::string log_;
  pid_t pid_ = -1;
};

std::string read_file(const std::string& path);

}  // namespace hostcache::relay::harness
