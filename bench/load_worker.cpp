// load_worker.cpp — the loop one hostcache-bench worker runs.
//
// Steady state: keys are drawn from the configured distribution, each op is a
// get with probability read_ratio and otherwise a set of a fresh value, and a
// miss is followed by a set (cache-aside, what a memoizing caller does), so
// the hit ratio reflects eviction, TTL and invalidation, not an empty table.
// The first warmup_s seconds are run and discarded.
//
// Every value a get returns is verified (bench_common.h's verify_value); a
// failure counts as corrupt and the parent exits non-zero, so no throughput
// figure ever comes from a run that returned a wrong byte.
#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include "load.h"

namespace hcbench {

void prefill(const LoadSpec& spec, const Workload& wl, Backend& backend) {
  Rng rng(spec.seed ^ 0x5eed);
  constexpr std::size_t kBatch = 64;
  std::vector<std::string> values(kBatch);
  std::vector<Op> batch;
  for (std::uint64_t k = 0; k < wl.keys.count();) {
    batch.clear();
    for (std::size_t j = 0; j < kBatch && k < wl.keys.count(); ++j, ++k) {
      values[j].resize(spec.value_size.pick(rng));
      fill_value(wl.keys[k], 0, values[j]);
      Op op;
      op.kind = Op::Kind::set;
      op.key = wl.keys[k];
      op.value = values[j];
      op.tag = wl.tag_of(k);
      batch.push_back(op);
    }
    backend.run(batch);
  }
}

namespace {

class Worker {
 public:
  Worker(unsigned id, const LoadSpec& spec, const Workload& wl, WorkerResult& r)
      : id_(id),
        spec_(spec),
        wl_(wl),
        r_(r),
        rng_(spec.seed * 0x9e3779b97f4a7c15ull + id + 1),
        chooser_(wl.keys.count(), spec.zipf),
        depth_(spec.backend.backend == "redis-pipelined" ? std::max(spec.backend.pipeline, 2u)
                                                         : 1u),
        values_(depth_),
        outs_(depth_),
        batch_(depth_) {
    for (auto& o : outs_) o.reserve(spec.value_size.max);
  }

  // Requires: this worker already counted itself in shared.ready.
  void run(Backend& backend, SharedBlock& shared) {
    while (shared.go.load() == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));

    const std::uint64_t t0 = now_ns();
    const std::uint64_t hard_end = t0 + std::uint64_t(spec_.max_seconds * 1e9);
    const std::uint64_t warm_end = t0 + std::uint64_t(spec_.warmup_s * 1e9);
    bool measuring = spec_.warmup_s <= 0;
    std::uint64_t start = t0;
    std::uint64_t end = spec_.ops > 0
                            ? hard_end
                            : std::min(hard_end, warm_end + std::uint64_t(spec_.duration_s * 1e9));
    if (measuring) reset(t0, start);
    // Worker 0 alone issues clears and invalidations, at a fixed rate.
    const bool control = id_ == 0;
    const double clear_gap = spec_.clear_per_s > 0 ? 1e9 / spec_.clear_per_s : 0;
    const double inval_gap = spec_.invalidate_per_s > 0 ? 1e9 / spec_.invalidate_per_s : 0;
    double next_clear = double(t0) + clear_gap, next_inval = double(t0) + inval_gap;

    std::uint64_t now = t0;
    for (std::uint64_t n = 0;; ++n) {
      const bool timed = n % spec_.sample_every == 0;
      build_batch();
      const std::uint64_t before = timed ? now_ns() : 0;
      backend.run(batch_);
      if (timed) {
        now = now_ns();
        Histogram& h = depth_ > 1                        ? r_.batch_lat
                       : batch_[0].kind == Op::Kind::get ? r_.get_lat
                                                         : r_.set_lat;
        h.record(now - before);
      }
      check_batch(backend);
      if (!timed && n % 16 == 0) now = now_ns();
      if (!timed && n % 16 != 0) continue;

      if (!measuring && now >= warm_end) {
        measuring = true;
        reset(now, start);
      }
      if (control && clear_gap > 0 && double(now) >= next_clear) {
        control_op(
            backend, [&] { backend.clear(); }, r_.clears);
        next_clear += clear_gap;
      }
      if (control && inval_gap > 0 && double(now) >= next_inval && !wl_.tag_names.empty()) {
        const std::string& tag = wl_.tag_names[rng_.below(wl_.tag_names.size())];
        control_op(
            backend, [&] { backend.invalidate(tag); }, r_.invalidates);
        next_inval += inval_gap;
      }
      if (measuring && spec_.ops > 0 && r_.ops >= spec_.ops) break;
      if (now >= end) {
        r_.ops_target_missed = measuring && spec_.ops > 0 && r_.ops < spec_.ops;
        break;
      }
    }
    r_.elapsed_ns = now_ns() - start;
    r_.finished = 1;
  }

