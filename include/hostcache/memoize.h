// hostcache/memoize.h — memoized computations over a Cache, with one
// computation per key across every process of the host.
//
// get_or_compute<T>(cache, key, compute) returns the value cached under `key`
// (msgpack-c, as Cache::get_as/put), or runs compute() and stores its result.
// When several processes miss the same key at once, one of them computes
// (it holds the key's *flight*, a slot in the segment) and the others sleep on
// a futex until it is done, then read its result: an expensive extraction runs
// once per host, not once per worker.
//
// The flight is a lease, not a lock: a waiter takes it over when the computing
// process has died, or has held it longer than its ComputeOptions::lease, or
// when the waiter has waited its own lease (then two computations may
// overlap; both results are valid, the later write wins). Waiters sleep with
// a bounded timeout and re-check, so nothing ever waits on a dead process,
// and no call waits longer than its own lease whatever the segment holds.
// No stripe lock is held while compute() runs.
//
// memoize<T>(cache, options, fn) wraps `fn(app, model, user, params...)` the
// way the seed's decorator does: keys `metadata_{method}_{app}_{model}_{user}_{params}`
// (one key per distinct call: see detail::build_key),
// entries tagged "{app}.{model}" so that cache.invalidate(model_tag(app, model))
// drops every method's entries for that model, and per-method statistics that
// every process and the tools see (method_stats()).
//
// Guarantees:
//  - compute() is called with no lock held; its exception reaches its own
//    caller, nothing is cached, and the waiters are released (one of them
//    then computes).
//  - A result computed across a clear()/invalidate() is stored stale and never
//    served (DESIGN.md invariant 3): the generations are read before compute().
//  - With user_specific (the default) a memoized call never receives a value
//    computed for another user: users (with their type: the string "42" is
//    not the integer 42) are keyed by a 128-bit hash keyed with the
//    segment's random secret, so a colliding user cannot be computed offline.
//  - When the cache is disabled (Config::enabled = false or
//    HOSTCACHE_DISABLED=1) every call runs compute() and touches nothing.
//
// Thread-safety: every function here is safe to call concurrently from any
// number of threads and processes. A Memoized is immutable once made and may
// be shared by threads; it refers to its Cache, which must outlive it.
//
// Not supported: a compute() that calls get_or_compute for its own key waits
// for itself until its lease runs out.
#pragma once

#include <hostcache/cache.h>
#include <hostcache/config.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <msgpack.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace hostcache {

// How get_or_compute stores and shares one computation.
struct ComputeOptions {
  SetOptions set;  // ttl (0: the cache's default) and invalidation tags
  // How long a computing process may hold the key's flight before a waiter
  // takes it over, and how long this call waits on another's flight at most.
  // Make it longer than the slowest compute(): past it, the computation may
  // run twice.
  std::chrono::milliseconds lease = std::chrono::seconds(30);
  // After the ttl, for this long, the expired value is still returned to every
  // caller but one, which recomputes (0: off). The entry is stored for
  // ttl + stale_while_revalidate with its soft expiry in an envelope (a
  // msgpack fixext 8 of type 72 before the value): read such keys through
  // get_or_compute, not get_as.
  std::chrono::milliseconds stale_while_revalidate{0};
  // Statistics slot of the calls (method_stats()); empty: not counted per method.
  std::string_view method;
};

// The seed's decorator settings, per memoized method.
struct MemoizeOptions {
  std::string method;  // names the key and the statistics slot; at most 64 bytes counted
  std::chrono::milliseconds ttl{0};  // 0: the cache's default ttl
  bool user_specific = true;         // false: one entry serves every user
  std::chrono::milliseconds stale_while_revalidate{0};
  std::chrono::milliseconds lease = std::chrono::seconds(30);
  std::string key_prefix = "metadata";
  // Tags besides "{app}.{model}", from the rendered params (strings as they
  // are, integers in decimal, anything else as "h" + xxh3 hex): e.g. the
  // related model of relationship metadata,
  //   [](const std::vector<std::string>& p) { return std::vector{model_tag(p[0], p[1])}; }
  // At most kMaxTags in all; an entry whose tags do not fit is not cached.
  std::function<std::vector<std::string>(const std::vector<std::string>& params)> extra_tags{};
};

// Per-method statistics summed over every process of the host (the seed's report).
struct MethodStats {
  std::string method;
  std::uint64_t requests = 0;  // hits + misses
  std::uint64_t hits = 0;      // served from the cache (including after waiting on a flight)
  std::uint64_t misses = 0;    // ran compute() (including a compute() that threw)
  std::uint64_t hit_ns = 0;    // total time of the hits
  std::uint64_t miss_ns = 0;   // total time of the misses, compute() included
  // Bytes of values this method stored since the segment was created: an upper
  // bound on what it holds now (eviction and invalidation are not per method).
  std::uint64_t bytes = 0;

