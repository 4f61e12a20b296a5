// prefork-loadgen — drives the prefork server and checks every answer.
//
//   prefork-loadgen load --port P [--seconds 5] [--connections 8] [--server-stats]
//   prefork-loadgen prove-invalidation --port P
//
// load: N keep-alive connections, one thread each, send
// GET /metadata/{app}/{model}?user=U for a fixed set of models and users until
// the time is up. Every response is checked: status 200, a JSON body, equal to
// describe(app, model, user) apart from computed_*. Prints requests/s, latency
// p50/p99 and the share served from the cache. Exits 1 if any request failed
// or any answer was wrong.
//
// prove-invalidation: see invalidation_proof.cpp.
#include "loadgen.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "metadata.h"

namespace prefork {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

json deterministic_part(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    j.erase("computed_at_us");
    j.erase("computed_by_pid");
  }
  return j;
}

std::string header(const Client::Response& res, const char* name) {
  const auto it = res.find(name);
  return it == res.end() ? std::string() : std::string(it->value());
}

namespace {

struct LoadOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 0;
  double seconds = 5;
  unsigned connections = 8;
  std::string app = "shop";
  unsigned models = 8;
  unsigned users = 4;
  std::string label = "load";
  bool server_stats = false;
};

// What one connection's thread saw.
struct Tally {
  std::vector<std::uint32_t> latency_us;
  std::uint64_t hits = 0;
  std::uint64_t errors = 0;  // network failures and timeouts
  std::uint64_t wrong = 0;   // not 200, not JSON, or not the metadata asked for
  std::string first_problem;
};

struct Key {
  std::string target;
  json expected;
};

std::string model_name(unsigned i) {
  static const char* const names[] = {"product",  "order",  "customer", "invoice",
                                      "shipment", "review", "coupon",   "supplier"};
  return i < std::size(names) ? names[i] : "model_" + std::to_string(i);
}

std::string user_name(unsigned i) {
  static const char* const names[] = {"alice", "bob", "carol", "dave"};
  return i < std::size(names) ? names[i] : "user_" + std::to_string(i);
}

std::vector<Key> make_keys(const LoadOptions& o) {
  std::vector<Key> keys;
  for (unsigned m = 0; m < o.models; ++m) {
    for (unsigned u = 0; u < o.users; ++u) {
      const std::string model = model_name(m), user = user_name(u);
      keys.push_back({"/metadata/" + o.app + "/" + model + "?user=" + user,
                      json(describe(o.app, model, user))});
      keys.back().expected.erase("computed_at_us");
      keys.back().expected.erase("computed_by_pid");
    }
  }
  return keys;
}

void drive(const LoadOptions& o, const std::vector<Key>& keys, unsigned index,
           Clock::time_point deadline, Tally& t) {
  Client client(o.host, o.port, std::chrono::seconds(10));
  std::minstd_rand rng(index + 1);
  t.latency_us.reserve(1 << 16);
  auto note = [&t](std::uint64_t& counter, std::string what) {
    ++counter;
    if (t.first_problem.empty()) t.first_problem = std::move(what);
  };
  while (Clock::now() < deadline) {
    const Key& key = keys[rng() % keys.size()];
    const auto start = Clock::now();
    Client::Response res;
    try {
      res = client.get(key.target);
    } catch (const std::exception& e) {
      note(t.errors, key.target + ": " + e.what());
      continue;
    }
    t.latency_us.push_back(std::uint32_t(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count()));
    if (res.result() != http::status::ok) {
      note(t.wrong, key.target + ": status " + std::to_string(res.result_int()) + " " + res.body());
    } else if (deterministic_part(res.body()) != key.expected) {
      note(t.wrong, key.target + ": unexpected body " + res.body().substr(0, 200));
    } else if (header(res, "X-Cache") == "hit") {
      ++t.hits;
    }
  }
}

double percentile_ms(const std::vector<std::uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  return sorted[std::min(sorted.size() - 1, std::size_t(q * double(sorted.size())))] / 1000.0;
}

