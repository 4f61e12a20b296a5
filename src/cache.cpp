#include <hostcache/cache.h>

// Inlined xxHash: a get hashes a short key, where a call into the shared
// library costs as much as the hash itself.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>

#include "arena.h"
#include "cache_impl.h"
#include "clock.h"
#include "compress.h"
#include "generations.h"
#include "log.h"
#include "outbox_write.h"
#include "segment.h"
#include "stripe.h"
#include "thread_scratch.h"

namespace hostcache {

// ---- errors --------------------------------------------------------------------

const char* to_string(Errc e) noexcept {
  switch (e) {
    case Errc::ok: return "ok";
    case Errc::key_too_large: return "key_too_large";
    case Errc::value_too_large: return "value_too_large";
    case Errc::invalid_ttl: return "invalid_ttl";
    case Errc::too_many_tags: return "too_many_tags";
    case Errc::tag_too_large: return "tag_too_large";
    case Errc::invalid_name: return "invalid_name";
    case Errc::invalid_config: return "invalid_config";
    case Errc::capacity_too_small: return "capacity_too_small";
    case Errc::not_found: return "not_found";
    case Errc::already_exists: return "already_exists";
    case Errc::incompatible: return "incompatible";
    case Errc::corrupt: return "corrupt";
    case Errc::permission_denied: return "permission_denied";
    case Errc::io_error: return "io_error";
    case Errc::empty_key: return "empty_key";
    case Errc::busy: return "busy";
    case Errc::not_integer: return "not_integer";
    case Errc::overflow: return "overflow";
    case Errc::invalid_namespace: return "invalid_namespace";
  }
  return "unknown";
}

Error::Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}

// ---- the handle ------------------------------------------------------------------

namespace {

std::uint64_t hash_key(std::string_view key) { return XXH3_64bits(key.data(), key.size()); }

bool disabled_by_environment() {
  const char* v = std::getenv("HOSTCACHE_DISABLED");
  return v != nullptr && v[0] != '\0' && std::string_view(v) != "0";
}

// The largest value an entry with the given key length can carry in one arena.
std::size_t value_room(const Geometry& g, std::size_t max_key) {
  const std::uint64_t fixed = max_entry_bytes(max_key, 0) + 8;
  return g.arena_bytes > fixed ? std::size_t(g.arena_bytes - fixed) : 0;
}

// The largest key an entry with an empty value and maximal tags can carry.
std::size_t key_room(const Geometry& g) {
  const std::uint64_t fixed = max_entry_bytes(0, 0) + 8;
  const std::uint64_t room = g.arena_bytes > fixed ? g.arena_bytes - fixed : 0;
  return std::size_t(std::min<std::uint64_t>(room, 1u << 20));
}

}  // namespace

Cache::Impl::Impl(std::unique_ptr<Segment> seg) : segment(std::move(seg)), stats(segment.get()) {}

Cache::Cache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Cache::Cache(Cache&&) noexcept = default;
Cache& Cache::operator=(Cache&&) noexcept = default;
Cache::~Cache() = default;

Cache Cache::open(const Config& config) {
  bool created = false;
  auto impl = std::make_unique<Impl>(Segment::open(config, created));
  const Geometry& g = impl->segment->geometry();
  impl->default_ttl = config.default_ttl;
  // An attacher's limits are its own, clamped to what one stripe's arena can
  // hold: every entry fits its arena by construction (do_set checks the
  // whole entry's size too).
  impl->max_key_bytes = std::min<std::size_t>(config.max_key_bytes, key_room(g));
  impl->max_value_bytes = std::min(config.max_value_bytes, value_room(g, 0));
  impl->enabled = config.enabled && !disabled_by_environment();
  impl->segment->set_lock_timeout(config.lock_timeout);
  impl->compress_min_bytes = config.compress_min_bytes;
  impl->compress_level = config.compress_level;
  return Cache(std::move(impl));
}

Cache Cache::attach(std::string_view name) { return attach(name, false); }

Cache Cache::attach(std::string_view name, bool allow_foreign) {
  return attached(Segment::attach(name, allow_foreign, Segment::Access::read_write));
}

Cache Cache::attach_pid(std::uint32_t pid, std::string_view name, bool allow_foreign) {
  return attached(Segment::attach_pid(pid, name, allow_foreign, Segment::Access::read_write));
}

