// memoize.cpp — get_or_compute's untyped core: per-method statistics in the
// segment, the stale-while-revalidate envelope, the key builder, warming at
// startup. The cross-process single flight it runs is in flight.cpp.
#include <hostcache/memoize.h>
#include <sched.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "atomic_words.h"
#include "cache_impl.h"
#include "clock.h"
#include "flight.h"
#include "layout.h"
#include "log.h"

namespace hostcache {
namespace {

using flight::Flight;
using flight::Flights;
using layout::MethodSlot;
using steady = std::chrono::steady_clock;

// A method slot being named longer than this: its process died there.
constexpr std::int64_t kNamingGraceMs = 1000;

// ---- per-method statistics ---------------------------------------------------

// The slot named `name` (truncated to kMethodNameBytes), claimed if new; open
// addressing from xxh3(name). nullptr when every slot holds another method.
MethodSlot* method_slot(const Segment& segment, std::string_view name) {
  const std::uint32_t n = segment.header()->method_slots;
  if (name.empty() || n == 0) return nullptr;
  name = name.substr(0, layout::kMethodNameBytes);
  MethodSlot* slots = segment.method_slots();
  const std::uint64_t h = XXH3_64bits(name.data(), name.size());
  for (std::uint32_t i = 0; i < n; ++i) {
    MethodSlot& s = slots[(h + i) % n];
    std::atomic_ref<std::uint32_t> claimed(s.claimed);
    std::uint32_t c = claimed.load(std::memory_order_acquire);
    if (c == 0 && claimed.compare_exchange_strong(c, 1, std::memory_order_acquire)) {
      std::memcpy(s.name, name.data(), name.size());
      words::store(s.name_len, std::uint32_t(name.size()));
      claimed.store(2, std::memory_order_release);
      return &s;
    }
    // Being named: a few stores, unless its process died there (then skip it).
    const steady::time_point give_up = steady::now() + std::chrono::milliseconds(kNamingGraceMs);
    while ((c = claimed.load(std::memory_order_acquire)) == 1 && steady::now() < give_up) {
      sched_yield();
    }
    if (c == 2 && words::load(s.name_len) == name.size() &&
        std::memcmp(s.name, name.data(), name.size()) == 0) {
      return &s;
    }
  }
  log::get().warn("memoize: no free method slot for '{}': its calls are not counted per method",
                  name);
  return nullptr;
}

// ---- stale-while-revalidate envelope -----------------------------------------

// A msgpack fixext 8 of type 72 ('H') holding the soft expiry (big-endian ms),
// followed by the value's own msgpack bytes.
constexpr unsigned char kEnvelope0 = 0xd7, kEnvelope1 = 72;
constexpr std::size_t kEnvelopeBytes = 10;

std::string wrap(std::int64_t soft_expiry_ms, std::string_view value) {
  std::string out(kEnvelopeBytes, '\0');
  out[0] = char(kEnvelope0);
  out[1] = char(kEnvelope1);
  for (int i = 0; i < 8; ++i) out[2 + i] = char(std::uint64_t(soft_expiry_ms) >> (56 - 8 * i));
  out.append(value);
  return out;
}

struct Opened {
  std::int64_t soft_expiry_ms = 0;  // 0: none (no revalidate window)
  std::string_view value;
};

Opened open_envelope(std::string_view bytes) {
  if (bytes.size() < kEnvelopeBytes || static_cast<unsigned char>(bytes[0]) != kEnvelope0 ||
      static_cast<unsigned char>(bytes[1]) != kEnvelope1) {
    return {0, bytes};
  }
  std::uint64_t soft = 0;
  for (int i = 0; i < 8; ++i) soft = (soft << 8) | static_cast<unsigned char>(bytes[2 + i]);
  return {std::int64_t(soft), bytes.substr(kEnvelopeBytes)};
}

// ---- one get_or_compute call --------------------------------------------------

class Call {
 public:
  Call(Cache& cache, std::string_view key, const ComputeOptions& options,
       const detail::ComputeHooks& hooks)
      : cache_(cache),
        segment_(detail::Access::segment(cache)),
        key_(key),
        options_(options),
        hooks_(hooks),
        method_(method_slot(segment_, options.method)),
        start_(steady::now()) {}

