#include "stripe.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <limits>

#include "atomic_words.h"
#include "clock.h"
#include "compress.h"
#include "crash_point.h"
#include "index.h"
#include "log.h"
#include "stripe_lock.h"
#include "thread_scratch.h"

#include <hostcache/errors.h>

namespace hostcache::stripe {
namespace {

using layout::EntryHeader;
using words::load;
using words::replace;
using words::store;

// Optimistic attempts before falling back to the lock, and pause iterations
// per attempt while the sequence is odd: a healthy writer holds a stripe for
// well under a microsecond, so a few microseconds of spinning is the bound.
constexpr int kOptimisticTries = 4;
constexpr int kSpinsWhileOdd = 256;

struct Found {
  std::uint64_t off = 0;
  EntryHeader h;  // filled by find(); meaningful only when it returned true (not zeroed: every get makes one)
  layout::Bucket* bucket = nullptr;
  layout::Bucket seen = 0;
};

// Finds the key's entry among its two bucket groups. Every offset is
// bounds-checked (read_live_header) before it is followed; the full key is compared.
bool find(const arena::StripeView& v, std::string_view key, std::uint64_t hash, Found& f) {
  const index::Probe p = index::probe(hash, v.groups);
  // The key is in either group (inserts go to the emptier one): start both
  // cache misses at once rather than one after the other.
  __builtin_prefetch(index::group(v.buckets, p.g2));
  for (std::uint32_t g : {p.g1, p.g2}) {
    layout::Bucket* grp = index::group(v.buckets, g);
    for (unsigned m = index::candidates(grp, p.fingerprint); m != 0; m &= m - 1) {
      const unsigned i = unsigned(__builtin_ctz(m));
      const layout::Bucket b = index::load(grp[i]);
      if (b == 0 || index::fingerprint_of(b) != p.fingerprint) continue;
      std::uint64_t off;
      if (!index::offset_of(b, v.arena_bytes, off)) continue;
      // Header, key and the value's start: one miss's latency instead of four.
      for (int line = 1; line < 4; ++line) __builtin_prefetch(v.arena + off + 64 * line);
      if (!arena::read_live_header(v, off, f.h) || f.h.hash != hash || f.h.key_len != key.size()) continue;
      // The rest of a small entry, while the key is compared.
      for (std::uint64_t line = 4; line < 8 && 64 * line < f.h.size; ++line) __builtin_prefetch(v.arena + off + 64 * line);
      if (!words::equal(v.arena, arena::key_off(off), key.data(), key.size())) continue;
      f.off = off;
      f.bucket = &grp[i];
      f.seen = b;
      return true;
    }
  }
  return false;
}

// This thread's buffer for a compressed entry's stored bytes (out.own_frame
// once it is gone). Out of line, so that the hot path of an uncompressed hit
// pays no TLS access.
struct FrameTag {};
[[gnu::noinline]] std::string& frame_buffer(Dest& out) {
  if (out.frame == nullptr) out.frame = &detail::thread_scratch<FrameTag>(out.own_frame);
  return *out.frame;
}

// Copies a valid entry's value out: straight into the destination, or, for
// a compressed one, its stored bytes into frame_buffer() (decompressed once
// the read is validated: never decode bytes a writer may be changing).
Lookup judge_and_copy(const arena::StripeView& v, const Found& f, const generations::Judge& judge, Dest& out) {
  switch (judge.of(f.h)) {
    case generations::State::expired:
      return Lookup::expired;
    case generations::State::stale:
      return Lookup::stale;
    case generations::State::valid:
      break;
  }
  // A length over the caller's limit (only a writer of the segment, or a
  // process with larger limits, stores one) is a miss: what a get allocates
  // stays within max_value_bytes, whatever the header claims.
  if (f.h.orig_len > out.max_len) return Lookup::miss;
  char* dst;
  if ((f.h.flags & layout::kFlagCompressed) != 0) {
    std::string& raw = frame_buffer(out);
    raw.resize(f.h.value_len);
    dst = raw.data();
  } else {
    dst = out.reserve(f.h.value_len);
  }
  words::copy_out(v.arena, arena::value_off(f.off, f.h), f.h.value_len, dst);
  return Lookup::hit;
}

// A validated hit on a compressed entry: decompress into the destination.
// A frame that does not decode to exactly orig_len bytes (only a writer of
// the segment can make one) is a miss.
// The frame is taken out of the thread's buffer first: a caller's sink may
// look another compressed entry up, which refills that buffer
// (test_attack_alias, ReentrantSink). It goes back afterwards, to keep its room.
[[gnu::noinline]] Lookup decompress_into(const Found& f, Dest& out) {
  std::string frame = std::move(*out.frame);
  out.frame->clear();
  char* dst = out.reserve(f.h.orig_len);
  const bool ok = compress::decompress(frame, dst, f.h.orig_len);
  *out.frame = std::move(frame);
  if (ok) return Lookup::hit;
  out.discard();
  return Lookup::miss;
}
Lookup finish(const Found& f, Lookup r, Dest& out) {
  if (r != Lookup::hit || (f.h.flags & layout::kFlagCompressed) == 0) return r;
  return decompress_into(f, out);
}

// Private memory for one entry image: on the stack when it is small (no
// thread-local lookup, no allocation), else this thread's buffer (own_ once
// that is gone, at thread exit). 8-aligned.
struct ImageTag {};
class ImageBuffer {
 public:
  std::uint8_t* get(std::uint32_t size) {
    return size <= sizeof small_ ? reinterpret_cast<std::uint8_t*>(small_) : large(size);
  }