// A handle on a segment attached with the limits it was created with: those
// verified at attach (Geometry), never the live header again.
Cache Cache::attached(std::unique_ptr<Segment> segment) {
  auto impl = std::make_unique<Impl>(std::move(segment));
  const Geometry& g = impl->segment->geometry();
  impl->default_ttl = std::chrono::milliseconds(g.default_ttl_ms);
  impl->max_key_bytes = std::min<std::size_t>(std::size_t(g.max_key_bytes), key_room(g));
  impl->max_value_bytes = std::min<std::size_t>(g.max_value_bytes, value_room(g, 0));
  impl->enabled = !disabled_by_environment();
  impl->compress_min_bytes = Config{}.compress_min_bytes;
  impl->compress_level = Config{}.compress_level;
  return Cache(std::move(impl));
}

bool Cache::remove(std::string_view name) { return Segment::remove(name); }

namespace {

stripe::Lookup lookup(Cache::Impl& impl, std::string_view key, stripe::Dest& dest, stripe::Meta* meta,
                      std::uint64_t hash) {
  const stripe::Lookup r = stripe::get(*impl.segment, key, hash, dest, meta);
  if (r == stripe::Lookup::hit) {
    impl.stats.hit();
  } else {
    impl.stats.miss();
  }
  if (log::debug_enabled()) [[unlikely]] {
    static constexpr const char* kWords[] = {"hit", "miss", "miss (expired)", "miss (stale)"};
    log::get().debug("get '{}': {}", key, kWords[int(r)]);
  }
  return r;
}

bool key_ok(const Cache::Impl& impl, std::string_view key) {
  return !key.empty() && key.size() <= impl.max_key_bytes;
}

}  // namespace

namespace {
// A get whose key views the destination string: with a copy of the key.
[[gnu::noinline]] bool get_aliased(const Cache& cache, std::string_view key, std::string& value) {
  const std::string own(key);
  return cache.get(own, value);
}
}  // namespace

bool Cache::get(std::string_view key, std::string& value) const {
  if (!key_ok(*impl_, key)) {
    impl_->stats.miss();
    return false;
  }
  // A key that views `value`'s buffer (a value used as the next key; its
  // terminator, or bytes past its size within its capacity, count too:
  // test_attack_alias, TerminatorKey) would be overwritten, or freed, by the
  // copy it asks for: it is copied first.
  const std::less<const char*> before;  // a total order, for pointers into unrelated objects
  if (before(key.data(), value.data() + value.capacity() + 1) && before(value.data(), key.data() + key.size()))
      [[unlikely]] {
    return get_aliased(*this, key, value);
  }
  stripe::Dest dest{&value, nullptr, nullptr, impl_->max_value_bytes};
  return lookup(*impl_, key, dest, nullptr, hash_key(key)) == stripe::Lookup::hit;
}

std::optional<std::string> Cache::get(std::string_view key) const {
  std::string value;
  if (!get(key, value)) return std::nullopt;
  return value;
}

bool Cache::get_into(std::string_view key, ValueSink sink, void* ctx) const {
  if (!key_ok(*impl_, key)) {
    impl_->stats.miss();
    return false;
  }
  // The key may view memory the sink hands out (the last value as the next
  // key), which the copy overwrites, or the sink frees as it grows, before
  // a retry or the log reads the key again: it is copied first (on the
  // stack up to 256 bytes). test_attack_scratch, SinkAlias.
  char small[256];
  std::string large;
  std::string_view own;
  if (key.size() <= sizeof small) {
    std::memcpy(small, key.data(), key.size());
    own = std::string_view(small, key.size());
  } else {
    large.assign(key);
    own = large;
  }
  stripe::Dest dest{nullptr, sink, ctx, impl_->max_value_bytes};
  return lookup(*impl_, own, dest, nullptr, hash_key(own)) == stripe::Lookup::hit;
}