  void run() {
    std::optional<Flights> flights;  // hashing the key is for misses only
    auto flights_of_key = [&]() -> Flights& {
      if (!flights) flights.emplace(segment_, XXH3_64bits(key_.data(), key_.size()));
      return *flights;
    };
    const std::int64_t lease_ms = options_.lease.count();
    for (;;) {
      Flight flight;
      switch (lookup()) {
        case Found::fresh:
          return record(true, 0);
        case Found::stale:  // in the revalidate window: one caller refreshes, the others return it
          if (!flights_of_key().try_claim(lease_ms, flight)) return record(true, 0);
          return recheck_and_compute(&flight);
        case Found::nothing:
          switch (flights_of_key().acquire_or_wait(lease_ms, flight)) {
            case Flights::Outcome::waited:
              continue;  // the owner is done (or gone): look again
            case Flights::Outcome::unshared:
              return compute_and_store(nullptr);
            case Flights::Outcome::owner:
              return recheck_and_compute(&flight);
          }
      }
    }
  }

 private:
  enum class Found { nothing, fresh, stale };

  // A cached value decoded into the caller's result, and whether it is past its soft expiry.
  Found lookup() {
    thread_local std::string buffer;  // not used across compute(), which may re-enter
    if (!cache_.get(key_, buffer)) return Found::nothing;
    Opened opened = open_envelope(buffer);
    if (!hooks_.accept(hooks_.ctx, opened.value)) return Found::nothing;
    bool stale = opened.soft_expiry_ms != 0 && clock::now_ms() >= opened.soft_expiry_ms;
    return stale ? Found::stale : Found::fresh;
  }

  // We hold the flight: the previous holder may have stored just before we claimed.
  void recheck_and_compute(const Flight* flight) {
    if (lookup() == Found::fresh) {
      flight::release(*flight);
      return record(true, 0);
    }
    compute_and_store(flight);
  }

  void compute_and_store(const Flight* flight) {
    flight::ReleaseGuard guard{flight};  // after the set below, so that waiters find the value
    const GenerationStamp stamp =
        cache_.generations(options_.set.tags);  // before compute (invariant 3)
    std::string bytes;
    try {
      hooks_.compute(hooks_.ctx, bytes);
    } catch (...) {
      record(false, 0);
      throw;
    }
    const std::chrono::milliseconds ttl =
        options_.set.ttl.count() > 0 ? options_.set.ttl : cache_.default_ttl();
    SetOptions set = options_.set;
    std::string wrapped;
    std::string_view stored = bytes;
    if (options_.stale_while_revalidate.count() > 0) {
      wrapped = wrap(clock::now_ms() + ttl.count(), bytes);
      stored = wrapped;
      set.ttl = ttl + options_.stale_while_revalidate;
    }
    Errc e = cache_.set(key_, stored, set, stamp);
    if (e != Errc::ok) {
      log::get().warn("memoize: '{}' not cached: {}", key_, to_string(e));
    }
    record(false, e == Errc::ok ? stored.size() : 0);
  }

  void record(bool hit, std::size_t bytes) {
    if (method_ == nullptr) return;
    const auto ns = std::uint64_t(
        std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - start_).count());
    words::fetch_add(method_->requests, std::uint64_t{1});
    words::fetch_add(hit ? method_->hits : method_->misses, std::uint64_t{1});
    words::fetch_add(hit ? method_->hit_ns : method_->miss_ns, ns);
    if (bytes != 0) words::fetch_add(method_->bytes, std::uint64_t(bytes));
  }

  Cache& cache_;
  const Segment& segment_;
  std::string_view key_;
  const ComputeOptions& options_;
  const detail::ComputeHooks& hooks_;
  MethodSlot* method_;
  steady::time_point start_;
};

constexpr char kHex[] = "0123456789abcdef";

void append_hex(std::string& out, std::uint64_t v) {
  for (int shift = 60; shift >= 0; shift -= 4) out.push_back(kHex[(v >> shift) & 15]);
}

std::string hash128_token(std::string_view prefix, std::string_view bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  std::string out(prefix);
  append_hex(out, h.high64);
  append_hex(out, h.low64);
  return out;
}

void append_escaped(std::string& out, std::string_view part) {
  static constexpr char kUpperHex[] = "0123456789ABCDEF";
  for (unsigned char c : part) {
    if (c > 0x20 && c < 0x7f && c != '%' && c != '_') {
      out.push_back(char(c));
    } else {
      out.push_back('%');
      out.push_back(kUpperHex[c >> 4]);
      out.push_back(kUpperHex[c & 15]);
    }
  }
}

}  // namespace

// ---- public functions ---------------------------------------------------------

