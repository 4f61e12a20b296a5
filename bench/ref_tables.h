// ref_tables.h — in-process reference tables for the ratios hostcache is
// judged by: what one process would get from a plain hash table, with no
// shared memory, no TTL, no generations and no cross-process safety.
//
//  - MutexMap: std::unordered_map under one std::mutex, the usual
//    "process-local memo dict" baseline.
//  - ShardedMap: 64 such maps, each under its own mutex on its own cache
//    line, chosen by the key's hash: the obvious way to make the baseline
//    scale with threads.
//
// Both use heterogeneous lookup so that a 48-byte string_view key is not
// copied into a std::string (which would allocate) on every get; a get copies
// the value into the caller's buffer, as hostcache's get does.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace hcbench {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// One map and its lock. Entries carry an optional deadline so that the TTL
// workload costs the reference what it costs hostcache (a clock read per get).
class LockedMap {
 public:
  bool get(std::string_view key, std::string& value, std::int64_t now_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = map_.find(key);
    if (it == map_.end()) return false;
    if (it->second.expires_ms != 0 && it->second.expires_ms <= now_ms) return false;
    value.assign(it->second.value);
    return true;
  }
  void set(std::string_view key, std::string_view value, std::int64_t expires_ms) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) it = map_.emplace(std::string(key), Slot{}).first;
    it->second.value.assign(value);  // same size: reuses the buffer, no allocation
    it->second.expires_ms = expires_ms;
  }
  bool erase(std::string_view key) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = map_.find(key);
    if (it == map_.end()) return false;
    map_.erase(it);
    return true;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();  // O(n): the contrast with hostcache's O(1) clear
  }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return map_.size();
  }

 private:
  struct Slot {
    std::string value;
    std::int64_t expires_ms = 0;
  };
  std::mutex mu_;
  std::unordered_map<std::string, Slot, StringHash, std::equal_to<>> map_;
};

inline std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class MutexMap {
 public:
  static constexpr const char* kName = "unordered_map+mutex";
  bool get(std::string_view key, std::string& value) { return map_.get(key, value, now()); }
  void set(std::string_view key, std::string_view value, std::int64_t ttl_ms = 0) {
    map_.set(key, value, ttl_ms > 0 ? steady_ms() + ttl_ms : 0);
  }
  bool erase(std::string_view key) { return map_.erase(key); }
  void clear() { map_.clear(); }
  std::size_t size() { return map_.size(); }
  // Reads the clock only when some entry may expire (the TTL workload).
  void use_ttl(bool on) { ttl_on_ = on; }

 private:
  std::int64_t now() const { return ttl_on_ ? steady_ms() : 0; }
  LockedMap map_;
  bool ttl_on_ = false;
};

class ShardedMap {
 public:
  static constexpr const char* kName = "sharded unordered_map (64 mutexes)";
  static constexpr unsigned kShards = 64;
  bool get(std::string_view key, std::string& value) { return shard(key).map.get(key, value, 0); }
  void set(std::string_view key, std::string_view value, std::int64_t = 0) {
    shard(key).map.set(key, value, 0);
  }
  bool erase(std::string_view key) { return shard(key).map.erase(key); }
  void clear() {
    for (auto& s : shards_) s.map.clear();
  }
  std::size_t size() {
    std::size_t n = 0;
    for (auto& s : shards_) n += s.map.size();
    return n;
  }

 private:
  struct alignas(64) Shard {
    LockedMap map;
  };
  Shard& shard(std::string_view key) {
    // High bits pick the shard; the map itself uses the low ones.
    return shards_[(StringHash{}(key) >> 58) & (kShards - 1)];
  }
  std::array<Shard, kShards> shards_;
};

}  // namespace hcbench