namespace {

// get_many's per-thread buffers (thread_scratch.h: a call from a thread-exit
// destructor gets its own).
struct Batch {
  std::vector<std::uint64_t> hashes;
  std::vector<stripe::Ahead> ahead;
  std::string key_bytes;                 // get_many into strings: a copy of the keys
  std::vector<std::string_view> own_keys;  // views of key_bytes
};
struct BatchTag {};

// get_many's lookups: key i's value goes into *dest_of(i), then found(i, hit)
// is told whether it is there (a key that is no key is a miss, found only).
template <class DestOf, class Found>
void lookup_many(Cache::Impl& impl, Batch& batch, const std::vector<std::string_view>& keys, DestOf dest_of,
                 Found found) {
  // Hash everything and start every key's bucket loads first: the misses
  // overlap instead of following one another.
  std::vector<std::uint64_t>& hashes = batch.hashes;
  std::vector<stripe::Ahead>& ahead = batch.ahead;
  hashes.resize(keys.size());
  ahead.resize(keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    hashes[i] = hash_key(keys[i]);
    stripe::prefetch(*impl.segment, hashes[i]);
  }
  // Then, the groups having arrived meanwhile, every candidate entry's first
  // 512 bytes: three rounds of misses for the whole batch instead of per key.
  for (std::size_t i = 0; i < keys.size(); ++i) ahead[i] = stripe::prefetch_entry(*impl.segment, hashes[i]);
  // A large value's rest is started one key ahead of its copy (4 KiB
  // get_many of 16: 0.69-0.73 of the time without, bench/ab.sh).
  if (!keys.empty()) stripe::prefetch_rest(ahead[0]);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i + 1 < keys.size()) stripe::prefetch_rest(ahead[i + 1]);
    if (!key_ok(impl, keys[i])) {
      impl.stats.miss();
      found(i, false);
      continue;
    }
    stripe::Dest dest{dest_of(i), nullptr, nullptr, impl.max_value_bytes};  // straight into the result
    found(i, lookup(impl, keys[i], dest, nullptr, hashes[i]) == stripe::Lookup::hit);
  }
}

}  // namespace

std::vector<std::optional<std::string>> Cache::get_many(const std::vector<std::string_view>& keys) const {
  std::vector<std::optional<std::string>> out(keys.size());
  std::optional<Batch> own;
  lookup_many(
      *impl_, detail::thread_scratch<BatchTag>(own), keys, [&](std::size_t i) { return &out[i].emplace(); },
      [&](std::size_t i, bool hit) {
        if (!hit) out[i].reset();
      });
  return out;
}

std::size_t Cache::get_many(const std::vector<std::string_view>& keys, std::vector<std::string>& values,
                            std::vector<bool>& hits) const {
  // The keys may view the strings about to be written (the last batch's
  // values as this batch's keys), which the copies and the resize below
  // overwrite or free: they are copied first (a few hundred bytes for a
  // batch of 16, against the values' copies). test_attack_perf5.
  std::optional<Batch> own;
  Batch& batch = detail::thread_scratch<BatchTag>(own);
  std::string& key_bytes = batch.key_bytes;
  std::vector<std::string_view>& own_keys = batch.own_keys;
  key_bytes.clear();
  for (std::string_view k : keys) key_bytes.append(k);
  own_keys.resize(keys.size());
  for (std::size_t i = 0, at = 0; i < keys.size(); at += keys[i].size(), ++i) {
    own_keys[i] = std::string_view(key_bytes.data() + at, keys[i].size());
  }
  // Never shrunk: the strings past a smaller batch keep their room for the
  // next larger one (test_attack_alias, ReusedStrings).
  if (values.size() < keys.size()) values.resize(keys.size());
  hits.assign(keys.size(), false);
  std::size_t n = 0;
  lookup_many(
      *impl_, batch, own_keys, [&](std::size_t i) { return &values[i]; },
      [&](std::size_t i, bool hit) {
        hits[i] = hit;
        n += hit;
      });
  return n;
}

std::optional<std::chrono::milliseconds> Cache::ttl(std::string_view key) const {
  if (!key_ok(*impl_, key)) return std::nullopt;
  std::string unused;
  stripe::Dest dest{&unused, nullptr, nullptr, impl_->max_value_bytes};
  stripe::Meta meta;
  if (stripe::get(*impl_->segment, key, hash_key(key), dest, &meta) != stripe::Lookup::hit) return std::nullopt;
  if (meta.expires_ms == std::numeric_limits<std::int64_t>::max()) return kNoExpiry;
  return std::chrono::milliseconds(std::max<std::int64_t>(1, meta.expires_ms - clock::now_ms()));
}

