// roster.h — the table of worker processes, shared by the master and its
// workers, that GET /stats reports.
//
// The master creates it (anonymous MAP_SHARED memory) before it forks, so every
// worker, respawned ones included, maps the same table. It is not in the
// hostcache segment on purpose: it describes this server's processes, and
// POST /clear must not erase it.
//
// Concurrency: the master writes `pid` and `restarts`; a worker writes its own
// slot's pid (once, at start) and counters. Readers may see a slot mid-update
// (a pid of 0 while a worker is respawned): every field is a lock-free atomic,
// each meaningful on its own.
#pragma once

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <stdexcept>

namespace prefork {

inline constexpr unsigned kMaxWorkers = 256;

struct alignas(64) WorkerSlot {             // one cache line per worker: each writes only its own
  std::atomic<std::int32_t> pid{0};         // 0: no live worker (starting, or being respawned)
  std::atomic<std::uint32_t> in_flight{0};  // requests being handled now (0 or 1: one thread)
  std::atomic<std::uint64_t> served{0};     // requests answered by this slot, across respawns
};

struct Roster {
  std::atomic<std::int32_t> master_pid{0};
  std::atomic<std::uint32_t> workers{0};   // slots in use: 0..workers-1
  std::atomic<std::uint64_t> restarts{0};  // workers respawned after dying
  WorkerSlot slots[kMaxWorkers];

  // Maps a zeroed roster shared with every child forked afterwards. Never
  // unmapped: it lives as long as the processes.
  static Roster* create(unsigned workers) {
    void* p =
        ::mmap(nullptr, sizeof(Roster), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap of the worker roster failed");
    auto* roster = new (p) Roster;
    roster->workers.store(workers);
    return roster;
  }
};

// Atomics in memory shared by processes must not fall back to a lock, which
// would live in one process only.
static_assert(std::atomic<std::int32_t>::is_always_lock_free &&
                  std::atomic<std::uint64_t>::is_always_lock_free,
              "the roster's atomics must be lock-free to work across processes");

}  // namespace prefork
