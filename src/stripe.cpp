#include "stripe.h"

#include <chrono>
#include <cstring>

#include "atomic_words.h"
#include "clock.h"
#include "crash_point.h"
#include "index.h"
#include "log.h"
#include "stripe_lock.h"

#include <hostcache/errors.h>

namespace hostcache::stripe {
namespace {

using layout::EntryHeader;
using words::load;
using words::store;

// Optimistic attempts before falling back to the lock, and pause iterations
// per attempt while the sequence is odd: a healthy writer holds a stripe for
// well under a microsecond, so a few microseconds of spinning is the bound.
constexpr int kOptimisticTries = 4;
constexpr int kSpinsWhileOdd = 256;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Found {
  std::uint64_t off = 0;
  EntryHeader h{};
  layout::Bucket* bucket = nullptr;
  layout::Bucket seen = 0;
};

// Finds the key's entry among its two bucket groups. Every offset is
// bounds-checked (read_header) before it is followed; the full key is compared.
bool find(const arena::StripeView& v, std::string_view key, std::uint64_t hash, Found& f) {
  const index::Probe p = index::probe(hash, v.groups);
  // The key is in either group (inserts go to the emptier one): start both
  // cache misses at once rather than one after the other.
  __builtin_prefetch(index::group(v.buckets, p.g2));
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = index::group(v.buckets, g);
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
      const layout::Bucket b = index::load(grp[i]);
      if (b == 0 || index::fingerprint_of(b) != p.fingerprint) continue;
      std::uint64_t off;
      if (!index::offset_of(b, v.arena_bytes, off)) continue;
      // Header, key and the value's start: one miss's latency instead of four.
      for (int line = 1; line < 4; ++line) __builtin_prefetch(v.arena + off + 64 * line);
      if (!arena::read_header(v, off, f.h)) continue;
      if (f.h.kind != layout::kKindEntry || f.h.live != 1 || f.h.hash != hash || f.h.key_len != key.size()) continue;
      if (!words::equal(v.arena, arena::key_off(off), key.data(), key.size())) continue;
      f.off = off;
      f.bucket = &grp[i];
      f.seen = b;
      return true;
    }
  }
  return false;
}

Lookup judge_and_copy(const arena::StripeView& v, const Found& f, const generations::Judge& judge,
                      std::string& out) {
  switch (judge.of(f.h)) {
    case generations::State::expired:
      return Lookup::expired;
    case generations::State::stale:
      return Lookup::stale;
    case generations::State::valid:
      break;
  }
  out.resize(f.h.value_len);
  words::copy_out(v.arena, arena::value_off(f.off, f.h), f.h.value_len, out.data());
  return Lookup::hit;
}

// Builds the entry image in private memory: header, key, value, tags, padding.
const std::uint8_t* build_image(const Write& w, const GenerationStamp& stamp, std::uint32_t size) {
  thread_local std::vector<std::uint64_t> image;
  image.assign(size / 8, 0);
  auto* bytes = reinterpret_cast<std::uint8_t*>(image.data());
  EntryHeader h{};
  h.size = size;
  h.magic = layout::kEntryMagic;
  h.kind = layout::kKindEntry;
  h.live = 1;
  h.key_len = std::uint32_t(w.key.size());
  h.value_len = std::uint32_t(w.value.size());
  h.hash = w.hash;
  h.expires_ms = w.expires_ms;
  h.global_gen = stamp.global;
  std::size_t p = layout::kHeaderBytes;
  std::memcpy(bytes + p, w.key.data(), w.key.size());
  p += w.key.size();
  if (!w.value.empty()) std::memcpy(bytes + p, w.value.data(), w.value.size());
  p += w.value.size();
  const std::size_t tags_start = p;
  if (w.tags != nullptr) {
    h.ntags = std::uint8_t(w.tags->size());
    for (std::size_t i = 0; i < w.tags->size(); ++i) {
      const std::string_view t = (*w.tags)[i];
      bytes[p++] = std::uint8_t(t.size());
      std::memcpy(bytes + p, t.data(), t.size());
      p += t.size();
      h.tag_slot[i] = w.tag_slots[i];
      h.tag_gen[i] = stamp.tags[i];
    }
  }
  h.tags_len = std::uint16_t(p - tags_start);
  std::memcpy(bytes, &h, sizeof h);
  h.checksum = arena::checksum_of(bytes, h);
  std::memcpy(bytes, &h, sizeof h);
  return bytes;
}

