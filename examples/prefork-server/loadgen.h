// loadgen.h — what the two commands of prefork-loadgen share.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "http_client.h"

namespace prefork {

// The body of a /metadata response without its computed_* fields, or a
// discarded json if the body is not JSON. Equal to describe()'s for a correct
// answer.
nlohmann::json deterministic_part(const std::string& body);

// The value of header `name`, or "" when it is absent.
std::string header(const Client::Response& res, const char* name);

struct ProofOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 0;
  std::string app = "shop";
  std::string model = "product";  // invalidated
  std::string other = "order";    // not invalidated: must stay cached
  std::string user = "alice";
};

// Shows that an invalidation sent to one worker is seen by every worker: one
// connection per worker, each reads both models, POST /schema-changed to the
// first, each reads both again. Prints what it saw; returns 0 if proven.
int prove_invalidation(const ProofOptions& options);

}  // namespace prefork
