// stripe.h — reading and writing one stripe: the seqlock protocol.
//
// Writers lock the stripe, make its sequence odd, mutate, make it even,
// unlock. Readers run without the lock: read the sequence (acquire), probe and
// copy with relaxed atomic loads, fence, re-read the sequence; if it was odd
// or changed they retry, and after a few tries fall back to the lock. A reader
// that finds the sequence stuck odd (its writer died) gets the lock, learns of
// the death from the robust mutex, and repairs the stripe (invariant 6).
//
// Thread-safety: all functions are safe concurrently from any thread or
// process; each touches exactly one stripe.
#pragma once

#include <hostcache/cache.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "arena.h"
#include "generations.h"
#include "segment.h"
#include "stripe_lock.h"
#include "string_grow.h"

namespace hostcache::stripe {

// Which stripe a key hash belongs to (its top bits).
inline std::uint32_t of(std::uint64_t hash, std::uint32_t stripe_count) {
  return stripe_count == 1 ? 0 : std::uint32_t(hash >> (64 - __builtin_ctz(stripe_count)));
}

// Holds one stripe's lock for a scope; repairs the stripe first if its
// previous owner died (or the stripe's header is out of bounds, or its
// sequence was left odd). begin()/end() bracket mutations with the sequence.
// Throws Error(busy) when a live owner holds the lock past the segment's
// lock_timeout; the lock is never left held when the constructor throws.
class Locked {
 public:
  Locked(Segment& segment, std::uint32_t index);
  ~Locked();
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

  const arena::StripeView& view() const { return view_; }
  void begin();  // seq odd
  void end();    // seq even
  // Forked (from a signal handler or a callback) while inside: the section
  // is the parent's, and this copy neither writes, ends nor unlocks it; what
  // it read since the fork was read without the lock (a reader checks this
  // after its copy). Checked a few times a section: the epoch's word is
  // loaded inline.
  bool forked() const { return stripe_lock::forked_since(me_); }
  // Throws Error(busy) if forked(): an answer decided on reads made since
  // the fork (not found, not an integer) is no answer of the locked section.
  void refuse_if_forked() const;

 private:
  void recover(std::uint32_t index, bool owner_died, std::uint32_t dead);
  Segment& segment_;
  arena::StripeView view_;
  // A copy, not the thread's Identity itself: a child forked inside the
  // section that locks again (from its signal handler) refreshes that one in
  // place to its own, under a lock_slow still waiting with it.
  const stripe_lock::Identity me_;
  bool writing_ = false;
};

// Test and benchmark hook: called in this process after every repair it
// makes, with the repair's duration and whether the stripe had to be reset.
using RecoveryObserver = void (*)(std::uint64_t micros, bool reset);
void set_recovery_observer(RecoveryObserver observer) noexcept;

enum class Lookup { hit, miss, expired, stale };

// Where a value goes: a string, or a caller's sink (Cache::get_into).
struct Dest {
  Dest(std::string* s, ValueSink k, void* c, std::size_t max) : str(s), sink(k), ctx(c), max_len(max) {}
  Dest(const Dest&) = delete;
  Dest& operator=(const Dest&) = delete;

  std::string* str = nullptr;
  ValueSink sink = nullptr;
  void* ctx = nullptr;
  std::size_t max_len = ~std::size_t{0};  // a longer value (original length) is a miss
  // A compressed entry's stored bytes, copied out before they are decoded:
  // this thread's buffer, or own_frame once that is gone (thread exit).
  std::string* frame = nullptr;
  std::optional<std::string> own_frame;
  // Room for an n-byte value, which the caller then writes whole (or, on
  // failure, calls discard()).
  char* reserve(std::size_t n) {
    if (str != nullptr) {
      if (n <= str->size()) {
        str->resize(n);
        return str->data();
      }
      return detail::grow_for_overwrite(*str, n);  // no zeroing of what the copy overwrites
    }
    return sink(ctx, n);
  }
  // What reserve() gave was not written whole: never leave it to be read.
  void discard() {
    if (str != nullptr) str->clear();
  }
};

// What a lookup learned besides the value.
struct Meta {
  std::int64_t expires_ms = 0;
};

// Looks `key` up, copying its value into `out` on a hit (decompressed if it
// was stored compressed). Lock-free unless the stripe stays busy; a lock held
// past lock_timeout by a live owner is a miss. On a hit the bucket's ref bit
// is set if it was clear.
Lookup get(Segment& segment, std::string_view key, std::uint64_t hash, Dest& out, Meta* meta = nullptr);

// Starts loading the key's two bucket groups (get_many).
void prefetch(Segment& segment, std::uint64_t hash);
// Where the first entry a key's fingerprint names lies, as prefetch_entry
// saw it (unvalidated: an address to prefetch from, never to read as data).
struct Ahead {
  const std::uint8_t* entry = nullptr;  // nullptr: no candidate
  std::uint64_t room = 0;               // bytes from entry to the arena's end
};
// After prefetch(), once the groups have arrived: starts the loads of the
// first 512 bytes of every entry the key's fingerprint may name (get_many).
Ahead prefetch_entry(Segment& segment, std::uint64_t hash);
// After prefetch_entry(), once those bytes have arrived: starts the loads of
// the rest of the first candidate, up to the size its header claims then
// (get_many, one key ahead of the copy, so that a large value's misses
// overlap the copy of the one before).
void prefetch_rest(const Ahead& a);

struct Write {
  std::string_view key;
  std::uint64_t hash = 0;
  std::string_view value;
  const std::vector<std::string_view>* tags = nullptr;
  const std::uint32_t* tag_slots = nullptr;  // ntags entries
  const GenerationStamp* stamp = nullptr;    // nullptr: read the generations under the lock
  std::int64_t expires_ms = 0;
  std::string_view ns;                       // namespace name, empty: none
  std::uint32_t ns_slot = 0;
  bool compressed = false;                   // `value` is a zstd frame of orig_len bytes
  std::uint32_t orig_len = 0;
};

enum class Mode { set, add };
enum class SetResult { stored, exists, too_big };

// Stores an entry, replacing the key's earlier one (Mode::add: only if it
// has no valid one). Inputs already validated. too_big (nothing changed)
// when the entry cannot fit the stripe's arena. Throws Error(busy) as
// Locked does.
SetResult set(Segment& segment, const Write& w, Mode mode = Mode::set);

// Adds delta to the key's decimal value under the lock (Cache::incr).
Errc incr(Segment& segment, std::string_view key, std::uint64_t hash, std::int64_t delta, std::int64_t& result);

// Sets a valid entry's expiry; false on a miss.
bool touch(Segment& segment, std::string_view key, std::uint64_t hash, std::int64_t expires_ms);

// Removes the key's entry; true if there was one.
bool erase(Segment& segment, std::string_view key, std::uint64_t hash);

}  // namespace hostcache::stripe