// Both groups are full: kill the coldest of the 16 (expired or stale first,
// then one not referenced) and return its bucket.
layout::Bucket* make_bucket(const arena::StripeView& v, std::uint64_t hash, const generations::Judge& judge) {
  const index::Probe p = index::probe(hash, v.groups);
  layout::Bucket* victim = nullptr;
  int victim_rank = 3;
  std::uint64_t victim_age = 0;
  std::uint64_t victim_off = 0;
  EntryHeader victim_h{};
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = index::group(v.buckets, g);
    for (std::uint32_t i = 0; i < layout::kGroupSlots; ++i) {
      const layout::Bucket b = index::load(grp[i]);
      std::uint64_t off;
      EntryHeader h;
      if (b == 0) return &grp[i];
      if (!index::offset_of(b, v.arena_bytes, off) || !arena::read_header(v, off, h)) {
        index::store(grp[i], 0);  // points nowhere sane: just reuse it
        return &grp[i];
      }
      const int rank = judge.of(h) != generations::State::valid ? 0 : (b & layout::kRefBit) ? 2 : 1;
      // Among equals, the oldest (nearest the tail) goes: it is next to be
      // passed by the arena anyway, while an entry just given a second chance
      // sits near the head.
      const std::uint64_t age = (off + v.arena_bytes - load(v.hdr->tail)) % v.arena_bytes;
      if (rank < victim_rank || (rank == victim_rank && age < victim_age)) {
        victim_age = age;
        victim = &grp[i];
        victim_rank = rank;
        victim_off = off;
        victim_h = h;
      }
    }
  }
  HOSTCACHE_CRASH_POINT("index.before_evict");
  arena::kill(v, victim_off, victim_h, victim);
  std::uint64_t& counter = victim_rank == 0 ? (victim_h.expires_ms <= judge.now_ms() ? v.hdr->expired : v.hdr->stale)
                                            : v.hdr->evictions;
  store(counter, load(counter) + 1);
  return victim;
}

std::atomic<RecoveryObserver> g_recovery_observer{nullptr};

}  // namespace

void set_recovery_observer(RecoveryObserver observer) noexcept { g_recovery_observer.store(observer); }

Locked::Locked(Segment& segment, std::uint32_t index)
    : segment_(segment), view_(arena::StripeView::over(segment.stripe_base(index), segment.geometry())) {
  const stripe_lock::Acquired a =
      stripe_lock::lock(*view_.hdr, std::chrono::steady_clock::now() + segment.lock_timeout());
  if (!a.acquired) {
    throw Error(Errc::busy, "segment '" + segment.name() + "' stripe " + std::to_string(index) +
                                ": locked by live thread " + std::to_string(a.holder_tid) + " for more than " +
                                std::to_string(segment.lock_timeout().count()) + " ms (lock_timeout)");
  }
  // A sequence left odd means a writer stopped mid-mutation (it died, or the
  // segment was scribbled on) even if the lock word was free.
  const bool sane = arena::header_sane(view_) && (load(view_.hdr->seq) & 1) == 0;
  if (!a.owner_died && sane) return;
  try {
    recover(index, a.owner_died, a.dead_pid != 0 ? a.dead_pid : a.dead_tid);
  } catch (...) {
    stripe_lock::unlock(*view_.hdr);  // never leave the lock held by a live thread
    throw;
  }
}

void Locked::recover(std::uint32_t index, bool owner_died, std::uint32_t dead) {
  const auto t0 = std::chrono::steady_clock::now();
  // Readers must not see the index half rebuilt: odd for the whole repair,
  // whatever the dead owner left.
  const std::uint64_t seq0 = load(view_.hdr->seq);
  if ((seq0 & 1) == 0) store(view_.hdr->seq, seq0 + 1);
  std::atomic_thread_fence(std::memory_order_release);
  std::string why;
  std::uint64_t kept = 0, dropped = 0;
  bool repaired = false;
  try {
    repaired = arena::repair(view_, &why, &kept, &dropped);
  } catch (...) {
    // Out of memory while walking: the stripe's structure is unknown, so it
    // starts afresh (no allocation needed), as for a ring that cannot be walked.
    arena::reset(view_);
    store(view_.hdr->resets, load(view_.hdr->resets) + 1);
    why = "repair failed (out of memory)";
  }
  store(view_.hdr->recoveries, load(view_.hdr->recoveries) + 1);
  store(view_.hdr->seq, load(view_.hdr->seq) + 1, std::memory_order_release);  // even again
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  if (RecoveryObserver observer = g_recovery_observer.load()) observer(std::uint64_t(us.count()), !repaired);
  std::string cause = !owner_died ? std::string("its header was out of bounds or its sequence odd")
                                  : "thread " + std::to_string(dead) + " died holding its lock";
  if (repaired) {
    log::get().warn("segment '{}' stripe {}: {}; repaired in {} us, kept {} entries, dropped {}", segment_.name(),
                    index, cause, us.count(), kept, dropped);
  } else {
    log::get().warn("segment '{}' stripe {}: {}; the stripe could not be verified ({}) and was reset",
                    segment_.name(), index, cause, why);
  }
}

