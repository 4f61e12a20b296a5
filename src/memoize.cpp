// memoize.cpp — get_or_compute's untyped core: per-method statistics in the
// segment, the stale-while-revalidate envelope, the key builder, warming at
// startup. The cross-process single flight it runs is in flight.cpp.
#include <hostcache/memoize.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
// Inlined: XXH3_generateSecret belongs to xxhash's version-tied API.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>

#include "atomic_words.h"
#include "cache_impl.h"
#include "clock.h"
#include "flight.h"
#include "layout.h"
#include "log.h"
#include "stripe_lock.h"
#include "thread_scratch.h"

namespace hostcache {
namespace {

using flight::Flight;
using flight::Flights;
using layout::MethodSlot;
using steady = std::chrono::steady_clock;

// A lease beyond this is this (no steady_clock overflow).
constexpr std::chrono::milliseconds kLongestLease = std::chrono::hours(24 * 365 * 10);

// MethodSlot::claimed: 0 free, 2 named, (pid << 2) | 1 being named by pid.
// A namer CASes 0 -> its naming word, writes the name, CASes it -> 2. A
// naming word whose pid is gone (a namer killed there; 1, which older builds
// wrote, names pid 0) is taken over by CAS. One of a live process is given
// kNamingPatience in all per lookup, then skipped: the worst a namer that
// stalls or lies can cost is a method counted in a second slot (method_stats
// merges by name) or not counted, never a wait per call: each Cache handle
// looks a method up once (then again at most every kLookupRetry while it has
// no slot).
constexpr std::uint32_t kNamed = 2;
constexpr auto kNamingPatience = std::chrono::milliseconds(2);
constexpr auto kLookupRetry = std::chrono::seconds(1);

bool is_naming(std::uint32_t c) { return (c & 3u) == 1u; }
std::uint32_t naming_word(pid_t pid) { return (std::uint32_t(pid) << 2) | 1u; }
bool namer_gone(std::uint32_t c) {
  const pid_t pid = pid_t(c >> 2);
  return pid <= 0 || (kill(pid, 0) == -1 && errno == ESRCH);
}

// Writes the name into a slot whose claimed word we set to `mine`.
bool name_slot(MethodSlot& s, std::uint32_t mine, std::string_view name) {
  std::atomic_ref<std::uint32_t> claimed(s.claimed);
  std::memcpy(s.name, name.data(), name.size());
  words::store(s.name_len, std::uint32_t(name.size()));
  return claimed.compare_exchange_strong(mine, kNamed, std::memory_order_release,
                                         std::memory_order_relaxed);
}

// The slot named `name` (truncated to kMethodNameBytes), claimed if new; open
// addressing from xxh3(name) over method_slots as verified at attach.
// nullptr when no slot can be had now.
MethodSlot* find_method_slot(const Segment& segment, std::string_view name) {
  const std::uint32_t n = segment.geometry().method_slots;
  if (name.empty() || n == 0) return nullptr;
  name = name.substr(0, layout::kMethodNameBytes);
  MethodSlot* slots = segment.method_slots();
  const std::uint64_t h = XXH3_64bits(name.data(), name.size());
  const std::uint32_t mine = naming_word(getpid());
  const steady::time_point patience_ends = steady::now() + kNamingPatience;
  for (std::uint32_t i = 0; i < n; ++i) {
    MethodSlot& s = slots[(h + i) % n];
    std::atomic_ref<std::uint32_t> claimed(s.claimed);
    std::uint32_t c = claimed.load(std::memory_order_acquire);
    while (is_naming(c) && !namer_gone(c) && steady::now() < patience_ends) {
      sched_yield();  // a live namer: a few stores, unless it is stalled or lying
      c = claimed.load(std::memory_order_acquire);
    }
    if (is_naming(c) && namer_gone(c) && c != mine &&
        claimed.compare_exchange_strong(c, mine, std::memory_order_acquire)) {
      if (name_slot(s, mine, name)) return &s;
      continue;
    }
    if (c == 0 && claimed.compare_exchange_strong(c, mine, std::memory_order_acquire)) {
      if (name_slot(s, mine, name)) return &s;
      continue;
    }
    if (c == kNamed && words::load(s.name_len) == name.size() &&
        std::memcmp(s.name, name.data(), name.size()) == 0) {
      return &s;
    }
    // Another method's, still being named, or garbage: the next one.
  }
  log::get().warn("memoize: no free method slot for '{}': its calls are not counted per method",
                  name);
  return nullptr;
}

}  // namespace

// What a Cache handle keeps for memoize (Cache::Impl::memoize), in one process.
struct MemoizeState {
  explicit MemoizeState(const Geometry& g) {
    // The segment's random secret, verified at attach, keys every hash that
    // stands for part of a key: a collision must be found without knowing it.
    XXH3_generateSecret(secret, sizeof secret, g.key_secret, sizeof g.key_secret);
  }
  XXH128_hash_t hash(char domain, std::string_view bytes) const {
    // The domain byte first: a user, a parameter and a whole key never hash alike.
    XXH3_state_t st;
    XXH3_128bits_reset_withSecret(&st, secret, sizeof secret);
    XXH3_128bits_update(&st, &domain, 1);
    XXH3_128bits_update(&st, bytes.data(), bytes.size());
    return XXH3_128bits_digest(&st);
  }
  alignas(64) unsigned char secret[XXH3_SECRET_DEFAULT_SIZE];

