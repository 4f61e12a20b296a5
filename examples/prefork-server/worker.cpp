#include "worker.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <unordered_set>

// Boost 1.74's awaitable.hpp uses std::exchange without including <utility>.
// clang-format off
#include <utility>
#include <boost/asio.hpp>
// clang-format on
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "metadata.h"
#include "routes.h"

namespace prefork {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

constexpr auto kIdleTimeout = 30s;   // a keep-alive connection silent this long is closed
constexpr auto kWriteTimeout = 30s;  // a client that reads nothing for this long is dropped
// After SIGTERM, how long a request whose first bytes have arrived may take to
// arrive whole. Well under the master's grace period.
constexpr auto kDrainTimeout = 3s;
constexpr std::size_t kBodyLimit = 64 << 10;  // no endpoint takes a body; refuse big ones early

struct Connection {
  explicit Connection(tcp::socket socket) : stream(std::move(socket)) {}

  beast::tcp_stream stream;
  beast::flat_buffer buffer;
  bool reading = false;  // waiting for a request, or the rest of one

  // Whether part of a request has arrived (in our buffer or the socket's).
  bool has_bytes() {
    beast::error_code ec;
    return buffer.size() > 0 || stream.socket().available(ec) > 0;
  }
};

void log_failure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    std::fprintf(stderr, "prefork-server: worker %d: %s\n", int(::getpid()), x.what());
  }
}

class Worker {
 public:
  Worker(hostcache::Cache& cache, Roster& roster, const WorkerConfig& config)
      : acceptor_(io_, config.ipv6 ? tcp::v6() : tcp::v4(), config.listen_fd),
        signals_(io_, SIGTERM, SIGINT),
        drain_timer_(io_),
        extractor_(cache, config.extract_cost),
        routes_{cache, extractor_, roster},
        slot_(roster.slots[config.slot]) {}

  int run() {
    slot_.pid.store(std::int32_t(::getpid()));
    signals_.async_wait([this](beast::error_code ec, int) {
      if (!ec) stop();
    });
    // Signals that arrived since fork() were held pending; they reach the
    // handler above from here on.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);

    asio::co_spawn(io_, accept_loop(), log_failure);
    io_.run();  // returns once stopped and every connection is closed
    return 0;
  }

 private:
  asio::awaitable<void> accept_loop() {
    for (;;) {
      tcp::socket socket(io_);
      beast::error_code ec;
      co_await acceptor_.async_accept(socket, asio::redirect_error(asio::use_awaitable, ec));
      if (stopping_) co_return;
      if (ec) {  // e.g. out of file descriptors: back off instead of spinning
        asio::steady_timer pause(io_, 100ms);
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      asio::co_spawn(io_, serve(std::move(socket)), log_failure);
    }
  }

  asio::awaitable<void> serve(tcp::socket socket) {
    Connection c(std::move(socket));
    connections_.insert(&c);
    struct Forget {  // however the coroutine ends
      Worker* self;
      Connection* c;
      ~Forget() { self->forget(c); }
    } forget{this, &c};

    beast::error_code ec;
    for (;;) {
      if (stopping_ && !c.has_bytes()) break;
      http::request_parser<http::string_body> parser;
      parser.body_limit(kBodyLimit);
      c.stream.expires_after(stopping_ ? kDrainTimeout : kIdleTimeout);
      c.reading = true;
      co_await http::async_read(c.stream, c.buffer, parser,
                                asio::redirect_error(asio::use_awaitable, ec));
      c.reading = false;
      if (ec) {
        // Closed by the client, timed out, or cancelled by stop(): nothing to
        // answer. Bytes that are not HTTP: say so before closing.
        if (ec.category() == beast::http::make_error_code(http::error::bad_target).category() &&
            ec != http::error::end_of_stream && ec != http::error::partial_message) {
          Response res = malformed_request(ec.message());
          c.stream.expires_after(kWriteTimeout);
          co_await http::async_write(c.stream, res, asio::redirect_error(asio::use_awaitable, ec));
        }
        break;
      }
      Response res = answer(parser.get());
      res.keep_alive(res.keep_alive() && !stopping_);
      c.stream.expires_after(kWriteTimeout);
      co_await http::async_write(c.stream, res, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !res.keep_alive()) break;
    }
    c.stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  // The request is handled synchronously: nothing else runs in this worker
  // meanwhile, which is what the in_flight counter reports.
  Response answer(const Request& req) {
    slot_.in_flight.fetch_add(1);
    Response res = handle(req, routes_);
    slot_.in_flight.fetch_sub(1);
    slot_.served.fetch_add(1);
    return res;
  }

  void stop() {
    stopping_ = true;
    beast::error_code ec;
    acceptor_.close(ec);
    // Idle keep-alive connections close now; a connection whose request has
    // started to arrive gets kDrainTimeout to finish sending it, then its
    // answer. One writing a response closes after it (serve() checks
    // stopping_).
    for (Connection* c : connections_) {
      if (c->reading && !c->has_bytes()) c->stream.cancel();
    }
    if (connections_.empty()) return;
    drain_timer_.expires_after(kDrainTimeout);
    drain_timer_.async_wait([this](beast::error_code e) {
      if (e) return;  // cancelled: every connection finished in time
      for (Connection* c : connections_) {
        if (c->reading) c->stream.cancel();
      }
    });
  }

  void forget(Connection* c) {
    connections_.erase(c);
    // The pending drain timer would keep io_.run() going for nothing.
    if (stopping_ && connections_.empty()) drain_timer_.cancel();
  }

  asio::io_context io_{1};
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer drain_timer_;
  Extractor extractor_;
  Routes routes_;
  WorkerSlot& slot_;
  std::unordered_set<Connection*> connections_;
  bool stopping_ = false;
};

}  // namespace

int run_worker(hostcache::Cache& cache, Roster& roster, const WorkerConfig& config) {
  Worker worker(cache, roster, config);
  return worker.run();
}

}  // namespace prefork
