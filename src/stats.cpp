#include "stats.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "arena.h"
#include "atomic_words.h"
#include "crash_point.h"
#include "segment.h"
#include "stripe_lock.h"
#include <hostcache/errors.h>

namespace hostcache {
namespace {

bool dead(std::uint32_t pid) { return pid != 0 && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH; }

}  // namespace

// A slot is claimed by CAS on its pid: a free one (0), else one whose process
// is dead. A dead process's counts stay in the slot and the new owner counts
// on from them: its totals are folded into the sum without a separate step
// that a crash could interrupt halfway.
std::uint64_t* StatsRecorder::claim(int which) {
  layout::Header* h = segment_->header();
  std::uint64_t* shared = which == 0 ? &h->folded_hits : &h->folded_misses;
  // identity() gives a child (whose page word is still zero) its own epoch.
  std::uint64_t epoch;
  try {
    const stripe_lock::Identity& me = stripe_lock::identity();
    epoch = me.generation;
    fork_word_.store(me.fork_word, std::memory_order_release);
  } catch (const Error&) {
    return shared;  // no fork page (yet): the shared totals, correct and slower
  }
  std::uint64_t seen = claiming_.load(std::memory_order_relaxed);
  if (seen == epoch || !claiming_.compare_exchange_strong(seen, epoch, std::memory_order_acq_rel)) {
    // Another thread claims for this epoch (or has): its slot once published.
    if (epoch_.load(std::memory_order_acquire) != epoch) return shared;
    return published(which);
  }
  const auto me = std::uint32_t(::getpid());
  layout::StatsSlot* slots = segment_->stats_slots();
  const std::uint32_t n = segment_->geometry().stats_slots;
  std::int64_t got = -1;
  for (int pass = 0; pass < 2 && got < 0; ++pass) {
    for (std::uint32_t i = 0; i < n && got < 0; ++i) {
      std::uint32_t owner = words::load(slots[i].pid);
      if (pass == 0 ? owner != 0 : !dead(owner)) continue;
      HOSTCACHE_CRASH_POINT("stats.before_claim");
      if (std::atomic_ref<std::uint32_t>(slots[i].pid).compare_exchange_strong(owner, me)) got = i;
    }
  }
  HOSTCACHE_CRASH_POINT("stats.after_claim");
  slot_ = got;
  pid_ = me;
  hits_.store(got >= 0 ? &slots[got].hits : &h->folded_hits, std::memory_order_relaxed);
  misses_.store(got >= 0 ? &slots[got].misses : &h->folded_misses, std::memory_order_relaxed);
  epoch_.store(epoch, std::memory_order_release);
  return published(which);
}

StatsRecorder::~StatsRecorder() {
  if (slot_ < 0 || segment_ == nullptr || segment_->read_only()) return;
  if (epoch_.load() != current_epoch()) return;  // a fork child: the slot is its parent's
  std::uint32_t owner = pid_;
  std::atomic_ref<std::uint32_t>(segment_->stats_slots()[slot_].pid).compare_exchange_strong(owner, 0u);
}

Stats StatsRecorder::read(const Segment& segment) {
  Stats s;
  const layout::Header* h = segment.header();
  const Geometry& g = segment.geometry();
  s.hits = words::load(h->folded_hits);
  s.misses = words::load(h->folded_misses);
  const layout::StatsSlot* slots = segment.stats_slots();
  for (std::uint32_t i = 0; i < g.stats_slots; ++i) {
    s.hits += words::load(slots[i].hits);
    s.misses += words::load(slots[i].misses);
  }
  s.gets = s.hits + s.misses;
  for (std::uint32_t i = 0; i < g.stripe_count; ++i) {
    const auto* sh = reinterpret_cast<const layout::StripeHeader*>(segment.stripe_base(i));
    s.sets += words::load(sh->sets);
    s.erases += words::load(sh->erases);
    s.evictions += words::load(sh->evictions);
    s.expired += words::load(sh->expired);
    s.stale += words::load(sh->stale);
    s.recoveries += words::load(sh->recoveries);
    s.resets += words::load(sh->resets);
    s.entries += words::load(sh->entries);
    s.compressed_in += words::load(sh->compressed_in);
    s.compressed_out += words::load(sh->compressed_out);
    const std::uint64_t used = words::load(sh->used), dead_bytes = words::load(sh->dead_bytes);
    s.bytes_used += used > dead_bytes ? used - dead_bytes : 0;
  }
  s.capacity_bytes = g.segment_bytes;
  return s;
}

}  // namespace hostcache
