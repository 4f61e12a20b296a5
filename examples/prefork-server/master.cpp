#include "master.h"

#include <hostcache/cache.h>
#include <hostcache/memoize.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "roster.h"
#include "worker.h"

namespace prefork {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// A worker that dies sooner than this after it started is respawned only this
// long after its start: one that crashes at startup would otherwise be forked
// in a tight loop.
constexpr auto kMinLifetime = 1s;

struct Listener {
  int fd = -1;
  unsigned short port = 0;
  bool ipv6 = false;
};

// Binds with Asio, then keeps only the descriptor: no io_context may live
// across fork() in the master; each worker makes its own.
Listener listen_on(const std::string& host, unsigned short port) {
  namespace asio = boost::asio;
  asio::io_context io;
  const asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host), port);
  asio::ip::tcp::acceptor acceptor(io, endpoint.protocol());
  acceptor.set_option(asio::socket_base::reuse_address(true));
  acceptor.bind(endpoint);
  acceptor.listen(asio::socket_base::max_listen_connections);
  Listener l;
  l.port = acceptor.local_endpoint().port();
  l.ipv6 = endpoint.address().is_v6();
  l.fd = acceptor.release();
  return l;
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped";
}

class Master {
 public:
  Master(const ServerOptions& options, hostcache::Cache& cache, Listener listener)
      : options_(options),
        cache_(cache),
        listener_(listener),
        roster_(*Roster::create(options.workers)),
        slots_(options.workers) {
    roster_.master_pid.store(std::int32_t(::getpid()));
  }

  int run() {
    // Blocked before the first fork: a signal that comes early stays pending
    // until sigtimedwait() below (or, in a worker, until its handler exists).
    sigemptyset(&signals_);
    for (int s : {SIGTERM, SIGINT, SIGCHLD}) sigaddset(&signals_, s);
    ::sigprocmask(SIG_BLOCK, &signals_, nullptr);

    for (unsigned i = 0; i < slots_.size(); ++i) spawn(i);
    const std::string host = listener_.ipv6 ? "[" + options_.host + "]" : options_.host;
    std::printf(
        "prefork-server: listening on http://%s:%u (%zu workers, master pid %d, cache %s, "
        "segment '%s', extraction %lld ms)\n",
        host.c_str(), unsigned(listener_.port), slots_.size(), int(::getpid()),
        options_.cache ? "on" : "off", options_.segment.c_str(),
        static_cast<long long>(options_.extract_cost.count()));
    std::fflush(stdout);

    for (;;) {
      const int sig = wait_for_signal();
      if (sig == SIGTERM || sig == SIGINT) begin_stop();
      if (sig == SIGCHLD) reap();
      if (!stopping_) {
        respawn_due();
      } else if (live() == 0) {
        break;
      } else if (!forced_ && Clock::now() >= stop_deadline_) {
        kill_remaining();
      }
    }
    std::fprintf(stderr, "prefork-server: stopped%s\n",
                 clean_ ? "; every worker finished cleanly" : " (a worker did not stop cleanly)");
    return clean_ ? 0 : 1;
  }

 private:
  struct Slot {
    pid_t pid = 0;  // 0: not running
    Clock::time_point started;
    std::optional<Clock::time_point> respawn_at;
  };

