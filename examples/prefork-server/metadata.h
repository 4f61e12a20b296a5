// metadata.h — the prefork server's "metadata extractor": the expensive,
// per-user computation the server memoizes in hostcache.
//
// It stands in for the seed framework's model metadata extraction (fields,
// relationships, filters, mutations), which costs 50-100 ms per call. Here each
// of the four parts burns a quarter of a configurable CPU budget and then
// returns content derived only from (app, model, user): deterministic, so that
// tests can compare a response with describe(). The model-level result also
// records when and by which process it was computed, so that a recomputation
// (after an invalidation) is visible from outside.
//
// Thread-safety: describe() is a pure function. An Extractor holds only
// immutable state and its Cache reference; it may be shared by threads and
// used by every worker process forked after it was made.
#pragma once

#include <hostcache/cache.h>
#include <hostcache/memoize.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace prefork {

// Each struct is msgpack-encoded in the cache (as a map, so that
// `hostcache dump` shows readable entries) and JSON-encoded on the wire.
struct Field {
  std::string name;
  std::string type;
  bool nullable = false;
  MSGPACK_DEFINE_MAP(name, type, nullable)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(Field, name, type, nullable)
};

struct Relationship {
  std::string name;
  std::string kind;    // foreign_key, many_to_many, one_to_one
  std::string target;  // "{app}.{model}"
  MSGPACK_DEFINE_MAP(name, kind, target)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(Relationship, name, kind, target)
};

struct Filter {
  std::string field;
  std::vector<std::string> lookups;
  MSGPACK_DEFINE_MAP(field, lookups)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(Filter, field, lookups)
};

// Whether `user` may run the mutation: the per-user part of the metadata.
struct Mutation {
  std::string name;
  bool allowed = false;
  MSGPACK_DEFINE_MAP(name, allowed)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(Mutation, name, allowed)
};

struct ModelMetadata {
  std::string app;
  std::string model;
  std::string user;  // whom it was computed for: what per-user isolation is checked against
  std::vector<Field> fields;
  std::vector<Relationship> relationships;
  std::vector<Filter> filters;
  std::vector<Mutation> mutations;
  // Not deterministic: when and where the model-level extraction ran. A new
  // value means "recomputed"; the same value on two workers means "shared".
  std::int64_t computed_at_us = 0;  // start of the extraction, microseconds since the Unix epoch
  std::int32_t computed_by_pid = 0;
  MSGPACK_DEFINE_MAP(app, model, user, fields, relationships, filters, mutations, computed_at_us,
                     computed_by_pid)
  NLOHMANN_DEFINE_TYPE_INTRUSIVE(ModelMetadata, app, model, user, fields, relationships, filters,
                                 mutations, computed_at_us, computed_by_pid)
};

// The deterministic content for (app, model, user), computed_* left 0, at no
// cost. What every response must equal, apart from computed_*.
ModelMetadata describe(const std::string& app, const std::string& model, const std::string& user);

// True if `name` is a valid app, model or user: [A-Za-z0-9_]{1,64}. Keeps keys
// and tags short and unambiguous, and rejects anything needing URL decoding.
bool valid_name(const std::string& name);

// The seed's per-method TTLs (minutes): model 30, fields 15, relationships 15,
// filters 10, mutations 20. Every method is memoized per user.
class Extractor {
 public:
  // `cost` is the CPU time of one full extraction (all four parts missing).
  // REQUIRES: `cache` outlives the Extractor.
  Extractor(hostcache::Cache& cache, std::chrono::microseconds cost);

  struct Result {
    ModelMetadata metadata;
    bool computed = false;  // this call ran the model-level extraction (a miss)
  };

  // The model's metadata for `user`, from the cache or computed now (then
  // through the cross-process single flight: one worker computes, the others
  // wait for its result). REQUIRES: valid_name() of each argument.
  Result model_metadata(const std::string& app, const std::string& model, const std::string& user);

 private:
  template <class T>
  using Method = hostcache::Memoized<
      T, std::function<T(const std::string&, const std::string&, const std::string&)>>;

  std::chrono::microseconds part_cost_;
  Method<std::vector<Field>> fields_;
  Method<std::vector<Relationship>> relationships_;
  Method<std::vector<Filter>> filters_;
  Method<std::vector<Mutation>> mutations_;
  Method<ModelMetadata> model_;
};

}  // namespace prefork