  double hit_ratio() const { return requests == 0 ? 0.0 : double(hits) / double(requests); }
  double mean_hit_ms() const { return hits == 0 ? 0.0 : double(hit_ns) / double(hits) / 1e6; }
  double mean_miss_ms() const { return misses == 0 ? 0.0 : double(miss_ns) / double(misses) / 1e6; }
  // Mean time of a call as served, hits and misses together.
  double mean_call_ms() const {
    return requests == 0 ? 0.0 : double(hit_ns + miss_ns) / double(requests) / 1e6;
  }
  // How much faster a hit is than a computed call, in percent (0 until both are known).
  double improvement_percent() const {
    return hits == 0 || misses == 0 || miss_ns == 0
               ? 0.0
               : 100.0 * (1.0 - mean_hit_ms() / mean_miss_ms());
  }
};

// Every method that recorded a call, merged by name. Reads only.
std::vector<MethodStats> method_stats(const Cache& cache);

// What warm() did.
struct WarmResult {
  std::size_t hits = 0;      // already cached
  std::size_t computed = 0;  // loaded and stored
  std::size_t failed = 0;    // the loader threw (logged; the other keys go on)
  WarmResult& operator+=(const WarmResult& o) {
    hits += o.hits;
    computed += o.computed;
    failed += o.failed;
    return *this;
  }
};

// What on_startup() does; the seed's CACHE_SETTINGS.
struct StartupOptions {
  bool invalidate_on_startup = true;  // clear() the whole cache (O(1))
  bool auto_warm = true;              // run `warmers`
  // Each fills some keys, e.g. warm_task<Metadata>(keys, loader).
  std::vector<std::function<WarmResult(Cache&)>> warmers;
};

// Clears the cache if asked, then runs the warmers if auto_warm and the cache
// is enabled. Call it once per deployment (the prefork master before it
// forks), not in every worker: each call clears what the others warmed.
WarmResult on_startup(Cache& cache, const StartupOptions& options);

// ---- implementation hooks (the non-template core lives in memoize.cpp) -------

namespace detail {

// The typed half of one get_or_compute call, seen by the untyped core.
struct ComputeHooks {
  void* ctx = nullptr;
  // Decodes cached bytes into the caller's result; false if they are not a T.
  bool (*accept)(void* ctx, std::string_view bytes) = nullptr;
  // Runs compute(), keeps its result and writes its msgpack encoding to `out`.
  void (*compute)(void* ctx, std::string& out) = nullptr;
};

void get_or_compute(Cache& cache, std::string_view key, const ComputeOptions& options,
                    const ComputeHooks& hooks);

// "h" + 16 hex digits of XXH3_64bits(bytes): a call argument that is neither a
// string nor an integer, as it appears in tags (render()). Unkeyed: a tag
// collision only over-invalidates. Keys never use it (see KeyArg).
std::string hash_token(std::string_view bytes);

// One argument of a memoized call (app, model, user or a param), typed, as
// the key builder renders it.
struct KeyArg {
  enum class Kind : char {
    text = 's',         // bytes: the string
    integer = 'i',      // bytes: its decimal
    boolean = 'b',      // bytes: "true" or "false"
    enumeration = 'e',  // bytes: its underlying value in decimal
    packed = 'm',       // bytes: its msgpack encoding
  };
  Kind kind = Kind::text;
  std::string bytes;
};

// "u" + 32 hex digits of the keyed 128-bit hash (keyed with the segment's
// key_secret) of the user's type and bytes: a user in a key.
std::string user_token(const Cache& cache, const KeyArg& user);

// A memoized call's key parts.
struct KeyParts {
  std::string_view prefix, method;
  const KeyArg* app = nullptr;
  const KeyArg* model = nullptr;
  const KeyArg* user = nullptr;  // nullptr: not user specific ("any")
  const std::vector<KeyArg>* params = nullptr;
};
// prefix_method_app_model_user[_param...]: every part always there after
// its separator (empty ones too); text written with '%', '_', ':' and bytes
// outside '!'..'~' as %XX; integers, booleans and enums type-tagged ("i:42",
// "b:true", "e:3"); any other argument "h:" + the keyed 128-bit hash of its
// msgpack bytes; the user as user_token(). So the key splits one way only and
// distinct calls get distinct keys (up to collisions of a hash keyed with a
// secret an attacker does not know). A key over cache.max_key_bytes() keeps
// what fits of prefix_method_app_model_user, else prefix_user, else prefix,
// and ends in "_%h" + the keyed hash of the whole key.
std::string build_key(const Cache& cache, const KeyParts& parts);
// "{app}.{model}" (or "%h" + its hash when over kMaxTagBytes).
std::string join_model_tag(std::string_view app, std::string_view model);

void note_warm_failure(std::string_view key, const char* what) noexcept;

// A call argument as the key builder takes it.
template <class X>
KeyArg key_arg(const X& x) {
  if constexpr (std::is_convertible_v<const X&, std::string_view>) {
    return {KeyArg::Kind::text, std::string(std::string_view(x))};
  } else if constexpr (std::is_same_v<X, bool>) {
    return {KeyArg::Kind::boolean, x ? "true" : "false"};
  } else if constexpr (std::is_integral_v<X>) {
    return {KeyArg::Kind::integer, std::to_string(x)};
  } else if constexpr (std::is_enum_v<X>) {
    return {KeyArg::Kind::enumeration, std::to_string(static_cast<std::underlying_type_t<X>>(x))};
  } else {
    msgpack::sbuffer packed;
    msgpack::pack(packed, x);
    return {KeyArg::Kind::packed, std::string(packed.data(), packed.size())};
  }
}

// A call argument as it appears in tags: strings as they are, integers and
// enums in decimal, anything else as hash_token(msgpack(x)).
template <class X>
std::string render(const X& x) {
  if constexpr (std::is_convertible_v<const X&, std::string_view>) {
    return std::string(std::string_view(x));
  } else if constexpr (std::is_same_v<X, bool>) {
    return x ? "true" : "false";
  } else if constexpr (std::is_integral_v<X>) {
    return std::to_string(x);
  } else if constexpr (std::is_enum_v<X>) {
    return std::to_string(static_cast<std::underlying_type_t<X>>(x));
  } else {
    msgpack::sbuffer packed;
    msgpack::pack(packed, x);
    return hash_token(std::string_view(packed.data(), packed.size()));
  }
}

template <class T, class Compute>
struct ComputeContext {
  std::optional<T>* result;
  Compute* compute;

