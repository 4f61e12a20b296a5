// backend_floor.cpp — "floor": the minimal lock-free in-process hash table
// that hostcache's get is judged against (issue 15: hostcache >= 0.7x its
// get throughput). Threads of one process share it, like mutex-map.
//
// It is what a get cannot do with less: hash, probe, copy. No shared memory,
// no TTL, no generations, no eviction, no crash recovery, no stats. What it
// keeps is what any honest concurrent table must do: the full key is
// compared, a reader never returns a torn value, and every length it reads
// is bounds-checked before it is used.
//
// Layout (one run: max key K, max value V, N keys):
//
//   buckets_  [B = pow2 >= 2N] 16 B each, four per cache line
//     +-----------+-----------+--------------------+
//     | seq (u32) | pad (u32) | hash (u64, 0=empty) |
//     +-----------+-----------+--------------------+
//   slots_    [B] stride = round_up(8 + K + V, 64), slot i belongs to bucket i
//     +------------+------------+---------+-----------+
//     | klen (u32) | vlen (u32) | key [K] | value [V] |
//     +------------+------------+---------+-----------+
//
// Probing is linear over the compact bucket array (a probe step is usually in
// the same cache line); only a bucket whose 64-bit hash matches sends the
// reader to its slot. Load factor <= 1/2: a hit probes ~1.5 buckets on average.
// The slot array is an anonymous MAP_NORESERVE mapping: only slots that hold
// a key are ever touched.
//
// Concurrency: the bucket's `seq` is both the seqlock and the spinlock of the
// bucket and its slot. Even: stable. A writer takes it by CAS even -> odd,
// writes, and releases it with a store of odd + 1. A reader loads seq
// (acquire), copies, fences (acquire), re-loads seq and retries if it changed
// or was odd; after kOptimisticTries it takes the bucket's lock itself, so a
// reader cannot starve behind a stream of writers. Readers write nothing
// shared (DESIGN invariant 5's intended read path).
//
// A bucket only goes from empty to holding a key (hash 0 -> h, under its
// lock), never back, except in clear(); so a probe that reaches an empty
// bucket has seen every bucket the key could be in, and two writers of one
// new key cannot both insert it (the second one waits on the first's lock,
// then finds the key). clear() empties bucket by bucket under each lock: a
// get or set concurrent with clear() sees some prefix of it (clear is not
// linearizable here, and the benchmark only calls it before the prefill).
//
// The copy under an odd/even check is a data race by the letter of the C++
// memory model, as in every seqlock (hostcache's included); the torn bytes
// are never used, because the second seq load rejects them.
#include <sys/mman.h>
#include <xxhash.h>

#include <atomic>
#include <bit>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "backends.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HCBENCH_PAUSE() _mm_pause()
#else
#define HCBENCH_PAUSE() ((void)0)
#endif

namespace hcbench {
namespace {

class FloorTable {
 public:
  static constexpr unsigned kOptimisticTries = 8;

  FloorTable(std::uint64_t keys, std::size_t max_key, std::size_t max_value)
      : max_key_(max_key),
        max_value_(max_value),
        nbuckets_(std::bit_ceil(std::max<std::uint64_t>(2 * keys, 1024))),
        mask_(nbuckets_ - 1),
        stride_((kSlotHeader + max_key + max_value + 63) / 64 * 64),
        buckets_(new Bucket[nbuckets_]) {
    map_bytes_ = nbuckets_ * stride_;
    void* p = ::mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("floor: mmap of the slot array failed");
    slots_ = static_cast<char*>(p);
  }
  ~FloorTable() { ::munmap(slots_, map_bytes_); }
  FloorTable(const FloorTable&) = delete;
  FloorTable& operator=(const FloorTable&) = delete;

  bool get(std::string_view key, std::string& value) const {
    if (key.size() > max_key_) return false;
    const std::uint64_t h = hash_of(key);
    for (std::uint64_t i = h & mask_, n = 0; n < nbuckets_; i = (i + 1) & mask_, ++n) {
      const Bucket& b = buckets_[i];
      const std::uint64_t bh = b.hash.load(std::memory_order_acquire);
      if (bh == 0) return false;  // an empty bucket ends the probe: no deletes
      if (bh != h) continue;
      switch (read_slot(b, i, key, value)) {
        case Read::hit:
          return true;
        case Read::other_key:
          continue;  // a 64-bit hash collision: keep probing
      }
    }
    return false;
  }

  // Throws when every bucket holds another key (the run sized the table for
  // its key set, so it cannot happen in hostcache-bench).
  void set(std::string_view key, std::string_view value) {
    if (key.size() > max_key_ || value.size() > max_value_)
      throw std::runtime_error("floor: key or value larger than the run's sizes");
    const std::uint64_t h = hash_of(key);
    for (std::uint64_t i = h & mask_, n = 0; n < nbuckets_; i = (i + 1) & mask_, ++n) {
      Bucket& b = buckets_[i];
      const std::uint64_t bh = b.hash.load(std::memory_order_acquire);
      if (bh != 0 && bh != h) continue;
      const std::uint32_t s = lock(b);
      const std::uint64_t now = b.hash.load(std::memory_order_relaxed);
      char* slot = slot_at(i);
      if (now == 0 || (now == h && slot_key_is(slot, key))) {
        if (now == 0) b.hash.store(h, std::memory_order_relaxed);
        const std::uint32_t kl = std::uint32_t(key.size()), vl = std::uint32_t(value.size());
        std::memcpy(slot, &kl, 4);
        std::memcpy(slot + 4, &vl, 4);
        std::memcpy(slot + kSlotHeader, key.data(), key.size());
        std::memcpy(slot + kSlotHeader + max_key_, value.data(), value.size());
        unlock(b, s);
        return;
      }
      unlock(b, s);  // taken by another key since we looked: keep probing
    }
    throw std::runtime_error("floor: table full");
  }

