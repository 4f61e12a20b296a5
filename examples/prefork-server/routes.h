// routes.h — the server's endpoints: one parsed HTTP request in, one response
// out. Beast parses and serialises; this file only decides what to answer.
//
//   GET  /metadata/{app}/{model}?user=U   the model's metadata for U (memoized, per user)
//   POST /schema-changed/{app}/{model}    invalidates every cached entry of that model
//   POST /clear                           clears the whole cache
//   GET  /stats                           cache, per-method and per-worker statistics
//
// Every response is JSON and carries X-Worker-Pid (which worker answered);
// /metadata also carries X-Cache: hit or miss (whether this request computed).
// Errors are 4xx with {"error": "...", "status": N}.
//
// Thread-safety: a Routes is used by one thread (a worker is single-threaded);
// what it refers to (Cache, Extractor, Roster) is safe across processes.
#pragma once

#include <hostcache/cache.h>

#include <boost/beast/http.hpp>
#include <string>

#include "metadata.h"
#include "roster.h"

namespace prefork {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

struct Routes {
  hostcache::Cache& cache;
  Extractor& extractor;
  const Roster& roster;
};

// The answer to `request`. Never throws: a failure inside a handler is a 500.
Response handle(const Request& request, Routes& routes);

// The answer to bytes Beast could not parse as a request (the connection is
// then closed).
Response malformed_request(const std::string& why);

}  // namespace prefork
