#include "metadata.h"

#include <time.h>
#include <unistd.h>

#include <array>
#include <string_view>

namespace prefork {
namespace {

using namespace std::chrono_literals;

// FNV-1a then a splitmix64 finalizer: a stable hash (the same in every
// process, build and run), which std::hash does not promise.
std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t stable_hash(std::string_view a, std::string_view b = {}) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::string_view part : {a, std::string_view("/"), b}) {
    for (unsigned char c : part) h = (h ^ c) * 0x100000001b3ull;
  }
  return mix(h);
}

struct FieldKind {
  const char* name;
  const char* type;
};
constexpr std::array<FieldKind, 12> kFields{{{"name", "string"},
                                             {"title", "string"},
                                             {"slug", "string"},
                                             {"price", "decimal"},
                                             {"quantity", "integer"},
                                             {"status", "string"},
                                             {"email", "string"},
                                             {"created_at", "datetime"},
                                             {"updated_at", "datetime"},
                                             {"notes", "text"},
                                             {"rating", "integer"},
                                             {"is_active", "boolean"}}};
constexpr std::array<const char*, 6> kRelated{"user",     "category", "tag",
                                              "customer", "supplier", "warehouse"};
constexpr std::array<const char*, 3> kRelationKinds{"foreign_key", "many_to_many", "one_to_one"};

std::vector<Field> make_fields(const std::string& app, const std::string& model) {
  const std::uint64_t h = stable_hash(app, model);
  std::vector<Field> fields{{"id", "integer", false}};
  const std::size_t count = 3 + h % 6, first = (h >> 8) % kFields.size();
  for (std::size_t i = 0; i < count; ++i) {
    const FieldKind& f = kFields[(first + i) % kFields.size()];
    fields.push_back({f.name, f.type, ((h >> (16 + i)) & 1) != 0});
  }
  return fields;
}

std::vector<Relationship> make_relationships(const std::string& app, const std::string& model) {
  const std::uint64_t h = stable_hash(model, app);
  std::vector<Relationship> out;
  const std::size_t count = 1 + h % 3, first = (h >> 4) % kRelated.size();
  for (std::size_t i = 0; i < count; ++i) {
    const std::string target = kRelated[(first + i) % kRelated.size()];
    if (target == model) continue;
    out.push_back({target, kRelationKinds[(h >> (12 + 2 * i)) % kRelationKinds.size()],
                   (target == "user" ? "auth" : app) + "." + target});
  }
  return out;
}

std::vector<Filter> make_filters(const std::vector<Field>& fields) {
  std::vector<Filter> out;
  for (const Field& f : fields) {
    std::vector<std::string> lookups{"exact"};
    if (f.type == "integer" || f.type == "decimal")
      lookups.insert(lookups.end(), {"lt", "gt", "in"});
    if (f.type == "string" || f.type == "text") lookups.insert(lookups.end(), {"icontains", "in"});
    if (f.type == "datetime") lookups.insert(lookups.end(), {"range", "year"});
    out.push_back({f.name, std::move(lookups)});
  }
  return out;
}

// The per-user part: which mutations `user` may run on the model.
std::vector<Mutation> make_mutations(const std::string& app, const std::string& model,
                                     const std::string& user) {
  const std::uint64_t h = stable_hash(app + "." + model, user);
  return {{"create", h % 4 != 0}, {"update", (h >> 8) % 4 != 0}, {"delete", (h >> 16) % 3 == 0}};
}

std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

volatile std::uint64_t g_sink;  // keeps the burnt work observable, so it is not optimised away

// Real CPU work, not a sleep: a cache that only saved sleeping would show a
// speed-up that no real server gets, since sleeping workers leave the cores
// to the others.
void burn_cpu(std::chrono::microseconds budget, std::uint64_t seed) {
  if (budget <= 0us) return;
  const auto start = thread_cpu_time();
  std::uint64_t x = seed;
  do {
    for (int i = 0; i < 4096; ++i) x = mix(x + i);
  } while (thread_cpu_time() - start < budget);
  g_sink = x;
}

// Set by the model-level extraction when it runs in this thread: how a caller
// tells a miss (it computed) from a hit (it read, perhaps after waiting for
// another worker's computation).
thread_local bool t_computed = false;

std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

ModelMetadata describe(const std::string& app, const std::string& model, const std::string& user) {
  ModelMetadata m;
  m.app = app;
  m.model = model;
  m.user = user;
  m.fields = make_fields(app, model);
  m.relationships = make_relationships(app, model);
  m.filters = make_filters(m.fields);
  m.mutations = make_mutations(app, model, user);
  return m;
}

// Each part is memoized on its own, with its own TTL, as the seed's decorated
// methods are; the model-level entry composes them. Invalidating the model
// drops all five (they share the "{app}.{model}" tag). The parts other than
// mutations do not depend on the user, but are cached per user anyway, as the
// seed does: the extractor cannot know which of its inputs are user-specific.
Extractor::Extractor(hostcache::Cache& cache, std::chrono::microseconds cost)
    : part_cost_(cost / 4),
      fields_(cache, {.method = "fields", .ttl = 15min},
              [this](const std::string& app, const std::string& model, const std::string&) {
                burn_cpu(part_cost_, stable_hash(app, model));
                return make_fields(app, model);
              }),
      relationships_(cache, {.method = "relationships", .ttl = 15min},
                     [this](const std::string& app, const std::string& model, const std::string&) {
                       burn_cpu(part_cost_, stable_hash(model, app));
                       return make_relationships(app, model);
                     }),
      filters_(cache, {.method = "filters", .ttl = 10min},
               [this](const std::string& app, const std::string& model, const std::string&) {
                 burn_cpu(part_cost_, stable_hash(app + model));
                 return make_filters(make_fields(app, model));
               }),
      mutations_(cache, {.method = "mutations", .ttl = 20min},
                 [this](const std::string& app, const std::string& model, const std::string& user) {
                   burn_cpu(part_cost_, stable_hash(model, user));
                   return make_mutations(app, model, user);
                 }),
      model_(cache, {.method = "model", .ttl = 30min},
             [this](const std::string& app, const std::string& model, const std::string& user) {
               t_computed = true;
               ModelMetadata m;
               // Taken before the parts are read: the value reflects no state
               // older than this, so a value stamped after an invalidation
               // began cannot predate it.
               m.computed_at_us = now_us();
               m.app = app;
               m.model = model;
               m.user = user;
               m.fields = fields_(app, model, user);
               m.relationships = relationships_(app, model, user);
               m.filters = filters_(app, model, user);
               m.mutations = mutations_(app, model, user);
               m.computed_by_pid = std::int32_t(::getpid());
               return m;
             }) {}

Extractor::Result Extractor::model_metadata(const std::string& app, const std::string& model,
                                            const std::string& user) {
  t_computed = false;
  Result result{model_(app, model, user)};
  result.computed = t_computed;
  return result;
}

}  // namespace prefork
