#include "routes.h"

#include <hostcache/memoize.h>
#include <hostcache/stats.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

namespace prefork {
namespace {

using json = nlohmann::json;

constexpr const char* kUsage =
    "GET /metadata/{app}/{model}?user=U, POST /schema-changed/{app}/{model}, POST /clear, "
    "GET /stats";

Response json_response(http::status status, const json& body, unsigned version, bool keep_alive) {
  Response res{status, version};
  res.set(http::field::server, "hostcache-prefork-server");
  res.set(http::field::content_type, "application/json");
  res.set("X-Worker-Pid", std::to_string(::getpid()));
  res.keep_alive(keep_alive);
  res.body() = body.dump();
  res.prepare_payload();
  return res;
}

Response reply(const Request& req, const json& body) {
  return json_response(http::status::ok, body, req.version(), req.keep_alive());
}

Response error(const Request& req, http::status status, const std::string& message) {
  return json_response(status, {{"error", message}, {"status", static_cast<int>(status)}},
                       req.version(), req.keep_alive());
}

// The request target split into path segments and query parameters. Nothing
// is percent-decoded: every name this server accepts is [A-Za-z0-9_], so an
// encoded character is simply an invalid name.
struct Target {
  std::vector<std::string> path;  // "/a/b" -> {"a", "b"}
  std::map<std::string, std::string, std::less<>> query;
};

Target split_target(std::string_view target) {
  Target t;
  const std::size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  if (path.starts_with('/')) path.remove_prefix(1);
  while (!path.empty()) {
    const std::size_t slash = path.find('/');
    t.path.emplace_back(path.substr(0, slash));
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
  }
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    const std::size_t eq = pair.find('=');
    t.query[std::string(pair.substr(0, eq))] =
        eq == std::string_view::npos ? std::string() : std::string(pair.substr(eq + 1));
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
  }
  return t;
}

// Empty when every name is valid, else the message for the first bad one.
std::string check_names(std::initializer_list<std::pair<const char*, const std::string*>> names) {
  for (const auto& [what, value] : names) {
    if (!valid_name(*value)) return std::string(what) + " must match [A-Za-z0-9_]{1,64}";
  }
  return {};
}

json stats_json(const hostcache::Cache& cache, const Roster& roster) {
  const hostcache::Stats s = cache.stats();
  json methods = json::array();
  for (const hostcache::MethodStats& m : hostcache::method_stats(cache)) {
    methods.push_back({{"method", m.method},
                       {"requests", m.requests},
                       {"hits", m.hits},
                       {"misses", m.misses},
                       {"hit_ratio", m.hit_ratio()},
                       {"mean_hit_ms", m.mean_hit_ms()},
                       {"mean_miss_ms", m.mean_miss_ms()},
                       {"improvement_percent", m.improvement_percent()},
                       {"bytes", m.bytes}});
  }
  json workers = json::array();
  for (unsigned i = 0; i < roster.workers.load() && i < kMaxWorkers; ++i) {
    const WorkerSlot& w = roster.slots[i];
    workers.push_back({{"slot", i},
                       {"pid", w.pid.load()},
                       {"in_flight", w.in_flight.load()},
                       {"served", w.served.load()}});
  }
  return {{"segment", std::string(cache.name())},
          {"enabled", cache.enabled()},
          {"cache",
           {{"gets", s.gets},
            {"hits", s.hits},
            {"misses", s.misses},
            {"hit_ratio", s.hit_ratio()},
            {"sets", s.sets},
            {"erases", s.erases},
            {"evictions", s.evictions},
            {"expired", s.expired},
            {"stale", s.stale},
            {"recoveries", s.recoveries},
            {"resets", s.resets},
            {"entries", s.entries},
            {"bytes_used", s.bytes_used},
            {"capacity_bytes", s.capacity_bytes}}},
          {"methods", std::move(methods)},
          {"master_pid", roster.master_pid.load()},
          {"restarts", roster.restarts.load()},
          {"workers", std::move(workers)}};
}

Response get_metadata(const Request& req, const Target& t, Routes& routes) {
  const auto user = t.query.find("user");
  if (user == t.query.end()) return error(req, http::status::bad_request, "missing ?user=");
  const std::string& app = t.path[1];
  const std::string& model = t.path[2];
  if (std::string bad = check_names({{"app", &app}, {"model", &model}, {"user", &user->second}});
      !bad.empty()) {
    return error(req, http::status::bad_request, bad);
  }
  Extractor::Result r = routes.extractor.model_metadata(app, model, user->second);
  Response res = reply(req, r.metadata);
  res.set("X-Cache", r.computed ? "miss" : "hit");
  return res;
}

Response post_schema_changed(const Request& req, const Target& t, Routes& routes) {
  const std::string& app = t.path[1];
  const std::string& model = t.path[2];
  if (std::string bad = check_names({{"app", &app}, {"model", &model}}); !bad.empty()) {
    return error(req, http::status::bad_request, bad);
  }
  // One O(1) increment of the model's tag generation: every worker's next read
  // of any of the model's five methods misses, for every user.
  const std::string tag = hostcache::model_tag(app, model);
  routes.cache.invalidate(tag);
  return reply(req, {{"invalidated", tag}});
}

Response route(const Request& req, Routes& routes) {
  const Target t = split_target(std::string_view(req.target().data(), req.target().size()));
  const std::size_t n = t.path.size();
  const std::string_view first = n > 0 ? std::string_view(t.path[0]) : std::string_view();
  // Which endpoint the path names, and the method it takes.
  http::verb expected;
  if (first == "metadata" && n == 3) {
    expected = http::verb::get;
  } else if (first == "schema-changed" && n == 3) {
    expected = http::verb::post;
  } else if (first == "clear" && n == 1) {
    expected = http::verb::post;
  } else if (first == "stats" && n == 1) {
    expected = http::verb::get;
  } else {
    return error(req, http::status::not_found, std::string("no such endpoint; try ") + kUsage);
  }
  if (req.method() != expected) {
    Response res = error(req, http::status::method_not_allowed,
                         "use " + std::string(http::to_string(expected)));
    res.set(http::field::allow, http::to_string(expected));
    return res;
  }
  if (first == "metadata") return get_metadata(req, t, routes);
  if (first == "schema-changed") return post_schema_changed(req, t, routes);
  if (first == "clear") {
    routes.cache.clear();  // O(1): every worker's next read misses
    return reply(req, {{"cleared", std::string(routes.cache.name())}});
  }
  return reply(req, stats_json(routes.cache, routes.roster));
}

}  // namespace

Response handle(const Request& request, Routes& routes) {
  try {
    return route(request, routes);
  } catch (const std::exception& e) {
    return error(request, http::status::internal_server_error, e.what());
  }
}

Response malformed_request(const std::string& why) {
  return json_response(http::status::bad_request,
                       {{"error", "malformed request: " + why}, {"status", 400}}, 11, false);
}

}  // namespace prefork
