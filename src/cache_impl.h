// cache_impl.h — the state behind a hostcache::Cache handle, and the door
// through which the library's own parts (memoize, inspect) reach the segment.
// Not installed; not part of the public API.
#pragma once

#include <hostcache/cache.h>

#include <chrono>
#include <memory>

#include "per_process.h"
#include "segment.h"
#include "stats.h"

namespace hostcache {

struct MemoizeState;  // memoize.cpp

struct Cache::Impl {
  std::unique_ptr<Segment> segment;
  std::chrono::milliseconds default_ttl{0};
  std::size_t max_key_bytes = 0;
  std::size_t max_value_bytes = 0;
  bool enabled = true;
  std::size_t compress_min_bytes = 0;  // 0: never compress what this process writes
  int compress_level = 1;
  StatsRecorder stats;  // this process's StatsSlot
  // memoize.cpp's per-handle state (the keyed hash's secret, the method slots
  // this handle has looked up, behind a process-local mutex), one per
  // process (per_process.h): a child forked while a thread of its parent
  // held that mutex makes its own. Made and freed in memoize.cpp, where it
  // is complete.
  struct MemoizeHolder : PerProcess<MemoizeState> {
    MemoizeHolder();
    ~MemoizeHolder();
  } memoize;

  explicit Impl(std::unique_ptr<Segment> seg);
};

namespace detail {
struct Access {
  static Segment& segment(const Cache& cache) { return *cache.impl_->segment; }
  static Cache::Impl& impl(const Cache& cache) { return *cache.impl_; }
};
}  // namespace detail

}  // namespace hostcache