  void spawn(unsigned i) {
    // Else the child inherits a copy of buffered output and prints it again.
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t master = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::fprintf(stderr, "prefork-server: fork: %s; retrying\n", std::strerror(errno));
      slots_[i].respawn_at = Clock::now() + kMinLifetime;
      return;
    }
    if (pid == 0) {
      // A master killed with SIGKILL cannot stop its workers: have the kernel
      // send them SIGTERM then, rather than leave orphans serving.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != master) ::_exit(1);  // it died before prctl() took effect
      int status = 1;
      try {
        status =
            run_worker(cache_, roster_, {listener_.fd, listener_.ipv6, i, options_.extract_cost});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "prefork-server: worker %d: %s\n", int(::getpid()), e.what());
      }
      std::fflush(stderr);
      ::_exit(status);  // not exit(): the master's atexit handlers and buffers are not ours
    }
    slots_[i] = {pid, Clock::now(), std::nullopt};
    roster_.slots[i].pid.store(pid);
  }

  // Waits for a signal, or for the next deadline (a respawn, the end of the
  // grace period). Returns the signal, or -1 on timeout.
  int wait_for_signal() {
    std::optional<Clock::time_point> deadline;
    if (stopping_) {
      if (!forced_) deadline = stop_deadline_;
    } else {
      for (const Slot& s : slots_) {
        if (s.respawn_at && (!deadline || *s.respawn_at < *deadline)) deadline = s.respawn_at;
      }
    }
    siginfo_t info;
    if (!deadline) return ::sigwaitinfo(&signals_, &info);
    const auto left = std::max(Clock::duration::zero(), *deadline - Clock::now());
    const auto sec = std::chrono::duration_cast<std::chrono::seconds>(left);
    const timespec ts{sec.count(), long(std::chrono::nanoseconds(left - sec).count())};
    return ::sigtimedwait(&signals_, &info, &ts);
  }

  // Reaps every dead worker at once (SIGCHLDs coalesce). Reaping promptly
  // matters beyond tidiness: hostcache takes over a dead worker's single
  // flight only once its pid is gone, and a zombie's pid is not.
  void reap() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      const auto it =
          std::find_if(slots_.begin(), slots_.end(), [&](const Slot& s) { return s.pid == pid; });
      if (it == slots_.end()) continue;
      const auto i = unsigned(it - slots_.begin());
      it->pid = 0;
      roster_.slots[i].pid.store(0);
      roster_.slots[i].in_flight.store(0);  // it may have died mid-request
      if (stopping_) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) clean_ = false;
        continue;
      }
      it->respawn_at = std::max(Clock::now(), it->started + kMinLifetime);
      std::fprintf(stderr, "prefork-server: worker %d (slot %u) %s; respawning\n", int(pid), i,
                   describe_exit(status).c_str());
    }
  }

  void respawn_due() {
    const auto now = Clock::now();
    for (unsigned i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].respawn_at || *slots_[i].respawn_at > now) continue;
      spawn(i);
      if (slots_[i].pid == 0) continue;  // fork failed; retried later
      roster_.restarts.fetch_add(1);
      std::fprintf(stderr, "prefork-server: slot %u: worker %d started\n", i, int(slots_[i].pid));
    }
  }

  void begin_stop() {
    if (stopping_) return;  // a second SIGINT/SIGTERM: already stopping
    stopping_ = true;
    // The workers hold copies: the port refuses new connections once they
    // have closed theirs too, which each does first thing on SIGTERM.
    ::close(listener_.fd);
    stop_deadline_ = Clock::now() + options_.grace;
    for (Slot& s : slots_) {
      s.respawn_at.reset();
      if (s.pid != 0) ::kill(s.pid, SIGTERM);
    }
    std::fprintf(stderr, "prefork-server: stopping; %u workers finishing their requests\n", live());
  }

  void kill_remaining() {
    forced_ = true;
    clean_ = false;
    for (const Slot& s : slots_) {
      if (s.pid == 0) continue;
      std::fprintf(stderr, "prefork-server: worker %d still busy after %llds; killing it\n",
                   int(s.pid), static_cast<long long>(options_.grace.count()));
      ::kill(s.pid, SIGKILL);
    }
  }

  unsigned live() const {
    return unsigned(
        std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.pid != 0; }));
  }

  const ServerOptions& options_;
  hostcache::Cache& cache_;
  Listener listener_;
  Roster& roster_;
  std::vector<Slot> slots_;
  sigset_t signals_{};
  bool stopping_ = false;
  bool forced_ = false;  // SIGKILL sent after the grace period
  bool clean_ = true;    // every worker exited 0 after SIGTERM
  Clock::time_point stop_deadline_;
};

}  // namespace

int run_master(const ServerOptions& options) {
  hostcache::Config config;
  config.name = options.segment;
  config.capacity_bytes = options.capacity_mb << 20;
  config.enabled = options.cache;
  hostcache::Cache cache = hostcache::Cache::open(config);
  // Once per deployment, before the fork: a worker that cleared the cache when
  // it started would drop what the others cached, and so would each respawn.
  hostcache::on_startup(cache, {.invalidate_on_startup = true, .auto_warm = false, .warmers = {}});

  Master master(options, cache, listen_on(options.host, options.port));
  const int status = master.run();
  if (options.unlink_on_exit) hostcache::Cache::remove(options.segment);
  return status;
}

}  // namespace prefork
