// test_prefork.cpp — the prefork server end to end: the real binary, a master
// and its forked workers on a free loopback port, driven over HTTP.
//
// What must hold: every endpoint answers as documented; one user's metadata
// is never served to another; a worker killed with SIGKILL under load is
// respawned and every later request succeeds with correct, fresh metadata;
// SIGTERM lets an in-flight request finish, then everything exits 0 and no
// process is left. Conditions are awaited by polling with a deadline; no
// assertion depends on timing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "http_client.h"
#include "metadata.h"
#include "test_support.h"

namespace {

using json = nlohmann::json;
using prefork::Client;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto kDeadline = 30s;  // for any awaited condition; generous for a loaded 2-core box

// Polls `condition` until it holds (true) or `limit` passes (false).
bool eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds limit = kDeadline) {
  const auto deadline = Clock::now() + limit;
  while (!condition()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

bool process_gone(pid_t pid) { return ::kill(pid, 0) == -1 && errno == ESRCH; }

std::string header(const Client::Response& res, const char* name) {
  const auto it = res.find(name);
  return it == res.end() ? std::string() : std::string(it->value());
}

json body(const Client::Response& res) { return json::parse(res.body(), nullptr, false); }

// Empty if `res` is exactly the metadata of (app, model, user), apart from
// when and where it was computed; else what is wrong.
std::string check_metadata(const Client::Response& res, const std::string& app,
                           const std::string& model, const std::string& user) {
  if (res.result() != prefork::http::status::ok) {
    return "status " + std::to_string(res.result_int()) + ": " + res.body();
  }
  json got = body(res);
  if (!got.is_object()) return "not JSON: " + res.body();
  got.erase("computed_at_us");
  got.erase("computed_by_pid");
  json expected = prefork::describe(app, model, user);
  expected.erase("computed_at_us");
  expected.erase("computed_by_pid");
  return got == expected ? std::string() : "for " + user + " got " + res.body();
}

std::int64_t computed_at(const Client::Response& res) {
  return body(res)["computed_at_us"].get<std::int64_t>();
}

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One prefork-server process (and its workers) on a free port and a fresh
// segment. The destructor kills whatever a failed test left running.
class Server {
 public:
  explicit Server(const std::vector<std::string>& extra) {
    std::vector<std::string> args{PREFORK_SERVER_BIN, "--port",    "0", "--segment",
                                  segment_.name,      "--grace-s", "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    out_ = out[0];
    port_ = read_port();
  }

  ~Server() {
    if (!reaped_) {
      ::kill(pid_, SIGKILL);  // its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG)
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(out_);
  }

  unsigned short port() const { return port_; }
  pid_t pid() const { return pid_; }

  // Waits for the master to exit; returns its exit status, 128 + a signal, or
  // -1 if it is still running at the deadline.
  int wait() {
    int status = 0;
    if (!eventually([&] { return ::waitpid(pid_, &status, WNOHANG) == pid_; })) return -1;
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  int terminate() {
    ::kill(pid_, SIGTERM);
    return wait();
  }

  // GET /stats on a new connection, retried while a worker is being replaced.
  json stats() const {
    json s;
    eventually([&] {
      try {
        Client c("127.0.0.1", port_);
        s = body(c.get("/stats"));
        return s.is_object();
      } catch (const std::exception&) {
        return false;
      }
    });
    return s;
  }

  // The live workers' pids, as the master's roster reports them.
  std::set<pid_t> workers() const {
    std::set<pid_t> pids;
    const json s = stats();  // not stats()["workers"] in the loop: the temporary would die first
    for (const json& w : s["workers"]) {
      if (w["pid"].get<int>() != 0) pids.insert(w["pid"].get<int>());
    }
    return pids;
  }

 private:
  // Reads the master's stdout up to its "listening on http://127.0.0.1:PORT" line.
  unsigned short read_port() {
    std::string text;
    const std::string marker = "listening on http://127.0.0.1:";
    const auto deadline = Clock::now() + kDeadline;
    while (text.find('\n', text.find(marker)) == std::string::npos) {
      pollfd p{out_, POLLIN, 0};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left <= 0ms || ::poll(&p, 1, int(left.count())) <= 0) {
        throw std::runtime_error("no 'listening' line from the server: " + text);
      }
      char buf[512];
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) throw std::runtime_error("server exited before listening: " + text);
      text.append(buf, std::size_t(n));
    }
    return static_cast<unsigned short>(std::stoi(text.substr(text.find(marker) + marker.size())));
  }

  hostcache::testing::ScopedName segment_{"prefork"};
  pid_t pid_ = -1;
  int out_ = -1;
  unsigned short port_ = 0;
  bool reaped_ = false;
};

// SIGTERM, exit 0, and none of `workers` left.
void stop_and_check(Server& server, const std::set<pid_t>& workers) {
  EXPECT_EQ(server.terminate(), 0);
  for (pid_t pid : workers) {
    EXPECT_TRUE(eventually([&] { return process_gone(pid); }))
        << "worker " << pid << " left behind";
  }
}

TEST(PreforkServer, ServesEveryEndpoint) {
  Server server({"--workers", "4", "--extract-ms", "5"});
  const std::set<pid_t> workers = server.workers();
  ASSERT_EQ(workers.size(), 4u);
  Client c("127.0.0.1", server.port());

  const auto product = c.get("/metadata/shop/product?user=alice");
  EXPECT_EQ(check_metadata(product, "shop", "product", "alice"), "");
  EXPECT_EQ(header(product, "X-Cache"), "miss");
  EXPECT_EQ(header(product, "Content-Type"), "application/json");
  EXPECT_EQ(workers.count(std::stoi(header(product, "X-Worker-Pid"))), 1u);
  const auto product_again = c.get("/metadata/shop/product?user=alice");
  EXPECT_EQ(header(product_again, "X-Cache"), "hit");
  EXPECT_EQ(computed_at(product_again), computed_at(product));
  const auto order = c.get("/metadata/shop/order?user=alice");
  EXPECT_EQ(check_metadata(order, "shop", "order", "alice"), "");
  EXPECT_EQ(header(order, "X-Cache"), "miss");

  // The seed's report: per method, summed over every worker.
  const json stats = server.stats();
  std::set<std::string> methods;
  for (const json& m : stats["methods"]) {
    methods.insert(m["method"].get<std::string>());
    if (m["method"] == "model") {
      EXPECT_EQ(m["requests"], 3);
      EXPECT_EQ(m["hits"], 1);
      EXPECT_EQ(m["misses"], 2);
    }
  }
  EXPECT_EQ(methods,
            (std::set<std::string>{"model", "fields", "relationships", "filters", "mutations"}));
  EXPECT_GE(stats["cache"]["hits"].get<int>(), 1);
  EXPECT_EQ(stats["workers"].size(), 4u);
  EXPECT_EQ(stats["restarts"], 0);

  // Invalidating one model recomputes it and leaves the other cached.
  const auto invalidated = c.post("/schema-changed/shop/product");
  EXPECT_EQ(invalidated.result_int(), 200);
  EXPECT_EQ(body(invalidated)["invalidated"], "shop.product");
  const auto product_after = c.get("/metadata/shop/product?user=alice");
  EXPECT_EQ(header(product_after, "X-Cache"), "miss");
  EXPECT_NE(computed_at(product_after), computed_at(product));
  const auto order_after = c.get("/metadata/shop/order?user=alice");
  EXPECT_EQ(header(order_after, "X-Cache"), "hit");
  EXPECT_EQ(computed_at(order_after), computed_at(order));

  // Clearing recomputes everything.
  EXPECT_EQ(c.post("/clear").result_int(), 200);
  const auto order_cleared = c.get("/metadata/shop/order?user=alice");
  EXPECT_EQ(header(order_cleared, "X-Cache"), "miss");
  EXPECT_NE(computed_at(order_cleared), computed_at(order));

  const std::string longest(64, 'a');
  EXPECT_EQ(
      check_metadata(c.get("/metadata/shop/" + longest + "?user=bob"), "shop", longest, "bob"), "");

  struct Bad {
    prefork::http::verb method;
    std::string target;
    int status;
  };
  const auto get = prefork::http::verb::get, post = prefork::http::verb::post;
  for (const Bad& bad : std::vector<Bad>{
           {get, "/metadata/shop/product", 400},                      // no user
           {get, "/metadata/shop/product?user=", 400},                // empty user
           {get, "/metadata/shop/pro-duct?user=alice", 400},          // bad model
           {get, "/metadata/sh%20op/product?user=alice", 400},        // bad app
           {get, "/metadata/shop/product?user=al%20ice", 400},        // bad user
           {get, "/metadata/shop/" + longest + "a?user=alice", 400},  // 65 characters
           {post, "/schema-changed/shop/bad.model", 400},
           {get, "/metadata/shop?user=alice", 404},
           {get, "/", 404},
           {get, "/nope", 404},
           {post, "/metadata/shop/product?user=alice", 405},
           {get, "/schema-changed/shop/product", 405},
           {get, "/clear", 405},
           {post, "/stats", 405},
       }) {
    const auto res = c.request(bad.method, bad.target);
    EXPECT_EQ(res.result_int(), bad.status) << bad.target;
    EXPECT_EQ(body(res)["status"], bad.status) << bad.target;
    EXPECT_TRUE(body(res)["error"].is_string()) << bad.target << ": " << res.body();
    EXPECT_FALSE(header(res, "X-Worker-Pid").empty());
  }
  const auto garbage = c.send_raw("THIS IS NOT HTTP\r\n\r\n");
  EXPECT_EQ(garbage.result_int(), 400);
  EXPECT_TRUE(body(garbage)["error"].is_string()) << garbage.body();

  stop_and_check(server, workers);
}

TEST(PreforkServer, NeverServesOneUsersMetadataToAnother) {
  Server server({"--workers", "4", "--extract-ms", "2"});
  const std::set<pid_t> workers = server.workers();
  const std::vector<std::string> users{"alice", "bob", "carol", "dave"};
  const std::vector<std::string> models{"product", "order", "invoice"};
  // Every user asks for the same models at the same moment, each round on a
  // new connection (so through any worker), and always gets its own metadata.
  std::mutex mu;
  std::vector<std::string> problems;
  std::vector<std::thread> threads;
  for (const std::string& user : users) {
    threads.emplace_back([&, user] {
      for (int round = 0; round < 4; ++round) {
        Client c("127.0.0.1", server.port());
        for (const std::string& model : models) {
          std::string problem;
          try {
            problem = check_metadata(c.get("/metadata/shop/" + model + "?user=" + user), "shop",
                                     model, user);
          } catch (const std::exception& e) {
            problem = e.what();
          }
          if (!problem.empty()) {
            std::lock_guard<std::mutex> lock(mu);
            problems.push_back(user + "/" + model + ": " + problem);
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(problems.empty()) << problems.front();
  stop_and_check(server, workers);
}

TEST(PreforkServer, RespawnsAKilledWorkerAndServesCorrectlyAfterwards) {
  Server server({"--workers", "4", "--extract-ms", "5"});
  const std::set<pid_t> before = server.workers();
  ASSERT_EQ(before.size(), 4u);

  // Phase 0: load while a worker is killed; a request on a connection to it
  // may fail. Phase 1 (after the respawn and an invalidation): every request,
  // each thread on new connections, must succeed with correct metadata, and
  // "product" must have been computed after the invalidation began.
  std::atomic<int> phase{0};
  std::atomic<bool> done{false};
  std::atomic<std::int64_t> invalidated_at{0};
  std::atomic<int> phase1_requests{0};
  std::mutex mu;
  std::vector<std::string> problems;
  auto report = [&](std::string what) {
    std::lock_guard<std::mutex> lock(mu);
    problems.push_back(std::move(what));
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<std::string> models{"product", "order", "invoice"};
      const std::string user = t % 2 == 0 ? "alice" : "bob";
      int my_phase = 0;
      auto client = std::make_unique<Client>("127.0.0.1", server.port(), 10s);
      for (int i = 0; !done; ++i) {
        // A new connection on entering phase 1, and every 8 requests: spread
        // over every worker, the respawned one included.
        if (phase != my_phase || i % 8 == 0) {
          my_phase = phase;
          client = std::make_unique<Client>("127.0.0.1", server.port(), 10s);
        }
        const std::string& model = models[std::size_t(i) % models.size()];
        try {
          const auto res = client->get("/metadata/shop/" + model + "?user=" + user);
          if (std::string p = check_metadata(res, "shop", model, user); !p.empty()) {
            report("wrong answer in phase " + std::to_string(my_phase) + ": " + p);
          } else if (my_phase == 1 && model == "product" && computed_at(res) < invalidated_at) {
            report("stale product after the invalidation: " + res.body());
          }
        } catch (const std::exception& e) {
          if (my_phase == 1) report(std::string("phase 1 request failed: ") + e.what());
        }
        if (my_phase == 1) ++phase1_requests;
      }
    });
  }

  // Kill a worker that has been serving the load (it may die mid-request,
  // holding a single flight or a stripe lock).
  ASSERT_TRUE(eventually([&] { return server.stats()["cache"]["hits"].get<int>() > 20; }));
  const pid_t victim = *before.begin();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  std::set<pid_t> after;
  ASSERT_TRUE(eventually([&] {
    after = server.workers();
    return after.size() == 4 && after.count(victim) == 0;
  })) << "the killed worker was not replaced";
  EXPECT_EQ(server.stats()["restarts"], 1);
  EXPECT_TRUE(process_gone(victim));
  const std::set<pid_t> respawned = [&] {
    std::set<pid_t> s;
    for (pid_t p : after) {
      if (before.count(p) == 0) s.insert(p);
    }
    return s;
  }();
  ASSERT_EQ(respawned.size(), 1u);

  invalidated_at = now_us();
  {
    Client c("127.0.0.1", server.port());
    EXPECT_EQ(c.post("/schema-changed/shop/product").result_int(), 200);
  }
  phase = 1;
  // Until the respawned worker has served some of the load and every thread
  // has made phase 1 requests.
  const pid_t fresh = *respawned.begin();
  EXPECT_TRUE(eventually([&] {
    const json stats = server.stats();
    for (const json& w : stats["workers"]) {
      if (w["pid"] == fresh && w["served"].get<int>() > 0 && phase1_requests >= 150) return true;
    }
    return false;
  })) << "the respawned worker served nothing";
  done = true;
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(problems.empty()) << problems.size() << " problems; first: " << problems.front();

  std::set<pid_t> all = before;
  all.insert(after.begin(), after.end());
  stop_and_check(server, all);
}

TEST(PreforkServer, SigtermLetsAnInFlightRequestFinish) {
  // One extraction takes two seconds of CPU: long enough to be caught in flight.
  Server server({"--workers", "2", "--extract-ms", "2000"});
  const std::set<pid_t> workers = server.workers();
  Client c("127.0.0.1", server.port());
  const int busy = std::stoi(header(c.get("/stats"), "X-Worker-Pid"));

  Client::Response slow;
  std::string failure;
  std::atomic<bool> answered{false};
  std::thread request([&] {
    try {
      slow = c.get("/metadata/shop/slow?user=alice");
    } catch (const std::exception& e) {
      failure = e.what();
    }
    answered = true;
  });
  // Another worker answers /stats while `busy` computes. An answer from `busy`
  // itself does not count (it shows its own /stats request in flight), and
  // `busy` may have accepted a poll's connection just before it began
  // computing: such a poll waits for the computation, so it is given up after
  // a short timeout and retried on a new connection, which only the idle
  // worker can accept.
  const bool in_flight = eventually([&] {
                           if (answered) return true;  // too late: reported below
                           try {
                             Client other("127.0.0.1", server.port(), 300ms);
                             const auto res = other.get("/stats");
                             if (header(res, "X-Worker-Pid") == std::to_string(busy)) return false;
                             const json stats = body(res);
                             for (const json& w : stats["workers"]) {
                               if (w["pid"] == busy && w["in_flight"] == 1) return true;
                             }
                           } catch (const std::exception&) {
                           }
                           return false;
                         }) &&
                         !answered;
  ::kill(server.pid(), SIGTERM);
  request.join();
  ASSERT_TRUE(in_flight) << "the request was answered before it could be seen in flight";
  EXPECT_EQ(failure, "");
  EXPECT_EQ(check_metadata(slow, "shop", "slow", "alice"), "");
  EXPECT_EQ(header(slow, "X-Worker-Pid"), std::to_string(busy));

  EXPECT_EQ(server.wait(), 0);
  for (pid_t pid : workers) {
    EXPECT_TRUE(eventually([&] { return process_gone(pid); }))
        << "worker " << pid << " left behind";
  }
  Client late("127.0.0.1", server.port(), 5s);
  EXPECT_THROW(late.get("/stats"), std::exception) << "still accepting after exit";
}

}  // namespace