  static bool accept(void* c, std::string_view bytes) {
    auto& self = *static_cast<ComputeContext*>(c);
    try {
      msgpack::object_handle handle = msgpack::unpack(bytes.data(), bytes.size());
      self.result->emplace(handle.get().as<T>());
      return true;
    } catch (const std::exception&) {
      return false;  // written as another type: recompute and overwrite
    }
  }
  static void run(void* c, std::string& out) {
    auto& self = *static_cast<ComputeContext*>(c);
    self.result->emplace((*self.compute)());
    msgpack::sbuffer packed;
    msgpack::pack(packed, **self.result);
    out.assign(packed.data(), packed.size());
  }
};

template <class T, class Compute>
using result_t =
    std::conditional_t<std::is_void_v<T>, std::decay_t<std::invoke_result_t<Compute&>>, T>;

}  // namespace detail

// ---- get_or_compute ----------------------------------------------------------

// Returns the T cached under `key`, or calls compute() (no lock held), stores
// its result stamped with the generations read before the call, and returns
// it. Concurrent misses of `key` in any process share one compute() (see the
// top of this file). T defaults to compute()'s return type.
// REQUIRES: T is msgpack-serializable and default-constructible by msgpack-c's
// as<T>(); `compute` returns something convertible to T.
// Throws what compute() throws; before calling it, Error(key_too_large) for
// an empty key or one over max_key_bytes, Error(invalid_ttl) for a negative
// ttl or window or a lease <= 0. A value the cache refuses (too large, too
// many tags, a tag too long) is returned uncached and logged.
template <class T = void, class Compute>
detail::result_t<T, Compute> get_or_compute(Cache& cache, std::string_view key, Compute&& compute,
                                            const ComputeOptions& options) {
  using R = detail::result_t<T, Compute>;
  if (!cache.enabled()) return compute();  // the seed's ENABLED = False: nothing encoded or stored
  std::optional<R> result;
  detail::ComputeContext<R, std::remove_reference_t<Compute>> ctx{&result, &compute};
  detail::ComputeHooks hooks{&ctx, &decltype(ctx)::accept, &decltype(ctx)::run};
  detail::get_or_compute(cache, key, options, hooks);
  return std::move(*result);
}

template <class T = void, class Compute>
detail::result_t<T, Compute> get_or_compute(Cache& cache, std::string_view key, Compute&& compute,
                                            const SetOptions& options = {}) {
  ComputeOptions o;
  o.set = options;
  return get_or_compute<T>(cache, key, std::forward<Compute>(compute), o);
}