namespace {

Errc validate(const Cache::Impl& impl, std::string_view key, std::string_view value, const SetOptions& o) {
  if (key.empty()) return Errc::empty_key;
  if (key.size() > impl.max_key_bytes) return Errc::key_too_large;
  if (value.size() > impl.max_value_bytes) return Errc::value_too_large;
  if (o.ttl.count() < 0) return Errc::invalid_ttl;
  if (o.tags.size() > kMaxTags) return Errc::too_many_tags;
  if (o.ns.size() > kMaxNamespaceBytes) return Errc::invalid_namespace;
  std::uint64_t tags_len = o.ns.size();
  for (std::string_view t : o.tags) {
    if (t.empty() || t.size() > kMaxTagBytes) return Errc::tag_too_large;
    tags_len += 1 + t.size();
  }
  // Each limit alone may allow more than one stripe's arena holds together
  // (an attacher's limits are clamped one by one): the whole entry must fit.
  if (arena::entry_size(key.size(), value.size(), tags_len) > impl.segment->geometry().arena_bytes) {
    return key.size() > value.size() ? Errc::key_too_large : Errc::value_too_large;
  }
  return Errc::ok;
}

// The absolute expiry of a TTL given now (0: the default; kNoExpiry: never).
std::int64_t expiry_of(const Cache::Impl& impl, std::chrono::milliseconds ttl) {
  const std::int64_t t = ttl.count() == 0 ? impl.default_ttl.count() : ttl.count();
  const std::int64_t now = clock::now_ms();
  constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();
  return t == kNever || t > kNever - now ? kNever : now + t;
}

struct FrameTag {};  // a compressed value's frame, for the set that stores it

Errc do_set(Cache::Impl& impl, std::string_view key, std::string_view value, const SetOptions& o,
            const GenerationStamp* stamp, stripe::Mode mode) {
  // The caller's value is copied last, but its loads start first: under
  // the key's hashing and the bucket lookups (stripe::set) rather than after.
  for (std::size_t at = 0; at < value.size() && at < 512; at += 64) __builtin_prefetch(value.data() + at);
  if (Errc e = validate(impl, key, value, o); e != Errc::ok) return e;
  const std::uint32_t tag_slots = impl.segment->geometry().tag_slots;
  std::uint32_t slots[kMaxTags] = {};
  for (std::size_t i = 0; i < o.tags.size(); ++i) slots[i] = generations::slot_of(o.tags[i], tag_slots);
  stripe::Write w;
  w.key = key;
  w.hash = hash_key(key);
  w.value = value;
  w.tags = &o.tags;
  w.tag_slots = slots;
  w.stamp = stamp;
  w.expires_ms = expiry_of(impl, o.ttl);
  w.ns = o.ns;
  w.ns_slot = o.ns.empty() ? 0 : generations::ns_slot_of(o.ns, tag_slots);
  std::optional<std::string> own_frame;  // the frame's home at thread exit: it must outlive the set below
  if (impl.compress_min_bytes != 0 && value.size() >= impl.compress_min_bytes) {
    std::string& frame = detail::thread_scratch<FrameTag>(own_frame);
    if (compress::worth_compressing(value, impl.compress_level, frame)) {
      w.value = frame;
      w.compressed = true;
      w.orig_len = std::uint32_t(value.size());
    }
  }
  try {
    switch (stripe::set(*impl.segment, w, mode)) {
      case stripe::SetResult::stored:
        return Errc::ok;
      case stripe::SetResult::exists:
        return Errc::already_exists;
      case stripe::SetResult::too_big:
        return value.size() > key.size() ? Errc::value_too_large : Errc::key_too_large;
    }
  } catch (const Error& e) {
    if (e.code() != Errc::busy) throw;
    log::get().warn("set '{}': {}", key, e.what());
    return Errc::busy;
  }
  return Errc::ok;
}

void check_namespace(const Cache::Impl& impl, std::string_view ns) {
  if (ns.empty() || ns.size() > kMaxNamespaceBytes) {
    throw Error(Errc::invalid_namespace, "segment '" + impl.segment->name() + "': a namespace is 1.." +
                                             std::to_string(kMaxNamespaceBytes) + " bytes, not " +
                                             std::to_string(ns.size()));
  }
}

}  // namespace