void print_server_stats(const LoadOptions& o) {
  Client client(o.host, o.port);
  const json s = json::parse(client.get("/stats").body());
  std::printf("  server /stats, per memoized method (summed over every worker):\n");
  std::printf("    %-14s %9s %9s %7s %9s %10s %10s\n", "method", "requests", "hits", "misses",
              "hit ratio", "mean hit", "mean miss");
  // In the seed's order: the model-level call first, then the parts it composes.
  const std::vector<std::string> order{"model", "fields", "relationships", "filters", "mutations"};
  std::vector<json> methods(s["methods"].begin(), s["methods"].end());
  auto rank = [&](const json& m) {
    return std::find(order.begin(), order.end(), m["method"].get<std::string>()) - order.begin();
  };
  std::sort(methods.begin(), methods.end(),
            [&](const json& a, const json& b) { return rank(a) < rank(b); });
  for (const json& m : methods) {
    std::printf("    %-14s %9llu %9llu %7llu %8.1f%% %7.3f ms %7.2f ms\n",
                m["method"].get<std::string>().c_str(), m["requests"].get<unsigned long long>(),
                m["hits"].get<unsigned long long>(), m["misses"].get<unsigned long long>(),
                100 * m["hit_ratio"].get<double>(), m["mean_hit_ms"].get<double>(),
                m["mean_miss_ms"].get<double>());
  }
  const json& c = s["cache"];
  std::printf("    segment '%s': %llu entries, %llu bytes used of %llu; %llu workers restarted\n",
              s["segment"].get<std::string>().c_str(), c["entries"].get<unsigned long long>(),
              c["bytes_used"].get<unsigned long long>(),
              c["capacity_bytes"].get<unsigned long long>(),
              s["restarts"].get<unsigned long long>());
}

int run_load(const LoadOptions& o) {
  const std::vector<Key> keys = make_keys(o);
  std::vector<Tally> tallies(o.connections);
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < o.connections; ++i) {
    threads.emplace_back(drive, std::cref(o), std::cref(keys), i, deadline, std::ref(tallies[i]));
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

  Tally all;
  for (Tally& t : tallies) {
    all.latency_us.insert(all.latency_us.end(), t.latency_us.begin(), t.latency_us.end());
    all.hits += t.hits;
    all.errors += t.errors;
    all.wrong += t.wrong;
    if (all.first_problem.empty()) all.first_problem = t.first_problem;
  }
  std::sort(all.latency_us.begin(), all.latency_us.end());
  const std::size_t n = all.latency_us.size();
  std::printf(
      "%s: %zu requests in %.1f s over %u connections = %.0f req/s; latency p50 %.2f ms, "
      "p99 %.2f ms; served from cache %.1f%%; %llu errors, %llu wrong answers\n",
      o.label.c_str(), n, elapsed, o.connections, double(n) / elapsed,
      percentile_ms(all.latency_us, 0.50), percentile_ms(all.latency_us, 0.99),
      n == 0 ? 0.0 : 100.0 * double(all.hits) / double(n),
      static_cast<unsigned long long>(all.errors), static_cast<unsigned long long>(all.wrong));
  if (!all.first_problem.empty()) std::printf("  first problem: %s\n", all.first_problem.c_str());
  if (o.server_stats) print_server_stats(o);
  std::fflush(stdout);
  return n > 0 && all.errors == 0 && all.wrong == 0 ? 0 : 1;
}

}  // namespace
}  // namespace prefork

int main(int argc, char** argv) {
  prefork::LoadOptions load;
  prefork::ProofOptions proof;
  CLI::App app{"Load generator and invalidation proof for prefork-server."};
  app.option_defaults()->always_capture_default();
  app.require_subcommand(1);

  CLI::App* l = app.add_subcommand("load", "Drive the server and verify every response");
  l->add_option("--host", load.host, "Server address");
  l->add_option("-p,--port", load.port, "Server port")->required();
  l->add_option("-s,--seconds", load.seconds, "How long to drive it")
      ->check(CLI::Range(0.1, 3600.0));
  l->add_option("-c,--connections", load.connections, "Keep-alive connections, one thread each")
      ->check(CLI::Range(1u, 1024u));
  l->add_option("--app", load.app, "App of the models requested");
  l->add_option("--models", load.models, "Distinct models requested")
      ->check(CLI::Range(1u, 10000u));
  l->add_option("--users", load.users, "Distinct users requested")->check(CLI::Range(1u, 10000u));
  l->add_option("--label", load.label, "Prefix of the result line");
  l->add_flag("--server-stats", load.server_stats, "Print the server's /stats afterwards");

  CLI::App* p = app.add_subcommand(
      "prove-invalidation", "Show that an invalidation sent to one worker reaches every worker");
  p->add_option("--host", proof.host, "Server address");
  p->add_option("-p,--port", proof.port, "Server port")->required();
  p->add_option("--app", proof.app, "App of both models");
  p->add_option("--model", proof.model, "Model to invalidate");
  p->add_option("--other", proof.other, "Model that must stay cached");
  p->add_option("--user", proof.user, "User to read as");
  CLI11_PARSE(app, argc, argv);

  try {
    return l->parsed() ? prefork::run_load(load) : prefork::prove_invalidation(proof);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork-loadgen: %s\n", e.what());
    return 1;
  }
}
