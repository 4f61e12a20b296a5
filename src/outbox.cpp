// outbox.cpp — the invalidation ring of layout.h's OutboxSlot, and the
// relay's state. See include/hostcache/outbox.h.
#include <hostcache/outbox.h>

#include <xxhash.h>

#include <cstring>

#include "atomic_words.h"
#include "cache_impl.h"
#include "clock.h"
#include "generations.h"
#include "outbox_write.h"

namespace hostcache {
namespace outbox {
namespace {

using layout::OutboxSlot;

constexpr std::size_t kWords = sizeof(OutboxSlot) / 8;

std::uint64_t* head_word(const Segment& s) { return &s.outbox()->head; }

// 48 bits of the event's sequence, kind, length and name, in the slot
// beside them: a body written by two producers a lap apart (the stamp of
// one on words of both) does not check, but for one in 2^48 (layout.h).
void event_check(std::uint64_t seq, std::uint8_t kind, std::uint8_t len, const char* name, std::uint8_t out[6]) {
  const std::uint64_t h = XXH3_64bits_withSeed(name, len, seq ^ (std::uint64_t(kind) << 56) ^ (std::uint64_t(len) << 48));
  for (int i = 0; i < 6; ++i) out[i] = std::uint8_t(h >> (8 * i));
}

}  // namespace

void append(Segment& segment, std::uint8_t kind, std::string_view name) {
  if (segment.read_only()) return;
  const std::uint32_t n = segment.geometry().outbox_slots;
  const std::uint64_t seq = std::atomic_ref<std::uint64_t>(*head_word(segment)).fetch_add(1, std::memory_order_acq_rel);
  OutboxSlot& slot = segment.outbox_slots()[seq % n];
  words::store(slot.stamp, 2 * seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  OutboxSlot image{};
  image.stamp = 2 * seq + 1;
  image.kind = kind;
  image.len = std::uint8_t(std::min<std::size_t>(name.size(), layout::kEventNameBytes - 1));
  if (image.len != 0) std::memcpy(image.name, name.data(), image.len);
  event_check(seq, image.kind, image.len, image.name, image.check);
  const auto* src = reinterpret_cast<const std::uint8_t*>(&image);
  auto* dst = reinterpret_cast<std::uint8_t*>(&slot);
  for (std::size_t w = 1; w < kWords; ++w) {
    std::uint64_t v;
    std::memcpy(&v, src + 8 * w, 8);
    words::store_word(dst + 8 * w, v);
  }
  words::store(slot.stamp, 2 * seq + 2, std::memory_order_release);
}

Polled poll(const Cache& cache, std::uint64_t cursor, std::size_t max) {
  const Segment& seg = detail::Access::segment(cache);
  const std::uint32_t n = seg.geometry().outbox_slots;
  Polled out;
  const std::uint64_t head = words::load(*head_word(seg), std::memory_order_acquire);
  out.next = cursor;
  if (head < cursor) {  // the segment's head went back: only a scribble does that
    out.lost = true;
    out.next = head;
    return out;
  }
  if (head - cursor > n) {
    out.lost = true;
    out.next = head;
    return out;
  }
  for (std::uint64_t seq = cursor; seq < head && out.events.size() < max; ++seq) {
    const OutboxSlot& slot = seg.outbox_slots()[seq % n];
    const std::uint64_t want = 2 * seq + 2;
    const std::uint64_t s1 = words::load(slot.stamp, std::memory_order_acquire);
    if (s1 < want) {  // claimed, not complete
      out.pending = true;
      out.next = seq;
      return out;
    }
    OutboxSlot copy;
    auto* dst = reinterpret_cast<std::uint8_t*>(&copy);
    const auto* src = reinterpret_cast<const std::uint8_t*>(&slot);
    for (std::size_t w = 0; w < kWords; ++w) {
      const std::uint64_t v = words::load_word(src + 8 * w);
      std::memcpy(dst + 8 * w, &v, 8);
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    const std::uint64_t s2 = words::load(slot.stamp, std::memory_order_relaxed);
    // What no producer writes is garbage too: a clear carries no name, a tag
    // 1..255 bytes, a namespace 1..kMaxNamespaceBytes.
    const bool shaped = copy.kind == layout::kEventClear       ? copy.len == 0
                        : copy.kind == layout::kEventTag       ? copy.len >= 1 && copy.len <= kMaxTagBytes
                        : copy.kind == layout::kEventNamespace ? copy.len >= 1 && copy.len <= kMaxNamespaceBytes
                                                               : false;
    std::uint8_t check[6];
    event_check(seq, copy.kind, copy.len, copy.name, check);  // len <= 255 < kEventNameBytes: within the copy
    if (s1 != want || s2 != want || !shaped || std::memcmp(check, copy.check, sizeof check) != 0) {
      // Overwritten by a producer a lap ahead, or written by two at once
      // (test_outbox, TwoProducersALapApart...), or garbage: lost.
      out.events.clear();
      out.lost = true;
      out.next = words::load(*head_word(seg), std::memory_order_acquire);
      return out;
    }
    Event e;
    e.seq = seq;
    e.kind = Kind(copy.kind);
    e.name.assign(copy.name, copy.len);
    out.events.push_back(std::move(e));
    out.next = seq + 1;
  }
  return out;
}

std::uint64_t head(const Cache& cache) {
  return words::load(*head_word(detail::Access::segment(cache)), std::memory_order_acquire);
}

void apply(Cache& cache, Kind kind, std::string_view name) {
  Segment& seg = detail::Access::segment(cache);
  switch (kind) {
    case Kind::clear:
      generations::bump_global(seg);
      break;
    case Kind::tag:
      generations::bump_tag(seg, name);
      break;
    case Kind::ns:
      generations::bump_ns(seg, name);
      break;
  }
}

std::string host_id(const Cache& cache) {
  const Geometry& g = detail::Access::segment(cache).geometry();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::uint64_t part : {g.host_id[0], g.host_id[1]}) {
    for (int shift = 60; shift >= 0; shift -= 4) out.push_back(kHex[(part >> shift) & 15]);
  }
  return out;
}

RelayStatus relay_status(const Cache& cache) {
  const layout::RelayState& r = *detail::Access::segment(cache).relay_state();
  RelayStatus s;
  s.pid = words::load(r.pid);
  s.connected = words::load(r.connected) != 0;
  s.heartbeat_ms = words::load(r.heartbeat_ms);
  s.published = words::load(r.published);
  s.applied = words::load(r.applied);
  s.lag_events = words::load(r.lag_events);
  s.lag_ms = words::load(r.lag_ms);
  s.resync_lost = words::load(r.resync_lost);
  s.resync_trimmed = words::load(r.resync_trimmed);
  s.resync_replay = words::load(r.resync_replay);
  s.overflow_clears = words::load(r.overflow_clears);
  s.stale_clears = words::load(r.stale_clears);
  s.proven_ms = words::load(r.proven_ms);
  const layout::RelayIds& ids = r.ids[words::load(r.ids_current, std::memory_order_acquire) & 1];
  s.cursor = words::load(ids.cursor);
  s.last_id_ms = words::load(ids.last_id_ms);
  s.last_id_seq = words::load(ids.last_id_seq);
  s.published_id_ms = words::load(ids.published_id_ms);
  s.published_id_seq = words::load(ids.published_id_seq);
  s.stream_hash = words::load(ids.stream_hash);
  return s;
}

void set_relay_status(Cache& cache, const RelayStatus& s) {
  layout::RelayState& r = *detail::Access::segment(cache).relay_state();
  words::store(r.pid, s.pid);
  words::store(r.connected, std::uint32_t(s.connected));
  words::store(r.heartbeat_ms, s.heartbeat_ms);
  words::store(r.published, s.published);
  words::store(r.applied, s.applied);
  words::store(r.lag_events, s.lag_events);
  words::store(r.lag_ms, s.lag_ms);
  words::store(r.resync_lost, s.resync_lost);
  words::store(r.resync_trimmed, s.resync_trimmed);
  words::store(r.resync_replay, s.resync_replay);
  words::store(r.overflow_clears, s.overflow_clears);
  words::store(r.stale_clears, s.stale_clears);
  words::store(r.proven_ms, s.proven_ms);
  // The cursor and the ids into the copy not in use, then that copy named
  // current: one store, which a kill -9 cannot cut in two. The cursor goes
  // with the published id: killed between the two, a publisher resumed past
  // an event with the id from before it, and missed its rollback
  // (test_attack_relay_liveness10, KillInsideTheSave/BeforeFlip).
  const std::uint64_t next = (words::load(r.ids_current) & 1) ^ 1;
  layout::RelayIds& ids = r.ids[next];
  words::store(ids.cursor, s.cursor);
  words::store(ids.last_id_ms, s.last_id_ms);
  words::store(ids.last_id_seq, s.last_id_seq);
  words::store(ids.published_id_ms, s.published_id_ms);
  words::store(ids.published_id_seq, s.published_id_seq);
  words::store(ids.stream_hash, s.stream_hash);
  words::store(r.ids_current, next, std::memory_order_release);
}

std::uint64_t hash_stream_key(std::string_view key) {
  const std::uint64_t h = XXH3_64bits(key.data(), key.size());
  return h == 0 ? 1 : h;
}

std::int64_t now_ms() { return clock::now_ms(); }

}  // namespace outbox
}  // namespace hostcache