 private:
  [[gnu::noinline]] std::uint8_t* large(std::uint32_t size) {
    std::vector<std::uint64_t>& image = detail::thread_scratch<ImageTag>(own_);
    if (image.size() < size / 8) image.resize(size / 8);
    return reinterpret_cast<std::uint8_t*>(image.data());
  }
  std::optional<std::vector<std::uint64_t>> own_;
  std::uint64_t small_[256];  // 2 KiB, left uninitialized: build_image writes every byte
};

// Builds the entry image in `buf`: header, key, value, tags, namespace, zero padding.
const std::uint8_t* build_image(const Write& w, const GenerationStamp& stamp, std::uint32_t size, ImageBuffer& buf) {
  std::uint8_t* bytes = buf.get(size);
  std::memset(bytes + size - 8, 0, 8);  // the padding (the payload overwrites what is not)
  EntryHeader h{};
  h.size = size;
  h.magic = layout::kEntryMagic;
  h.kind = layout::kKindEntry;
  h.live = 1;
  h.key_len = std::uint32_t(w.key.size());
  h.value_len = std::uint32_t(w.value.size());
  h.orig_len = w.compressed ? w.orig_len : h.value_len;
  h.flags = w.compressed ? layout::kFlagCompressed : 0;
  h.hash = w.hash;
  h.expires_ms = w.expires_ms;
  h.global_gen = stamp.global;
  if (!w.ns.empty()) {
    h.flags |= layout::kFlagNamespace;
    h.ns_slot = w.ns_slot;
    h.ns_gen = stamp.ns;
    h.ns_len = std::uint8_t(w.ns.size());
  }
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
  if (!w.ns.empty()) std::memcpy(bytes + p, w.ns.data(), w.ns.size());
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

// What a copy of a critical section refuses with in a child forked inside
// it (from a signal handler or a callback): the section is the parent's.
Error forked_error(const Segment& segment, const char* what) {
  return Error(Errc::busy, "segment '" + segment.name() + "': this process was forked " + what +
                               "; the stripe is its parent's");
}

}  // namespace

void set_recovery_observer(RecoveryObserver observer) noexcept { g_recovery_observer.store(observer); }

Locked::Locked(Segment& segment, std::uint32_t index)
    : segment_(segment),
      view_(arena::StripeView::over(segment.stripe_base(index), segment.geometry())),
      me_(stripe_lock::identity()) {
  // A process that moved to another pid or time namespace after attaching
  // (a child forked into a new one keeps the mapping) must not lock: its
  // thread ids and start times mean something else to the others.
  if (me_.pidns == 0) {
    throw Error(Errc::incompatible, "segment '" + segment.name() +
                                        "': this thread cannot read its pid namespace (/proc/thread-self/ns/pid: " +
                                        std::strerror(me_.no_pidns) +
                                        "); it cannot take stripe locks (mount its pid namespace's /proc)");
  }
  if (!stripe_lock::same_namespaces(me_, segment.geometry().pidns_ino, segment.geometry().timens_ino) ||
      !stripe_lock::still_in_namespaces(me_)) {
    throw Error(Errc::incompatible, "segment '" + segment.name() +
                                        "': this process is in another pid or time namespace than the segment's "
                                        "creator; it cannot take stripe locks");
  }
  const stripe_lock::Acquired a =
      stripe_lock::lock(*view_.hdr, me_, segment.lock_timeout());
  // Forked (from a signal handler) as the lock was taken, or just after:
  // the acquisition, and any repair it calls for, are the parent's.
  if (a.forked || (a.acquired && forked())) throw forked_error(segment, "while its thread took a stripe lock");
  if (a.moved) {
    throw Error(Errc::incompatible, "segment '" + segment.name() +
                                        "': this process moved to another pid or time namespace since its thread "
                                        "first locked; it cannot take stripe locks");
  }
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
    if (!forked()) stripe_lock::unlock(*view_.hdr, me_);  // never leave the lock held by a live thread
    throw;
  }
}

void Locked::recover(std::uint32_t index, bool owner_died, std::uint32_t dead) {
  // A child forked between the lock and here (from a signal handler) may
  // read its parent's write in progress (the sequence odd) as a dead
  // writer's: the stripe is its parent's, and it repairs nothing.
  if (forked()) throw forked_error(segment_, "while its thread held a stripe lock");
  const auto t0 = std::chrono::steady_clock::now();
  // Readers must not see the index half rebuilt: odd for the whole repair,
  // whatever the dead owner left.
  const std::uint64_t seq0 = load(view_.hdr->seq);
  if ((seq0 & 1) == 0) store(view_.hdr->seq, seq0 + 1);
  std::atomic_thread_fence(std::memory_order_release);
  std::string why;
  std::uint64_t kept = 0, dropped = 0;
  bool repaired = false;
  // Forked (from a signal handler) mid-repair, the copy stops right before
  // its next stores: the repair, and its end, are the parent's.
  const auto stop = [this] { return forked(); };
  try {
    try {
      repaired = arena::repair(view_, &why, &kept, &dropped, stop);
    } catch (const arena::RepairStopped&) {
      throw;
    } catch (...) {
      // Out of memory while walking: the stripe's structure is unknown, so it
      // starts afresh (no allocation needed), as for a ring that cannot be walked.
      arena::reset(view_, stop);
      if (stop()) throw arena::RepairStopped{};
      store(view_.hdr->resets, load(view_.hdr->resets) + 1);
      why = "repair failed (out of memory)";
    }
    // The last two stores replace values read before the last check: a
    // child forked after it (a few instructions) finds them already done
    // by its parent, and changes nothing. A store of load() + 1 there would
    // count a second recovery, and turn a later writer's odd sequence even
    // under a reader (test_attack_fork5).
    const std::uint64_t recoveries = load(view_.hdr->recoveries);
    const std::uint64_t odd = load(view_.hdr->seq);
    if (stop()) throw arena::RepairStopped{};
    replace(view_.hdr->recoveries, recoveries, recoveries + 1);
    if ((odd & 1) != 0) replace(view_.hdr->seq, odd, odd + 1, std::memory_order_release);  // even again
  } catch (const arena::RepairStopped&) {
    throw forked_error(segment_, "while its thread repaired a stripe");
  }
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
  if (forked()) return;
  if (writing_) end();
  stripe_lock::unlock(*view_.hdr, me_);
}

void Locked::refuse_if_forked() const {
  if (forked()) throw forked_error(segment_, "while its thread held a stripe lock");
}

void Locked::begin() {
  if (forked()) throw forked_error(segment_, "while its thread held a stripe lock");
  store(view_.hdr->seq, load(view_.hdr->seq) + 1);
  std::atomic_thread_fence(std::memory_order_release);
  writing_ = true;
}

void Locked::end() {
  writing_ = false;
  // The parent's write, which the parent ends. This copy ran in a child
  // forked mid-write (a signal handler that returned into it): what it did
  // was not its to do, and it does not report it done.
  if (forked()) throw forked_error(segment_, "inside a stripe's write");
  store(view_.hdr->seq, load(view_.hdr->seq) + 1, std::memory_order_release);
}

Lookup get(Segment& segment, std::string_view key, std::uint64_t hash, Dest& out, Meta* meta) {
  // A reader moved into another time namespace judges expiry by a shifted
  // clock: 100 s behind, it served entries expired for everyone else
  // (test_attack_lock8, WorkerThatMovedToATimeNamespaceBehind...). A miss.
  // One read of the coarse clocks serves that check and the judge's expiry.
  const clock::Coarse now = clock::coarse();
  if (!stripe_lock::time_namespace_unmoved(segment.geometry().timens_ino, now.gap_ns)) [[unlikely]] {
    return Lookup::miss;
  }
  const std::uint32_t index = of(hash, segment.geometry().stripe_count);
  const arena::StripeView v = arena::StripeView::over(segment.stripe_base(index), segment.geometry());
  const generations::Judge judge(segment, now);
  for (int attempt = 0; attempt < kOptimisticTries; ++attempt) {
    std::uint64_t s1 = load(v.hdr->seq, std::memory_order_acquire);
    for (int spin = 0; (s1 & 1) && spin < kSpinsWhileOdd; ++spin) {
      words::cpu_relax();
      s1 = load(v.hdr->seq, std::memory_order_acquire);
    }
    if (s1 & 1) continue;
    Found f;
    Lookup r = Lookup::miss;
    const bool found = find(v, key, hash, f);
    if (found) r = judge_and_copy(v, f, judge, out);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (load(v.hdr->seq) == s1) {
      if (r == Lookup::hit) index::touch(*f.bucket, f.seen);
      if (meta != nullptr) meta->expires_ms = found ? f.h.expires_ms : 0;
      return finish(f, r, out);
    }
  }
  try {
    Locked locked(segment, index);
    Found f;
    Lookup r = Lookup::miss;
    const bool found = find(v, key, hash, f);
    if (found) r = judge_and_copy(v, f, judge, out);
    // A child forked (from a signal handler, or by the caller's sink) since
    // the lock was taken copied without it: the lock is its parent's, which
    // may have released it to a writer meanwhile, so the copy may be torn
    // (test_attack_fork6). Checked after the copy: a fork after it leaves a
    // copy made under the lock. The child reads again, as itself.
    if (!locked.forked()) {
      if (r == Lookup::hit) index::touch(*f.bucket, f.seen);
      if (meta != nullptr) meta->expires_ms = found ? f.h.expires_ms : 0;
      return finish(f, r, out);
    }
  } catch (const Error& e) {
    // Busy, or no lock to be had in this thread now (io_error: its start
    // time could not be read, or the fork page mapped; incompatible: this
    // process moved to another pid or time namespace since its thread first
    // locked, test_attack_lock3): a miss for a get, which never throws for
    // want of a lock.
    if (e.code() != Errc::busy && e.code() != Errc::io_error && e.code() != Errc::incompatible) throw;
    log::get().warn("get: {}; answered as a miss", e.what());
    return Lookup::miss;
  }
  return get(segment, key, hash, out, meta);
}

namespace {

// Starts the loads of the first `bytes` (rounded up to lines) of every
// entry the key's groups may point at: for reading, or (kWrite) in the
// state a store needs. Unvalidated reads that only choose what to prefetch:
// whatever a writer is doing, a prefetch reads nothing into the program and
// cannot fault. Returns where the first of those entries lies.
template <int kWrite>
Ahead prefetch_candidates(const arena::StripeView& v, std::uint64_t hash, std::uint64_t bytes) {
  const index::Probe p = index::probe(hash, v.groups);
  __builtin_prefetch(index::group(v.buckets, p.g2));  // both groups' misses at once, as find()
  Ahead first;
  for (std::uint32_t g : {p.g1, p.g2}) {
    const layout::Bucket* grp = index::group(v.buckets, g);
    for (unsigned m = index::candidates(grp, p.fingerprint); m != 0; m &= m - 1) {
      std::uint64_t off;
      if (!index::offset_of(index::load(grp[__builtin_ctz(m)]), v.arena_bytes, off)) continue;
      if (first.entry == nullptr) first = Ahead{v.arena + off, v.arena_bytes - off};
      for (std::uint64_t at = 0; at < bytes && off + at < v.arena_bytes; at += 64) {
        __builtin_prefetch(v.arena + off + at, kWrite);
      }
    }
  }
  return first;
}

// The largest entry prefetch_rest() covers: past it the copy's own stream
// does as well, and a scribbled size costs at most this many lines.
constexpr std::uint64_t kPrefetchRestMax = 64 << 10;

}  // namespace

Ahead prefetch_entry(Segment& segment, std::uint64_t hash) {
  const arena::StripeView v =
      arena::StripeView::over(segment.stripe_base(of(hash, segment.geometry().stripe_count)), segment.geometry());
  return prefetch_candidates<0>(v, hash, 512);
}

void prefetch_rest(const Ahead& a) {
  if (a.entry == nullptr) return;
  // The entry's size as its first word says now: unvalidated, it only
  // bounds what is prefetched (the arena's end, kPrefetchRestMax).
  const std::uint64_t size =
      std::min<std::uint64_t>({words::load_word(a.entry) & 0xffffffffu, a.room, kPrefetchRestMax});
  for (std::uint64_t at = 512; at < size; at += 64) __builtin_prefetch(a.entry + at);
}

void prefetch(Segment& segment, std::uint64_t hash) {
  const arena::StripeView v =
      arena::StripeView::over(segment.stripe_base(of(hash, segment.geometry().stripe_count)), segment.geometry());
  const index::Probe p = index::probe(hash, v.groups);
  __builtin_prefetch(index::group(v.buckets, p.g1));
  __builtin_prefetch(index::group(v.buckets, p.g2));
}

namespace {

std::uint64_t tags_bytes(const Write& w) {
  std::uint64_t n = w.ns.size();
  if (w.tags) {
    for (auto t : *w.tags) n += 1 + t.size();
  }
  return n;
}

// Under the lock, seq odd: replaces the key's entry (`old`, if found) by the
// image, in place when it has the old entry's shape, else appended, evicting
// as needed.
void store_locked(const arena::StripeView& v, const Found* old, const std::uint8_t* image, std::uint32_t size,
                  std::uint64_t hash, const generations::Judge& judge) {
  if (old != nullptr && arena::rewrite(v, old->off, old->h, image, judge)) {
    // Rewritten where it lies. The bucket is marked referenced (the key was
    // just written, as an appended entry is new at the head), so the entry's
    // age in the ring does not make it the next eviction.
    index::store(*old->bucket, index::encode(old->off, index::probe(hash, v.groups).fingerprint) | layout::kRefBit);
    HOSTCACHE_CRASH_POINT("set.after_index");
    store(v.hdr->sets, load(v.hdr->sets) + 1);
    return;
  }
  if (old != nullptr) {
    arena::kill(v, old->off, old->h, old->bucket);
    HOSTCACHE_CRASH_POINT("set.after_kill_old");
  }
  const std::uint64_t off = arena::make_room(v, size, judge);
  HOSTCACHE_CRASH_POINT("set.after_make_room");
  arena::append(v, off, image, size, judge);
  // An overwrite takes its old bucket back (one of the key's two groups, so
  // the groups' balance is unchanged) unless making room has reused it.
  layout::Bucket* bucket =
      old != nullptr && index::load(*old->bucket) == 0 ? old->bucket : arena::place(v, hash);
  if (bucket == nullptr) bucket = make_bucket(v, hash, judge);
  index::store(*bucket, index::encode(off, index::probe(hash, v.groups).fingerprint));
  HOSTCACHE_CRASH_POINT("set.after_index");
  store(v.hdr->entries, load(v.hdr->entries) + 1);
  store(v.hdr->sets, load(v.hdr->sets) + 1);
}

// Parses memcached's decimal integer: an optional '-', then 1 to 19 digits.
bool parse_decimal(std::string_view s, std::int64_t& out) {
  const bool neg = !s.empty() && s[0] == '-';
  std::string_view d = neg ? s.substr(1) : s;
  if (d.empty() || d.size() > 19) return false;
  std::uint64_t v = 0;
  for (char c : d) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + std::uint64_t(c - '0');
  }
  const std::uint64_t limit = neg ? std::uint64_t(std::numeric_limits<std::int64_t>::max()) + 1
                                  : std::uint64_t(std::numeric_limits<std::int64_t>::max());
  if (v > limit) return false;
  out = neg ? std::int64_t(0 - v) : std::int64_t(v);
  return true;
}

}  // namespace

