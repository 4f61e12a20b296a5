// load.h — one hostcache-bench run: its parameters, the workload every worker
// draws from, and the results block forked workers write.
//
// The results block lives in a MAP_SHARED anonymous mapping made before
// fork(): each worker writes only its own WorkerResult, the parent reads them
// after the workers have exited (waitpid orders the accesses), and the start
// barrier is two atomics in the same block.
//
// Thread-safety: a LoadSpec and a Workload are read-only once built; a
// WorkerResult has one writer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends.h"
#include "bench_common.h"

namespace hcbench {

struct LoadSpec {
  BackendOptions backend;
  unsigned processes = 1;
  std::uint64_t keys = 100000;
  std::size_t key_size = 48;      // the largest key
  std::size_t key_size_min = 48;  // < key_size: key i has min + i % (max - min + 1) bytes
  SizeSpec value_size;
  double read_ratio = 0.95;
  double zipf = 0;              // 0: uniform; else the Zipf exponent
  unsigned tags = 0;            // 0: no tags; else key k carries tag "tag-(k % tags)"
  double warmup_s = 0.5;        // not measured
  double duration_s = 3;        // measured (ignored when ops > 0)
  std::uint64_t ops = 0;        // > 0: measured ops per worker instead of a duration
  double max_seconds = 120;     // hard bound on a worker's whole run
  double clear_per_s = 0;       // clear() calls per second, issued by worker 0
  double invalidate_per_s = 0;  // invalidate(random tag) per second, by worker 0
  bool set_on_miss = true;      // cache-aside: a miss is followed by a set
  unsigned sample_every = 32;   // time one batch in this many
  std::uint64_t seed = 1;
};

// Keys and tags, built once in the parent before fork (children share the pages).
struct Workload {
  KeySet keys;
  std::vector<std::string> tag_names;
  Workload(const LoadSpec& spec) : keys(spec.keys, spec.key_size_min, spec.key_size, 'k') {
    for (unsigned t = 0; t < spec.tags; ++t) tag_names.push_back("tag-" + std::to_string(t));
  }
  std::string_view tag_of(std::uint64_t key) const {
    return tag_names.empty() ? std::string_view()
                             : std::string_view(tag_names[key % tag_names.size()]);
  }
};

struct WorkerResult {
  std::uint64_t ops, gets, hits, sets, clears, invalidates, corrupt;
  std::uint64_t elapsed_ns;  // the measured window
  std::uint32_t finished, failed;
  std::uint32_t ops_target_missed;                     // ops mode: max_seconds ran out first
  Histogram get_lat, set_lat, batch_lat, control_lat;  // control: clear/invalidate
  char error[256];
};

struct SharedBlock {
  std::atomic<std::uint32_t> ready;  // workers that finished their setup
  std::atomic<std::uint32_t> go;     // set by the parent once all are ready
  std::uint32_t count;
  WorkerResult workers[1];  // `count` of them (allocated to size)

  static std::size_t bytes_for(unsigned workers) {
    return sizeof(SharedBlock) + (workers - 1) * sizeof(WorkerResult);
  }
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "the barrier crosses fork()");

// Prefills every key through a setup backend (in the caller's process).
void prefill(const LoadSpec& spec, const Workload& wl, Backend& backend);

// Runs worker `id` to completion, writing its WorkerResult; never throws.
void run_worker(unsigned id, const LoadSpec& spec, const Workload& wl, SharedBlock& shared);

}  // namespace hcbench