Errc Cache::set(std::string_view key, std::string_view value, const SetOptions& options) {
  return do_set(*impl_, key, value, options, nullptr, stripe::Mode::set);
}

Errc Cache::set(std::string_view key, std::string_view value, const SetOptions& options,
                const GenerationStamp& stamp) {
  if (stamp.ntags != options.tags.size()) return Errc::too_many_tags;
  return do_set(*impl_, key, value, options, &stamp, stripe::Mode::set);
}

Errc Cache::add(std::string_view key, std::string_view value, const SetOptions& options) {
  return do_set(*impl_, key, value, options, nullptr, stripe::Mode::add);
}

std::vector<Errc> Cache::set_many(const std::vector<std::pair<std::string_view, std::string_view>>& items,
                                  const SetOptions& options) {
  std::vector<Errc> out;
  out.reserve(items.size());
  for (const auto& [k, v] : items) out.push_back(set(k, v, options));
  return out;
}

Errc Cache::incr(std::string_view key, std::int64_t delta, std::int64_t& result) {
  if (key.empty()) return Errc::empty_key;
  if (key.size() > impl_->max_key_bytes) return Errc::key_too_large;
  try {
    return stripe::incr(*impl_->segment, key, hash_key(key), delta, result);
  } catch (const Error& e) {
    if (e.code() != Errc::busy) throw;
    return Errc::busy;
  }
}

Errc Cache::decr(std::string_view key, std::int64_t delta, std::int64_t& result) {
  if (delta == std::numeric_limits<std::int64_t>::min()) return Errc::overflow;
  return incr(key, -delta, result);
}

bool Cache::touch(std::string_view key, std::chrono::milliseconds ttl) {
  if (ttl.count() < 0) {
    throw Error(Errc::invalid_ttl, "touch on segment '" + impl_->segment->name() + "': negative TTL " +
                                       std::to_string(ttl.count()) + " ms");
  }
  if (!key_ok(*impl_, key)) return false;
  return stripe::touch(*impl_->segment, key, hash_key(key), expiry_of(*impl_, ttl));
}

void Cache::clear(std::string_view ns) {
  check_namespace(*impl_, ns);
  generations::bump_ns(*impl_->segment, ns);
  outbox::append(*impl_->segment, layout::kEventNamespace, ns);
}

GenerationStamp Cache::generations(const std::vector<std::string_view>& tags, std::string_view ns) const {
  const std::uint32_t tag_slots = impl_->segment->geometry().tag_slots;
  std::uint32_t slots[kMaxTags] = {};
  const unsigned n = unsigned(std::min(tags.size(), kMaxTags));
  for (unsigned i = 0; i < n; ++i) slots[i] = generations::slot_of(tags[i], tag_slots);
  return generations::read(*impl_->segment, slots, n, !ns.empty(), ns.empty() ? 0 : generations::ns_slot_of(ns, tag_slots));
}

bool Cache::erase(std::string_view key) {
  if (key.empty() || key.size() > impl_->max_key_bytes) return false;
  return stripe::erase(*impl_->segment, key, hash_key(key));
}

void Cache::clear() {
  generations::bump_global(*impl_->segment);
  outbox::append(*impl_->segment, layout::kEventClear, {});
}

void Cache::invalidate(std::string_view tag) {
  if (tag.empty() || tag.size() > kMaxTagBytes) {
    throw Error(Errc::tag_too_large, "invalidate on segment '" + impl_->segment->name() + "': a tag is 1.." +
                                         std::to_string(kMaxTagBytes) + " bytes, not " + std::to_string(tag.size()));
  }
  generations::bump_tag(*impl_->segment, tag);
  outbox::append(*impl_->segment, layout::kEventTag, tag);
}

Stats Cache::stats() const { return StatsRecorder::read(*impl_->segment); }

std::string_view Cache::name() const { return impl_->segment->name(); }
std::chrono::milliseconds Cache::default_ttl() const { return impl_->default_ttl; }
std::size_t Cache::max_key_bytes() const { return impl_->max_key_bytes; }
std::size_t Cache::max_value_bytes() const { return impl_->max_value_bytes; }
bool Cache::enabled() const { return impl_->enabled; }

}  // namespace hostcache
