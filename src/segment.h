// segment.h — creating, validating and mapping the named segment.
//
// The segment is a POSIX shared-memory object /dev/shm/hostcache.NAME, mapped
// with Boost.Interprocess. Creation never exposes a half-initialized header:
// the creator builds the segment under a private temporary name and publishes
// it with link(2), which fails if the name exists, so exactly one of several
// racing creators wins and every attacher sees a complete header.
//
// Attach validates before use (invariant 8): a regular file (not a symlink,
// FIFO or directory), owned by this uid with no more permission bits than
// requested (unless allow_foreign), large enough for a header, magic, layout
// version and format stamp, and a geometry whose every region lies inside the
// mapped size (computed with overflow checks).
//
// Only this file and layout.h know the header's byte offsets; the other parts
// get typed pointers from accessors.
#pragma once

#include <hostcache/config.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "layout.h"

namespace hostcache {

// Geometry derived from a Config (creation) or read from a header (attach).
struct Geometry {
  std::uint32_t stripe_count = 0;
  std::uint32_t tag_slots = 0;
  std::uint32_t stats_slots = 0;
  std::uint32_t flight_slots = 0;
  std::uint32_t method_slots = 0;
  std::uint32_t groups_per_stripe = 0;
  std::uint64_t stripe_bytes = 0;
  std::uint64_t arena_bytes = 0;
  std::uint32_t outbox_slots = 0;
  std::uint64_t tags_off = 0, stats_off = 0, flights_off = 0, methods_off = 0, outbox_off = 0, stripes_off = 0;
  std::uint64_t segment_bytes = 0;
  // Limits and secrets, verified at attach and never read from the live
  // header again (a writer of the segment may change it at any time).
  std::uint64_t max_key_bytes = 0;
  std::uint64_t max_value_bytes = 0;
  std::int64_t default_ttl_ms = 0;
  std::uint64_t key_secret[2] = {0, 0};
  std::uint64_t host_id[2] = {0, 0};
  std::uint64_t pidns_ino = 0, timens_ino = 0;  // the creator's namespaces (0: unknown)
};

// The inode of this process's pid namespace (/proc/self/ns/pid), 0 if unknown.
std::uint64_t own_pidns();
// The same for its time namespace (/proc/self/ns/time).
std::uint64_t own_timens();

// The largest entry (header + key + value + tags) a Config can write.
std::uint64_t max_entry_bytes(std::uint64_t max_key, std::uint64_t max_value);

class Segment {
 public:
  enum class Access { read_write, read_only };

  // Throws Error(invalid_name) unless `name` is [A-Za-z0-9._-]{1,200}.
  static void validate_name(std::string_view name);
  // "/dev/shm/hostcache.NAME".
  static std::string path_of(std::string_view name);
  // "hostcache.NAME", the shm_open name without its slash.
  static std::string object_of(std::string_view name);

  // Creates the segment, or attaches to the existing one. `created` tells which.
  static std::unique_ptr<Segment> open(const Config& config, bool& created);
  // Attaches to an existing segment. read_only maps PROT_READ (tools).
  static std::unique_ptr<Segment> attach(std::string_view name, bool allow_foreign, Access access);
  // Creates a sealed, unnamed segment (Config::sealed): a memfd sealed
  // against shrinking and growing, inherited by forked children, reachable by
  // others only through this process (attach_pid).
  static std::unique_ptr<Segment> create_sealed(const Config& config);
  // Attaches to the sealed segment `name` that process `pid` holds open
  // (tools; a worker started by exec). Refuses one that is not sealed.
  static std::unique_ptr<Segment> attach_pid(std::uint32_t pid, std::string_view name, bool allow_foreign,
                                             Access access);
  // Unlinks the name; false if it did not exist.
  static bool remove(std::string_view name);

  // Computes the geometry for `config`; throws Error(capacity_too_small,
  // invalid_config) when it cannot hold one stripe with one maximal entry.
  static Geometry plan(const Config& config);

  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  const std::string& name() const { return name_; }
  std::uint8_t* base() const { return base_; }
  std::size_t size() const { return size_; }
  bool read_only() const { return read_only_; }
  // Sealed against shrinking and growing (a memfd segment): no SIGBUS possible.
  bool sealed() const { return sealed_; }
  const Geometry& geometry() const { return geo_; }

  layout::Header* header() const { return reinterpret_cast<layout::Header*>(base_); }
  std::uint64_t* tag_gens() const { return reinterpret_cast<std::uint64_t*>(base_ + geo_.tags_off); }
  layout::StatsSlot* stats_slots() const {
    return reinterpret_cast<layout::StatsSlot*>(base_ + geo_.stats_off);
  }
  layout::FlightSlot* flight_slots() const {
    return reinterpret_cast<layout::FlightSlot*>(base_ + geo_.flights_off);
  }
  layout::MethodSlot* method_slots() const {
    return reinterpret_cast<layout::MethodSlot*>(base_ + geo_.methods_off);
  }
  layout::OutboxHeader* outbox() const { return reinterpret_cast<layout::OutboxHeader*>(base_ + geo_.outbox_off); }
  layout::RelayState* relay_state() const {
    return reinterpret_cast<layout::RelayState*>(base_ + geo_.outbox_off + sizeof(layout::OutboxHeader));
  }
  layout::OutboxSlot* outbox_slots() const {
    return reinterpret_cast<layout::OutboxSlot*>(base_ + geo_.outbox_off + sizeof(layout::OutboxHeader) +
                                                 sizeof(layout::RelayState));
  }
  std::uint8_t* stripe_base(std::uint32_t i) const {
    return base_ + geo_.stripes_off + std::uint64_t(i) * geo_.stripe_bytes;
  }
  std::uint32_t owner_uid() const { return owner_uid_; }
  // How long this process waits for a stripe lock held by a live process
  // before giving up with Errc::busy (Config::lock_timeout). Process-local.
  std::chrono::milliseconds lock_timeout() const { return lock_timeout_; }
  void set_lock_timeout(std::chrono::milliseconds t) { lock_timeout_ = t; }
  std::uint32_t mode() const { return mode_; }

 private:
  Segment() = default;
  static std::unique_ptr<Segment> attach_fd(int fd, const std::string& path, std::string_view name, bool allow_foreign,
                                            Access access, bool must_be_sealed);
  struct Mapping;
  std::unique_ptr<Mapping> mapping_;
  std::string name_;
  std::uint8_t* base_ = nullptr;
  std::size_t size_ = 0;
  bool read_only_ = false;
  bool sealed_ = false;
  Geometry geo_;
  std::uint32_t owner_uid_ = 0;
  std::uint32_t mode_ = 0;
  std::chrono::milliseconds lock_timeout_{2000};
};

}  // namespace hostcache