namespace detail {

void get_or_compute(Cache& cache, std::string_view key, const ComputeOptions& options,
                    const ComputeHooks& hooks) {
  if (!cache.enabled()) {  // the seed's ENABLED = False: no lookup, no flight, no statistics
    std::string unused;
    hooks.compute(hooks.ctx, unused);
    return;
  }
  if (options.set.ttl.count() < 0 || options.lease.count() <= 0 ||
      options.stale_while_revalidate.count() < 0) {
    throw Error(Errc::invalid_ttl, "get_or_compute on segment '" + std::string(cache.name()) +
                                       "': ttl and stale_while_revalidate must be >= 0, lease > 0");
  }
  if (key.empty() || key.size() > cache.max_key_bytes()) {
    throw Error(Errc::key_too_large, "get_or_compute on segment '" + std::string(cache.name()) +
                                         "': key of " + std::to_string(key.size()) + " bytes (1.." +
                                         std::to_string(cache.max_key_bytes()) + " allowed)");
  }
  Call(cache, key, options, hooks).run();
}

std::string hash_token(std::string_view bytes) {
  std::string out = "h";
  append_hex(out, XXH3_64bits(bytes.data(), bytes.size()));
  return out;
}

std::string user_token(std::string_view bytes) { return hash128_token("u", bytes); }

std::string build_key(const KeyParts& parts, std::size_t max_key_bytes) {
  std::string key;
  for (std::string_view part : {parts.prefix, parts.method, parts.app, parts.model, parts.user}) {
    if (!key.empty()) key.push_back('_');
    append_escaped(key, part);
  }
  const std::size_t head = key.size();
  if (parts.params != nullptr) {
    for (const std::string& p : *parts.params) {
      key.push_back('_');
      append_escaped(key, p);
    }
  }
  if (key.size() <= max_key_bytes) return key;
  // "%h" never comes out of append_escaped (its escapes are %XX, uppercase hex).
  std::string tail = hash128_token("_%h", key);
  if (head + tail.size() <= max_key_bytes) {
    key.resize(head);
    return key + tail;
  }
  std::string shortest;
  append_escaped(shortest, parts.prefix);
  return shortest + tail;  // if even this is too long, set() refuses it and every call computes
}

std::string join_model_tag(std::string_view app, std::string_view model) {
  std::string tag;
  tag.reserve(app.size() + 1 + model.size());
  tag.append(app).append(".").append(model);
  return tag.size() <= kMaxTagBytes ? tag : hash128_token("%h", tag);
}

void note_warm_failure(std::string_view key, const char* what) noexcept {
  try {
    log::get().warn("warm: loading '{}' failed: {}", key, what);
  } catch (...) {
  }
}

}  // namespace detail

std::vector<MethodStats> method_stats(const Cache& cache) {
  const Segment& segment = detail::Access::segment(cache);
  const MethodSlot* slots = segment.method_slots();
  std::vector<MethodStats> out;
  for (std::uint32_t i = 0; i < segment.header()->method_slots; ++i) {
    const MethodSlot& s = slots[i];
    if (words::load(s.claimed, std::memory_order_acquire) != 2) continue;
    std::string name(s.name,
                     std::min<std::size_t>(words::load(s.name_len), layout::kMethodNameBytes));
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const MethodStats& m) { return m.method == name; });
    if (it == out.end()) it = out.insert(out.end(), MethodStats{.method = name});
    it->requests += words::load(s.requests);
    it->hits += words::load(s.hits);
    it->misses += words::load(s.misses);
    it->hit_ns += words::load(s.hit_ns);
    it->miss_ns += words::load(s.miss_ns);
    it->bytes += words::load(s.bytes);
  }
  return out;
}

WarmResult on_startup(Cache& cache, const StartupOptions& options) {
  if (options.invalidate_on_startup) {
    cache.clear();
    log::get().info("startup: cleared '{}'", cache.name());
  }
  WarmResult total;
  if (!options.auto_warm || !cache.enabled()) return total;
  for (const auto& warmer : options.warmers) {
    try {
      total += warmer(cache);
    } catch (const std::exception& e) {
      log::get().warn("startup: a warmer of '{}' failed: {}", cache.name(), e.what());
      ++total.failed;
    }
  }
  log::get().info("startup: warmed '{}': {} computed, {} already cached, {} failed", cache.name(),
                  total.computed, total.hits, total.failed);
  return total;
}

}  // namespace hostcache