Locked::~Locked() {
  if (writing_) end();
  stripe_lock::unlock(*view_.hdr);
}

void Locked::begin() {
  store(view_.hdr->seq, load(view_.hdr->seq) + 1);
  std::atomic_thread_fence(std::memory_order_release);
  writing_ = true;
}

void Locked::end() {
  store(view_.hdr->seq, load(view_.hdr->seq) + 1, std::memory_order_release);
  writing_ = false;
}

Lookup get(Segment& segment, std::string_view key, std::uint64_t hash, std::string& out) {
  const std::uint32_t index = of(hash, segment.geometry().stripe_count);
  const arena::StripeView v = arena::StripeView::over(segment.stripe_base(index), segment.geometry());
  const generations::Judge judge(segment);
  for (int attempt = 0; attempt < kOptimisticTries; ++attempt) {
    std::uint64_t s1 = load(v.hdr->seq, std::memory_order_acquire);
    for (int spin = 0; (s1 & 1) && spin < kSpinsWhileOdd; ++spin) {
      cpu_relax();
      s1 = load(v.hdr->seq, std::memory_order_acquire);
    }
    if (s1 & 1) continue;
    Found f;
    Lookup r = Lookup::miss;
    if (find(v, key, hash, f)) r = judge_and_copy(v, f, judge, out);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (load(v.hdr->seq) == s1) {
      if (r == Lookup::hit) index::touch(*f.bucket, f.seen);
      return r;
    }
  }
  try {
    Locked locked(segment, index);
    Found f;
    Lookup r = Lookup::miss;
    if (find(v, key, hash, f)) r = judge_and_copy(v, f, judge, out);
    if (r == Lookup::hit) index::touch(*f.bucket, f.seen);
    return r;
  } catch (const Error& e) {
    if (e.code() != Errc::busy) throw;
    log::get().warn("get: {}; answered as a miss", e.what());
    return Lookup::miss;
  }
}

bool set(Segment& segment, const Write& w) {
  const std::uint32_t index = of(w.hash, segment.geometry().stripe_count);
  const std::uint64_t tags_len = [&] {
    std::uint64_t n = 0;
    if (w.tags) {
      for (auto t : *w.tags) n += 1 + t.size();
    }
    return n;
  }();
  const std::uint64_t size64 = arena::entry_size(w.key.size(), w.value.size(), tags_len);
  // Whatever limits the caller was given, an entry must fit its arena.
  if (size64 > segment.geometry().arena_bytes) return false;
  const auto size = std::uint32_t(size64);
  // The image is built before the lock, so the critical section only copies.
  // Reading the generations here rather than under the lock is still
  // linearizable: a clear() that lands in between makes this set's entry
  // stale, as if the set had completed just before the clear.
  const GenerationStamp stamp =
      w.stamp != nullptr ? *w.stamp : generations::read(segment, w.tag_slots, w.tags ? unsigned(w.tags->size()) : 0);
  const std::uint8_t* image = build_image(w, stamp, size);
  Locked locked(segment, index);
  const arena::StripeView& v = locked.view();
  const generations::Judge judge(segment);
  locked.begin();
  HOSTCACHE_CRASH_POINT("set.begin");
  Found old;
  if (find(v, w.key, w.hash, old)) {
    arena::kill(v, old.off, old.h, old.bucket);
    HOSTCACHE_CRASH_POINT("set.after_kill_old");
  }
  const std::uint64_t off = arena::make_room(v, size, judge);
  if (off == arena::kNoRoom) return false;  // unreachable: size checked above
  HOSTCACHE_CRASH_POINT("set.after_make_room");
  arena::append(v, off, image, size, judge);
  layout::Bucket* bucket = arena::place(v, w.hash);
  if (bucket == nullptr) bucket = make_bucket(v, w.hash, judge);
  index::store(*bucket, index::encode(off, index::probe(w.hash, v.groups).fingerprint));
  HOSTCACHE_CRASH_POINT("set.after_index");
  store(v.hdr->entries, load(v.hdr->entries) + 1);
  store(v.hdr->sets, load(v.hdr->sets) + 1);
  locked.end();
  return true;
}

bool erase(Segment& segment, std::string_view key, std::uint64_t hash) {
  Locked locked(segment, of(hash, segment.geometry().stripe_count));
  const arena::StripeView& v = locked.view();
  Found f;
  if (!find(v, key, hash, f)) return false;
  locked.begin();
  HOSTCACHE_CRASH_POINT("erase.begin");
  arena::kill(v, f.off, f.h, f.bucket);
  HOSTCACHE_CRASH_POINT("erase.after_kill");
  store(v.hdr->erases, load(v.hdr->erases) + 1);
  locked.end();
  return true;
}

}  // namespace hostcache::stripe