  struct Method {
    MethodSlot* slot = nullptr;
    steady::time_point retry_at{};  // when slot is nullptr: look again after this
  };
  std::mutex mutex;
  std::map<std::string, Method, std::less<>> methods;
};

Cache::Impl::MemoizeHolder::MemoizeHolder() = default;
Cache::Impl::MemoizeHolder::~MemoizeHolder() = default;

namespace {

std::atomic<flight::testing::Hook> g_method_lookup{nullptr};

MemoizeState& memo_state(const Cache& cache) {
  return detail::Access::impl(cache).memoize.get(detail::Access::segment(cache).geometry());
}

// The method's slot, looked up once per handle (cached, including a miss for
// kLookupRetry).
MethodSlot* method_slot(const Cache& cache, std::string_view name) {
  if (name.empty()) return nullptr;
  name = name.substr(0, layout::kMethodNameBytes);
  MemoizeState& state = memo_state(cache);
  const steady::time_point now = steady::now();
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (flight::testing::Hook hook = g_method_lookup.load(std::memory_order_acquire)) hook();
    auto it = state.methods.find(name);
    if (it != state.methods.end() && (it->second.slot != nullptr || now < it->second.retry_at)) {
      return it->second.slot;
    }
  }
  MethodSlot* slot = find_method_slot(detail::Access::segment(cache), name);  // no lock held
  std::lock_guard<std::mutex> lock(state.mutex);
  auto& m = state.methods[std::string(name)];
  if (m.slot == nullptr) m = {slot, now + kLookupRetry};
  return m.slot;
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

struct LookupTag {};  // Call::lookup's buffer

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
        method_(method_slot(cache, options.method)),
        start_(steady::now()) {}

