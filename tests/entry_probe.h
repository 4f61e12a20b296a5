// entry_probe.h — reading a quiet stripe from a test: its view, where a key's
// live entry lies, and a word-wise snapshot of shared bytes (the attack
// suites watch an entry's bytes change store by store).
#pragma once

#include <sys/ptrace.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <hostcache/cache.h>

#include "arena.h"
#include "atomic_words.h"
#include "cache_impl.h"
#include "segment.h"
#include "test_support.h"

namespace hostcache::testing {

inline layout::StripeHeader& header_of(const Cache& cache, std::uint32_t i) {
  return *reinterpret_cast<layout::StripeHeader*>(detail::Access::segment(cache).stripe_base(i));
}

// A stripe's lock word without its waiters bit: 0 when free, else the owner's identity word.
inline std::uint64_t lock_word(layout::StripeHeader& h) {
  return std::atomic_ref<std::uint64_t>(h.lock).load() & ~(std::uint64_t{1} << 31);
}
inline std::uint64_t lock_word(const Cache& cache, std::uint32_t i) { return lock_word(header_of(cache, i)); }

inline arena::StripeView view_of(const Cache& cache, std::uint32_t i) {
  Segment& seg = detail::Access::segment(cache);
  return arena::StripeView::over(seg.stripe_base(i), seg.geometry());
}

// Arena offset of `key`'s live entry in stripe `s` (the stripe is quiet);
// all ones if it has none.
inline std::uint64_t entry_offset(const Cache& cache, std::uint32_t s, const std::string& key) {
  const arena::StripeView v = view_of(cache, s);
  std::uint64_t found = ~std::uint64_t{0};
  arena::walk(
      v, words::load(v.hdr->tail), words::load(v.hdr->head),
      [&](std::uint64_t off, const layout::EntryHeader& h) {
        if (h.kind == layout::kKindEntry && h.live == 1 && h.key_len == key.size() &&
            words::equal(v.arena, arena::key_off(off), key.data(), key.size())) {
          found = off;
        }
      },
      nullptr, nullptr);
  return found;
}

// `bytes` (a multiple of 8) of shared memory at the 8-aligned `p`, word by word.
inline std::vector<std::uint64_t> snapshot(const std::uint8_t* p, std::size_t bytes) {
  std::vector<std::uint64_t> out(bytes / 8);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = words::load_word(p + 8 * i);
  return out;
}

// A capacity at which a one-stripe segment's arena ends exactly at the end of
// its mapping (page-aligned: a read one byte past it faults); 0 if none.
inline std::size_t capacity_ending_at_mapping_end(const std::string& stem) {
  for (std::size_t cap = 1u << 20; cap < (1u << 20) + (256u << 10); cap += 4096) {
    ScopedName probe(stem);
    Cache c = Cache::open(small_config(probe.name, cap, 1));
    Segment& seg = detail::Access::segment(c);
    const arena::StripeView v = view_of(c, seg.geometry().stripe_count - 1);
    const std::uint8_t* seg_end = seg.stripe_base(0) - seg.geometry().stripes_off + seg.geometry().segment_bytes;
    if (v.arena + v.arena_bytes == seg_end) return cap;
  }
  return 0;
}

// Runs `op` in a forked child single-stepped with ptrace, watching the
// `bytes` (a multiple of 8) of shared memory at `watch`, and SIGKILLs the
// child right after the instruction that changes them for the k-th time.
struct Stepped {
  enum Outcome { killed, finished, unfinished, unavailable } outcome = unavailable;
  int status = 0;  // the child's wait status when it finished
};
inline Stepped kill_after_change(const std::uint8_t* watch, std::size_t bytes, int k, long max_steps,
                                 const std::function<int()>& op) {
  Stepped r;
  const pid_t child = ::fork();
  if (child == 0) {
    if (::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr) != 0) ::_exit(3);
    ::raise(SIGSTOP);
    ::_exit(op());
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFSTOPPED(status)) return r;  // unavailable
  std::vector<std::uint64_t> prev = snapshot(watch, bytes);
  int changes = 0;
  for (long steps = 0; steps < max_steps; ++steps) {
    if (::ptrace(PTRACE_SINGLESTEP, child, nullptr, nullptr) != 0) break;
    ::waitpid(child, &status, 0);
    if (!WIFSTOPPED(status)) break;  // it ran to the end and exited
    std::vector<std::uint64_t> now = snapshot(watch, bytes);
    if (now != prev) {
      prev = std::move(now);
      if (++changes == k) {
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
        r.outcome = Stepped::killed;
        return r;
      }
    }
  }
  if (WIFSTOPPED(status)) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
    r.outcome = Stepped::unfinished;
    return r;
  }
  r.outcome = Stepped::finished;
  r.status = status;
  return r;
}

// A compressible value of exactly n bytes whose content depends on `seed`.
inline std::string compressible(std::size_t n, char seed) {
  std::string s;
  s.reserve(n);
  while (s.size() < n) s += std::string(1, seed) + "-compressible-" + std::to_string(s.size() % 7) + ";";
  s.resize(n);
  return s;
}

// Scribbles the zstd magic number of `key`'s frame (stripe 0; the entry must
// be stored compressed): its decode then fails for sure, after the
// destination was reserved. A scribble in the middle could decode to other
// bytes (zstd frames here carry no content checksum).
inline ::testing::AssertionResult forge_frame(const Cache& cache, const std::string& key) {
  const arena::StripeView v = view_of(cache, 0);
  const std::uint64_t off = entry_offset(cache, 0, key);
  if (off == ~std::uint64_t{0}) return ::testing::AssertionFailure() << key << " not found";
  layout::EntryHeader h;
  if (!arena::read_live_header(v, off, h)) return ::testing::AssertionFailure() << key << ": no live header";
  if ((h.flags & layout::kFlagCompressed) == 0) return ::testing::AssertionFailure() << key << " is not compressed";
  const std::uint64_t voff = arena::value_off(off, h);
  for (std::uint64_t i = 0; i < 4; ++i) v.arena[voff + i] ^= 0x77;
  return ::testing::AssertionSuccess();
}

}  // namespace hostcache::testing
