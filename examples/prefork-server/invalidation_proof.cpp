// The invalidation proof of scripts/demo-server.sh: an invalidation sent to
// one worker is seen by every worker at once, and touches nothing else.
//
// It holds one keep-alive connection to each worker (the kernel hands each
// new connection to whichever worker accepts first; it opens connections
// until every worker in /stats has one), reads two models through each, sends
// POST /schema-changed for the first model to one worker only, then reads both
// models through each connection again. Each /metadata answer says whether
// that request computed (X-Cache) and when and where the value was computed
// (computed_at_us, computed_by_pid): after the invalidation every worker must
// serve a newly computed value of the first model (the first to ask computes
// it; the others get that value, through the cache) and the old value of the
// second.
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "loadgen.h"
#include "metadata.h"

namespace prefork {
namespace {

using json = nlohmann::json;

struct Seen {
  std::string x_cache;
  std::int64_t computed_at_us = 0;
  int computed_by = 0;
  bool correct = false;  // the metadata asked for, apart from computed_*

  bool same_value(const Seen& o) const {
    return computed_at_us == o.computed_at_us && computed_by == o.computed_by;
  }
};

Seen read(Client& client, const ProofOptions& o, const std::string& model) {
  const Client::Response res = client.get("/metadata/" + o.app + "/" + model + "?user=" + o.user);
  json expected = describe(o.app, model, o.user);
  expected.erase("computed_at_us");
  expected.erase("computed_by_pid");
  const json body = json::parse(res.body(), nullptr, false);
  Seen s;
  s.x_cache = header(res, "X-Cache");
  s.correct = res.result() == http::status::ok && deterministic_part(res.body()) == expected;
  if (s.correct) {
    s.computed_at_us = body["computed_at_us"].get<std::int64_t>();
    s.computed_by = body["computed_by_pid"].get<int>();
  }
  return s;
}

std::string when(const Seen& s) {
  const time_t secs = time_t(s.computed_at_us / 1000000);
  tm local{};
  ::localtime_r(&secs, &local);
  char text[64];
  std::snprintf(text, sizeof text, "%02d:%02d:%02d.%06d by pid %d", local.tm_hour, local.tm_min,
                local.tm_sec, int(s.computed_at_us % 1000000), s.computed_by);
  return text;
}

// One open connection to each live worker, keyed by its pid.
std::map<int, std::unique_ptr<Client>> connect_to_every_worker(const ProofOptions& o) {
  Client control(o.host, o.port);
  const json stats = json::parse(control.get("/stats").body());
  std::set<int> pids;
  for (const json& w : stats["workers"]) {
    if (w["pid"].get<int>() != 0) pids.insert(w["pid"].get<int>());
  }
  std::map<int, std::unique_ptr<Client>> clients;
  for (int attempt = 0; attempt < 200 && clients.size() < pids.size(); ++attempt) {
    auto c = std::make_unique<Client>(o.host, o.port);
    const int pid = std::stoi(header(c->get("/stats"), "X-Worker-Pid"));
    if (pids.count(pid) != 0 && clients.count(pid) == 0) clients.emplace(pid, std::move(c));
  }
  if (clients.size() < pids.size()) {
    std::printf("  (reached %zu of %zu workers; the kernel kept choosing the same ones)\n",
                clients.size(), pids.size());
  }
  return clients;
}

}  // namespace

int prove_invalidation(const ProofOptions& o) {
  std::map<int, std::unique_ptr<Client>> clients = connect_to_every_worker(o);
  if (clients.empty()) return 1;
  Client& first = *clients.begin()->second;
  read(first, o, o.model);  // computed here if nothing had cached them yet
  read(first, o, o.other);

  std::map<int, Seen> model_before, other_before;
  for (auto& [pid, c] : clients) {
    model_before[pid] = read(*c, o, o.model);
    other_before[pid] = read(*c, o, o.other);
  }
  const Seen& reference = model_before.begin()->second;
  std::printf(
      "  %zu workers, one keep-alive connection to each. Before: every worker serves\n"
      "  %s.%s computed at %s (X-Cache: %s)\n",
      clients.size(), o.app.c_str(), o.model.c_str(), when(reference).c_str(),
      reference.x_cache.c_str());

  const int target = clients.begin()->first;
  first.post("/schema-changed/" + o.app + "/" + o.model);
  std::printf("  POST /schema-changed/%s/%s sent to worker %d only; then, on each connection:\n",
              o.app.c_str(), o.model.c_str(), target);

  bool proven = true;
  std::set<std::pair<std::int64_t, int>> new_values;
  for (auto& [pid, c] : clients) {
    const Seen m = read(*c, o, o.model), other = read(*c, o, o.other);
    const bool recomputed = m.correct && !m.same_value(model_before[pid]);
    const bool kept = other.correct && other.same_value(other_before[pid]);
    proven = proven && recomputed && kept && model_before[pid].same_value(reference);
    new_values.insert({m.computed_at_us, m.computed_by});
    std::printf("    worker %-7d %s.%s %-4s %s (%s)   %s.%s %-4s %s\n", pid, o.app.c_str(),
                o.model.c_str(), m.x_cache.c_str(), recomputed ? "recomputed" : "NOT RECOMPUTED",
                when(m).c_str(), o.app.c_str(), o.other.c_str(), other.x_cache.c_str(),
                kept ? "unchanged" : "CHANGED");
  }
  if (proven) {
    std::printf(
        "  proven: one invalidation, sent to one worker, made every worker's next read of\n"
        "  %s.%s a fresh value (%zu computation%s, shared through the cache); %s.%s stayed "
        "cached\n",
        o.app.c_str(), o.model.c_str(), new_values.size(), new_values.size() == 1 ? "" : "s",
        o.app.c_str(), o.other.c_str());
  } else {
    std::printf("  NOT PROVEN: see the lines above\n");
  }
  std::fflush(stdout);
  return proven ? 0 : 1;
}

}  // namespace prefork