  void clear() {
    for (std::uint64_t i = 0; i < nbuckets_; ++i) {
      Bucket& b = buckets_[i];
      if (b.hash.load(std::memory_order_relaxed) == 0) continue;
      const std::uint32_t s = lock(b);
      b.hash.store(0, std::memory_order_relaxed);
      unlock(b, s);
    }
  }

 private:
  static constexpr std::size_t kSlotHeader = 8;  // klen, vlen

  struct Bucket {
    std::atomic<std::uint32_t> seq{0};  // even: stable; odd: a writer holds the bucket
    std::uint32_t pad = 0;
    std::atomic<std::uint64_t> hash{0};  // 0: empty; else hash_of(key), never 0
  };
  static_assert(sizeof(Bucket) == 16, "four buckets per cache line");

  enum class Read { hit, other_key };

  static std::uint64_t hash_of(std::string_view key) {
    const std::uint64_t h = XXH3_64bits(key.data(), key.size());
    return h != 0 ? h : 1;
  }

  char* slot_at(std::uint64_t i) const { return slots_ + i * stride_; }

  bool slot_key_is(const char* slot, std::string_view key) const {
    std::uint32_t kl;
    std::memcpy(&kl, slot, 4);
    return kl == key.size() && std::memcmp(slot + kSlotHeader, key.data(), key.size()) == 0;
  }

  // Copies the value of bucket i's slot into `value` if the slot holds `key`.
  // On a hit `value` holds exactly what one set wrote; on other_key it is junk.
  Read read_slot(const Bucket& b, std::uint64_t i, std::string_view key,
                 std::string& value) const {
    const char* slot = slot_at(i);
    for (unsigned t = 0; t < kOptimisticTries; ++t) {
      const std::uint32_t s1 = b.seq.load(std::memory_order_acquire);
      if (s1 & 1) {
        HCBENCH_PAUSE();
        continue;
      }
      const bool same = slot_key_is(slot, key);
      std::uint32_t vl = 0;
      std::memcpy(&vl, slot + 4, 4);
      if (same && vl <= max_value_) {  // never trust a length it has not checked
        value.resize(vl);
        std::memcpy(value.data(), slot + kSlotHeader + max_key_, vl);
      }
      std::atomic_thread_fence(std::memory_order_acquire);
      if (b.seq.load(std::memory_order_relaxed) != s1) continue;  // torn: retry
      if (!same) return Read::other_key;
      if (vl > max_value_) throw std::logic_error("floor: a stable slot has a bad length");
      return Read::hit;
    }
    // Pessimistic fallback: read under the bucket's lock.
    Bucket& mb = const_cast<Bucket&>(b);
    const std::uint32_t s = lock(mb);
    const bool same = slot_key_is(slot, key);
    if (same) {
      std::uint32_t vl;
      std::memcpy(&vl, slot + 4, 4);
      value.assign(slot + kSlotHeader + max_key_, vl);
    }
    unlock(mb, s);
    return same ? Read::hit : Read::other_key;
  }

  // Returns the even value the lock was taken from.
  static std::uint32_t lock(Bucket& b) {
    for (;;) {
      std::uint32_t s = b.seq.load(std::memory_order_relaxed);
      if ((s & 1) == 0 &&
          b.seq.compare_exchange_weak(s, s + 1, std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        // Orders the odd seq before the data stores that follow (seqlock writer).
        std::atomic_thread_fence(std::memory_order_release);
        return s;
      }
      HCBENCH_PAUSE();
    }
  }
  static void unlock(Bucket& b, std::uint32_t s) { b.seq.store(s + 2, std::memory_order_release); }

  const std::size_t max_key_, max_value_;
  const std::uint64_t nbuckets_, mask_;
  const std::size_t stride_;
  std::unique_ptr<Bucket[]> buckets_;
  char* slots_ = nullptr;
  std::size_t map_bytes_ = 0;
};

std::mutex g_floor_mu;
std::shared_ptr<FloorTable> g_floor;  // shared by the setup and worker handles of one run

class FloorBackend final : public Backend {
 public:
  explicit FloorBackend(std::shared_ptr<FloorTable> t) : t_(std::move(t)) {}
  bool get(std::string_view key, std::string& value) override { return t_->get(key, value); }
  void set(std::string_view key, std::string_view value, std::string_view) override {
    t_->set(key, value);
  }
  void clear() override { t_->clear(); }

 private:
  std::shared_ptr<FloorTable> t_;
};

}  // namespace

std::unique_ptr<Backend> make_floor(const BackendOptions& opts, Role) {
  std::lock_guard<std::mutex> lock(g_floor_mu);
  if (!g_floor) {
    if (opts.keys == 0 || opts.max_key_bytes == 0 || opts.max_value_bytes == 0)
      throw std::runtime_error("floor: needs the run's key count and key and value sizes");
    g_floor = std::make_shared<FloorTable>(opts.keys, opts.max_key_bytes, opts.max_value_bytes);
  }
  return std::make_unique<FloorBackend>(g_floor);
}

void destroy_floor(const BackendOptions&) {
  std::lock_guard<std::mutex> lock(g_floor_mu);
  g_floor.reset();
}

}  // namespace hcbench