SetResult set(Segment& segment, const Write& w, Mode mode) {
  const std::uint32_t index = of(w.hash, segment.geometry().stripe_count);
  const std::uint64_t size64 = arena::entry_size(w.key.size(), w.value.size(), tags_bytes(w));
  // Whatever limits the caller was given, an entry must fit its arena.
  if (size64 > segment.geometry().arena_bytes) return SetResult::too_big;
  const auto size = std::uint32_t(size64);
  // The image is built before the lock, so the critical section only copies.
  // Reading the generations here rather than under the lock is still
  // linearizable: a clear() that lands in between makes this set's entry
  // stale, as if the set had completed just before the clear.
  const GenerationStamp stamp =
      w.stamp != nullptr ? *w.stamp
                         : generations::read(segment, w.tag_slots, w.tags ? unsigned(w.tags->size()) : 0,
                                             !w.ns.empty(), w.ns_slot);
  // The misses a set takes, started together (the caller's value is on its
  // way: Cache's do_set): the key's groups, then (once they are in) the
  // first 512 bytes of the entries they point at, for writing (an overwrite
  // of the same size rewrites those bytes; past 512, the copy's own stream
  // does better: 4 KiB sets measured 0.89-0.97 of those prefetching 4 KiB).
  // The image is built while they arrive, and the lookup under the lock
  // finds them in the cache.
  prefetch_candidates<1>(arena::StripeView::over(segment.stripe_base(index), segment.geometry()), w.hash,
                         std::min<std::uint64_t>(size, 512));
  ImageBuffer buf;
  const std::uint8_t* image = build_image(w, stamp, size, buf);
  Locked locked(segment, index);
  const arena::StripeView& v = locked.view();
  const generations::Judge judge(segment);
  Found old;
  const bool found = find(v, w.key, w.hash, old);
  // add: a valid entry wins; an expired or stale one counts as absent.
  if (mode == Mode::add && found && judge.of(old.h) == generations::State::valid) return SetResult::exists;
  locked.begin();
  HOSTCACHE_CRASH_POINT("set.begin");
  store_locked(v, found ? &old : nullptr, image, size, w.hash, judge);
  if (w.compressed) {
    store(v.hdr->compressed_in, load(v.hdr->compressed_in) + w.orig_len);
    store(v.hdr->compressed_out, load(v.hdr->compressed_out) + w.value.size());
  }
  locked.end();
  return SetResult::stored;
}