// ---- memoize -----------------------------------------------------------------

// The tag memoized entries of (app, model) carry: "{app}.{model}", the parts
// rendered by render(). cache.invalidate(model_tag(app, model)) drops them all.
template <class App, class Model>
std::string model_tag(const App& app, const Model& model) {
  return detail::join_model_tag(detail::render(app), detail::render(model));
}

// A memoized function: call it as fn(app, model, user, params...).
template <class T, class Fn>
class Memoized {
 public:
  Memoized(Cache& cache, MemoizeOptions options, Fn fn)
      : cache_(&cache), options_(std::move(options)), fn_(std::move(fn)) {}

  // The cached result of fn(app, model, user, params...), or fn's result now.
  // Costs a key build (a keyed hash of the user, and of each argument that is
  // neither a string nor an integer) and one get_or_compute.
  template <class App, class Model, class User, class... Params>
  T operator()(const App& app, const Model& model, const User& user,
               const Params&... params) const {
    auto call = [&]() -> T { return fn_(app, model, user, params...); };
    if (!cache_->enabled()) return call();
    const std::vector<detail::KeyArg> args{detail::key_arg(params)...};
    const detail::KeyArg app_arg = detail::key_arg(app), model_arg = detail::key_arg(model);
    std::optional<detail::KeyArg> user_arg;
    if (options_.user_specific) user_arg = detail::key_arg(user);
    std::string key = detail::build_key(
        *cache_, {options_.key_prefix, options_.method, &app_arg, &model_arg,
                  user_arg ? &*user_arg : nullptr, &args});
    std::vector<std::string> tags{model_tag(app, model)};
    if (options_.extra_tags) {
      const std::vector<std::string> rendered{detail::render(params)...};
      for (std::string& t : options_.extra_tags(rendered)) tags.push_back(std::move(t));
    }
    ComputeOptions o;
    o.set.ttl = options_.ttl;
    o.set.tags.assign(tags.begin(), tags.end());
    o.lease = options_.lease;
    o.stale_while_revalidate = options_.stale_while_revalidate;
    o.method = options_.method;
    return get_or_compute<T>(*cache_, key, call, o);
  }

  const MemoizeOptions& options() const { return options_; }

 private:
  Cache* cache_;
  MemoizeOptions options_;
  Fn fn_;
};

// Wraps `fn` as the seed's decorator does:
//   auto extract = hostcache::memoize<Metadata>(
//       cache, {.method = "extract_model_metadata", .ttl = 30min, .user_specific = true},
//       extract_fn);
//   Metadata m = extract(app, model, user);
// REQUIRES: `cache` outlives the result.
template <class T, class Fn>
Memoized<T, std::decay_t<Fn>> memoize(Cache& cache, MemoizeOptions options, Fn&& fn) {
  return Memoized<T, std::decay_t<Fn>>(cache, std::move(options), std::forward<Fn>(fn));
}

// ---- warming -----------------------------------------------------------------

// Fills `keys` through the single flight: loader(key) -> T runs for each key
// that is not cached (or is being computed elsewhere: then it waits for that).
// A loader that throws is logged and counted; the other keys go on.
template <class T, class Loader>
WarmResult warm(Cache& cache, const std::vector<std::string>& keys, Loader&& loader,
                const ComputeOptions& options = {}) {
  WarmResult result;
  for (const std::string& key : keys) {
    bool computed = false;
    try {
      get_or_compute<T>(
          cache, key,
          [&]() -> T {
            computed = true;
            return loader(key);
          },
          options);
      ++(computed ? result.computed : result.hits);
    } catch (const std::exception& e) {
      detail::note_warm_failure(key, e.what());
      ++result.failed;
    }
  }
  return result;
}

// warm() packaged for StartupOptions::warmers. The task keeps its own copies
// of the keys, the method name and the tags.
template <class T, class Loader>
std::function<WarmResult(Cache&)> warm_task(std::vector<std::string> keys, Loader loader,
                                            const ComputeOptions& options = {}) {
  std::string method(options.method);
  std::vector<std::string> tags(options.set.tags.begin(), options.set.tags.end());
  return [keys = std::move(keys), loader = std::move(loader), options, method = std::move(method),
          tags = std::move(tags)](Cache& cache) {
    ComputeOptions o = options;
    o.method = method;
    o.set.tags.assign(tags.begin(), tags.end());
    return warm<T>(cache, keys, loader, o);
  };
}

}  // namespace hostcache