 private:
  void reset(std::uint64_t now, std::uint64_t& start) {
    r_.ops = r_.gets = r_.hits = r_.sets = r_.clears = r_.invalidates = 0;
    r_.get_lat.clear();
    r_.set_lat.clear();
    r_.batch_lat.clear();
    r_.control_lat.clear();
    start = now;
  }

  void build_batch() {
    for (unsigned j = 0; j < depth_; ++j) {
      Op& op = batch_[j];
      const std::uint64_t k = chooser_.next(rng_);
      op.key = wl_.keys[k];
      op.hit = false;
      if (rng_.unit() < spec_.read_ratio) {
        op.kind = Op::Kind::get;
        op.out = &outs_[j];
      } else {
        op.kind = Op::Kind::set;
        make_value(k, values_[j]);
        op.value = values_[j];
        op.tag = wl_.tag_of(k);
      }
    }
  }

  void make_value(std::uint64_t k, std::string& v) {
    v.resize(spec_.value_size.pick(rng_));
    fill_value(wl_.keys[k], ++version_, v);
  }

  void check_batch(Backend& backend) {
    r_.ops += depth_;
    for (Op& op : batch_) {
      if (op.kind == Op::Kind::set) {
        ++r_.sets;
        continue;
      }
      ++r_.gets;
      if (!op.hit) {
        if (spec_.set_on_miss) {
          // Cache-aside refill, not pipelined and not timed: it is the
          // caller's "compute and store" after a miss.
          std::string& v = values_[0];
          const std::uint64_t k = key_index(op.key);
          make_value(k, v);
          backend.set(op.key, v, wl_.tag_of(k));
          ++r_.sets;
        }
        continue;
      }
      ++r_.hits;
      const Verdict verdict = verify_value(op.key, *op.out);
      if (verdict != Verdict::ok) {
        if (r_.corrupt++ < 3) {
          std::fprintf(stderr,
                       "hostcache-bench: worker %u: CORRUPT read of key '%.*s' (%zu bytes): %s\n",
                       id_, int(op.key.size()), op.key.data(), op.out->size(), to_string(verdict));
        }
      }
    }
  }

  // The key's index, recovered from its text (make_key's 16 hex digits).
  static std::uint64_t key_index(std::string_view key) {
    std::uint64_t i = 0;
    for (int d = 0; d < 16; ++d) {
      const char c = key[2 + d];
      i = (i << 4) | std::uint64_t(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return i;
  }

  template <class Fn>
  void control_op(Backend&, Fn&& fn, std::uint64_t& counter) {
    const std::uint64_t before = now_ns();
    fn();
    r_.control_lat.record(now_ns() - before);
    ++counter;
  }

  unsigned id_;
  const LoadSpec& spec_;
  const Workload& wl_;
  WorkerResult& r_;
  Rng rng_;
  KeyChooser chooser_;
  unsigned depth_;
  std::uint32_t version_ = 0;
  std::vector<std::string> values_, outs_;
  std::vector<Op> batch_;
};

}  // namespace

void run_worker(unsigned id, const LoadSpec& spec, const Workload& wl, SharedBlock& shared) {
  WorkerResult& r = shared.workers[id];
  bool counted = false;
  try {
    auto backend = make_backend(spec.backend, Role::worker);
    Worker worker(id, spec, wl, r);
    shared.ready.fetch_add(1);
    counted = true;
    worker.run(*backend, shared);
  } catch (const std::exception& e) {
    std::snprintf(r.error, sizeof(r.error), "%s", e.what());
    r.failed = 1;
    // Never leave the parent waiting at the barrier for a worker that failed.
    if (!counted) shared.ready.fetch_add(1);
  }
}

}  // namespace hcbench