  void run() {
    std::optional<Flights> flights;  // hashing the key is for misses only
    auto flights_of_key = [&]() -> Flights& {
      // Nothing waits past our own lease, whatever the segment says of others'.
      const auto own_lease = std::min<std::chrono::milliseconds>(options_.lease, kLongestLease);
      if (!flights) {
        flights.emplace(segment_, XXH3_64bits(key_.data(), key_.size()), start_ + own_lease);
      }
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
  // accept() may call the cache, and get_or_compute again: the thread's
  // buffer is taken for the call and given back after (its room kept), so a
  // nested lookup fills one of its own.
  Found lookup() {
    std::optional<std::string> own;
    std::string& kept = detail::thread_scratch<LookupTag>(own);
    std::string buffer = std::move(kept);
    kept.clear();
    const bool hit = cache_.get(key_, buffer);
    Found found = Found::nothing;
    if (hit) {
      Opened opened = open_envelope(buffer);
      if (hooks_.accept(hooks_.ctx, opened.value)) {
        const bool stale = opened.soft_expiry_ms != 0 && clock::now_ms() >= opened.soft_expiry_ms;
        found = stale ? Found::stale : Found::fresh;
      }
    }
    kept = std::move(buffer);
    return found;
  }

  // We hold the flight: the previous holder may have stored just before we claimed.
  // A lookup that throws (accept() did, or the cache) releases it: else
  // every other caller would wait out, or serve stale, the whole lease
  // (test_memoize, AnAcceptThatThrowsWhileHoldingTheFlightReleasesIt).
  void recheck_and_compute(const Flight* flight) {
    Found found;
    {
      flight::ReleaseGuard guard{flight};
      found = lookup();
      if (found != Found::fresh) guard.flight = nullptr;  // kept, for the compute
    }
    if (found == Found::fresh) return record(true, 0);
    compute_and_store(flight);
  }

  void compute_and_store(const Flight* flight) {
    flight::ReleaseGuard guard{flight};  // after the set below, so that waiters find the value
    const GenerationStamp stamp =
        cache_.generations(options_.set.tags, options_.set.ns);  // before compute (invariant 3)
    std::string bytes;
    // A child forked inside compute() that returns through here ran no
    // compute of its own: only the process that called it counts one.
    const stripe_lock::Identity caller = stripe_lock::identity();
    auto record_once = [&](std::size_t stored_bytes) {
      if (!stripe_lock::forked_since(caller)) record(false, stored_bytes);
    };
    try {
      hooks_.compute(hooks_.ctx, bytes);
    } catch (...) {
      record_once(0);
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
    Errc e;
    try {
      e = cache_.set(key_, stored, set, stamp);
    } catch (const Error& err) {
      // No stripe lock to be had in this thread now (io_error: its start
      // time could not be read; incompatible: its process moved namespace):
      // the value computed is still the caller's, only not cached
      // (test_attack_lock2, GetOrComputeWithoutAStartTimeReturnsTheComputedValue).
      if (err.code() != Errc::io_error && err.code() != Errc::incompatible) throw;
      e = err.code();
    }
    if (e != Errc::ok) {
      log::get().warn("memoize: '{}' not cached: {}", key_, to_string(e));
    }
    record_once(e == Errc::ok ? stored.size() : 0);
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

void append_hex128(std::string& out, XXH128_hash_t h) {
  append_hex(out, h.high64);
  append_hex(out, h.low64);
}

// Unkeyed: for tags only, where a collision over-invalidates (safe).
std::string hash128_token(std::string_view prefix, std::string_view bytes) {
  std::string out(prefix);
  append_hex128(out, XXH3_128bits(bytes.data(), bytes.size()));
  return out;
}

// A text part: '%', '_', ':' and bytes outside '!'..'~' as %XX (uppercase
// hex). So an escaped part never holds '_' (parts split one way only) nor
// ':' (the type tags below cannot be forged), and '%' is always followed by
// two uppercase hex digits ("%h" and "%u" cannot be forged either).
void append_escaped(std::string& out, std::string_view part) {
  static constexpr char kUpperHex[] = "0123456789ABCDEF";
  for (unsigned char c : part) {
    if (c > 0x20 && c < 0x7f && c != '%' && c != '_' && c != ':') {
      out.push_back(char(c));
    } else {
      out.push_back('%');
      out.push_back(kUpperHex[c >> 4]);
      out.push_back(kUpperHex[c & 15]);
    }
  }
}

using detail::KeyArg;

// Hash domains of the keyed hash.
constexpr char kDomainUser = 'u', kDomainParam = 'p', kDomainKey = 'k';

// An argument as it appears in a key: text escaped, the others type-tagged
// ("i:42", "b:true", "e:3", "h:" + the keyed hash of their msgpack bytes).
void append_arg(std::string& out, const MemoizeState& state, const KeyArg& a) {
  switch (a.kind) {
    case KeyArg::Kind::text:
      append_escaped(out, a.bytes);
      return;
    case KeyArg::Kind::packed:
      out.append("h:");
      append_hex128(out, state.hash(kDomainParam, a.bytes));
      return;
    case KeyArg::Kind::integer:
    case KeyArg::Kind::boolean:
    case KeyArg::Kind::enumeration:
      out.push_back(char(a.kind));
      out.push_back(':');
      append_escaped(out, a.bytes);  // digits, '-', letters: unchanged
      return;
  }
  out.append("?:");  // a Kind no build knows (a cast): still one token
  append_escaped(out, a.bytes);
}

// "u" + 32 hex digits of the keyed hash of the user's type tag and bytes.
std::string user_text(const MemoizeState& state, const KeyArg& user) {
  std::string tagged(1, char(user.kind));
  tagged.push_back(':');
  tagged.append(user.bytes);
  std::string out = "u";
  append_hex128(out, state.hash(kDomainUser, tagged));
  return out;
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

std::string user_token(const Cache& cache, const KeyArg& user) {
  return user_text(memo_state(cache), user);
}

std::string build_key(const Cache& cache, const KeyParts& parts) {
  const MemoizeState& state = memo_state(cache);
  const std::size_t max_key_bytes = cache.max_key_bytes();
  static const KeyArg kNone{};
  const std::string user = parts.user != nullptr ? user_text(state, *parts.user) : "any";
  // Every part is always there, after its separator (an empty one too): the
  // key splits on '_' into exactly 5 + params.size() tokens, each decoding
  // to one part, so two different calls never render alike.
  std::string key;
  append_escaped(key, parts.prefix);
  key.push_back('_');
  append_escaped(key, parts.method);
  key.push_back('_');
  append_arg(key, state, parts.app != nullptr ? *parts.app : kNone);
  key.push_back('_');
  append_arg(key, state, parts.model != nullptr ? *parts.model : kNone);
  key.push_back('_');
  key.append(user);  // "u" + hex or "any": no '_'
  const std::size_t head = key.size();
  if (parts.params != nullptr) {
    for (const KeyArg& p : *parts.params) {
      key.push_back('_');
      append_arg(key, state, p);
    }
  }
  if (key.size() <= max_key_bytes) return key;
  // Too long: a token no part renders ("%h", see append_escaped) and the
  // keyed hash of the whole key, after as much of the head as fits.
  std::string tail = "_%h";
  append_hex128(tail, state.hash(kDomainKey, key));
  if (head + tail.size() <= max_key_bytes) {
    key.resize(head);
    return key + tail;
  }
  std::string shortest;
  append_escaped(shortest, parts.prefix);
  shortest.push_back('_');
  if (shortest.size() + user.size() + tail.size() <= max_key_bytes) {
    shortest.append(user);  // prefix_user_%h...: 3 tokens, the user in plain sight
  } else {
    shortest.pop_back();    // prefix_%h...: 2 tokens
  }
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

bool flight::testing::set_method_lookup_hook(Hook hook) noexcept {
  if (!hooks_allowed()) return false;
  g_method_lookup.store(hook, std::memory_order_release);
  return true;
}

std::vector<MethodStats> method_stats(const Cache& cache) {
  const Segment& segment = detail::Access::segment(cache);
  const MethodSlot* slots = segment.method_slots();
  std::vector<MethodStats> out;
  for (std::uint32_t i = 0; i < segment.geometry().method_slots; ++i) {  // never the live header
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