Errc incr(Segment& segment, std::string_view key, std::uint64_t hash, std::int64_t delta, std::int64_t& result) {
  Locked locked(segment, of(hash, segment.geometry().stripe_count));
  const arena::StripeView& v = locked.view();
  const generations::Judge judge(segment);
  Found old;
  // Every answer but ok is decided on reads: in a child forked inside the
  // section they were made without the lock (test_attack_fork7), and the
  // child is refused instead. ok is refused by begin().
  auto answer = [&](Errc e) {
    locked.refuse_if_forked();
    return e;
  };
  if (!find(v, key, hash, old) || judge.of(old.h) != generations::State::valid) return answer(Errc::not_found);
  if ((old.h.flags & layout::kFlagCompressed) != 0 || old.h.value_len > 20) return answer(Errc::not_integer);
  char digits[24];
  words::copy_out(v.arena, arena::value_off(old.off, old.h), old.h.value_len, digits);
  std::int64_t now = 0;
  if (!parse_decimal(std::string_view(digits, old.h.value_len), now)) return answer(Errc::not_integer);
  if (__builtin_add_overflow(now, delta, &result)) return answer(Errc::overflow);
  // The new entry keeps everything of the old one but the value: expiry,
  // tags, namespace, and the generations it was stamped with (still
  // current: it is valid).
  std::vector<std::string> tags;
  if (!arena::read_tags(v, old.off, old.h, tags)) return answer(Errc::not_found);  // unreachable for a checked entry
  std::vector<std::string_view> tag_views(tags.begin(), tags.end());
  std::string ns(old.h.ns_len, '\0');
  words::copy_out(v.arena, arena::ns_off(old.off, old.h), old.h.ns_len, ns.data());
  const std::string text = std::to_string(result);
  Write w;
  w.key = key;
  w.hash = hash;
  w.value = text;
  w.tags = &tag_views;
  w.tag_slots = old.h.tag_slot;
  w.expires_ms = old.h.expires_ms;
  w.ns = ns;
  w.ns_slot = old.h.ns_slot;
  GenerationStamp stamp;
  stamp.global = old.h.global_gen;
  stamp.ntags = old.h.ntags;
  for (unsigned i = 0; i < old.h.ntags && i < 4; ++i) stamp.tags[i] = old.h.tag_gen[i];
  stamp.ns = old.h.ns_gen;
  const std::uint64_t size = arena::entry_size(key.size(), text.size(), tags_bytes(w));
  if (size > v.arena_bytes) return answer(Errc::value_too_large);  // a 20-byte value where a longer one fit: unreachable
  ImageBuffer buf;
  const std::uint8_t* image = build_image(w, stamp, std::uint32_t(size), buf);
  locked.begin();
  store_locked(v, &old, image, std::uint32_t(size), hash, judge);
  locked.end();
  return Errc::ok;
}

bool touch(Segment& segment, std::string_view key, std::uint64_t hash, std::int64_t expires_ms) {
  Locked locked(segment, of(hash, segment.geometry().stripe_count));
  const arena::StripeView& v = locked.view();
  const generations::Judge judge(segment);
  Found f;
  if (!find(v, key, hash, f) || judge.of(f.h) != generations::State::valid) {
    locked.refuse_if_forked();  // read without the lock in a forked child (test_attack_fork7)
    return false;
  }
  locked.begin();
  arena::set_expiry(v, f.off, f.h, expires_ms);
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
