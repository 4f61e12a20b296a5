#include "segment.h"

#include <hostcache/errors.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <random>
#include <thread>

#include "atomic_words.h"
#include "clock.h"
#include "log.h"
#include "stripe_lock.h"
#include "stdio_fill.h"

namespace bip = boost::interprocess;

namespace hostcache {
namespace {

using layout::align_up;
using layout::Header;
using layout::kCacheLine;

// Tuning, with reasons.
constexpr std::uint32_t kTagSlots = 4096;    // 32 KiB; two tags collide with p = 1/4096 (safe)
constexpr std::uint32_t kStatsSlots = 256;   // processes counted apart; more share the totals
constexpr std::uint32_t kFlightSlots = 1024; // concurrent memoized computations per host
constexpr std::uint32_t kMethodSlots = 64;   // memoized methods with their own statistics
constexpr std::uint32_t kOutboxSlots = 128;  // invalidations the relay may lag behind before one global clear
constexpr std::uint32_t kMaxStripes = 1024;
constexpr std::uint64_t kMinStripeBytes = 256 << 10;  // smaller stripes evict too coarsely
// One 64-byte group of 8 buckets per 640 bytes of arena (a bucket per 80
// bytes): the index is ~9% of a stripe and holds every entry of an arena
// filled with the smallest entries (128 bytes: a 1-byte key, no value) at 62%
// load, where two-choice groups of 8 with a cuckoo step never overflow. The
// group count is not rounded to a power of two (index.h folds hashes onto it).
constexpr std::uint64_t kArenaPerGroup = 640;
constexpr const char* kObjectPrefix = "hostcache.";
constexpr const char* kTempPrefix = "hostcache~tmp~";  // '~' is never in a name

[[noreturn]] void fail(Errc code, std::string_view name, const std::string& why) {
  throw Error(code, "segment '" + std::string(name) + "': " + why);
}

bool is_pow2(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Offsets of the fixed regions, from the counts alone.
void place_regions(Geometry& g) {
  g.tags_off = align_up(sizeof(Header), kCacheLine);
  g.stats_off = align_up(g.tags_off + std::uint64_t(g.tag_slots) * 8, kCacheLine);
  g.flights_off = g.stats_off + std::uint64_t(g.stats_slots) * sizeof(layout::StatsSlot);
  g.methods_off = g.flights_off + std::uint64_t(g.flight_slots) * sizeof(layout::FlightSlot);
  g.outbox_off = align_up(g.methods_off + std::uint64_t(g.method_slots) * sizeof(layout::MethodSlot), kCacheLine);
  g.stripes_off = align_up(g.outbox_off + sizeof(layout::OutboxHeader) + sizeof(layout::RelayState) +
                               std::uint64_t(g.outbox_slots) * sizeof(layout::OutboxSlot),
                           kCacheLine);
}

// Splits stripe_bytes into header, buckets and arena.
void split_stripe(Geometry& g) {
  std::uint64_t room = g.stripe_bytes - sizeof(layout::StripeHeader);
  g.groups_per_stripe = std::uint32_t(std::max<std::uint64_t>(1, room / (kArenaPerGroup + 64)));
  g.arena_bytes = (room - std::uint64_t(g.groups_per_stripe) * 64) & ~std::uint64_t{7};
}

}  // namespace

std::uint64_t own_pidns() { return stripe_lock::own_ns_inode("pid"); }

std::uint64_t own_timens() { return stripe_lock::own_ns_inode("time"); }

namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// No segment is ever a standard stream. A process started with fd 0, 1 or
// 2 closed (a daemon that closed its stdio) got the segment's descriptor
// there, the lowest free one: every message written to stderr, the
// library's own warnings included, went into the segment at offset 0, over
// the header every process maps (test_attack_fork11, WarningsDoNotLand...).
// Each hole among 0-2 is filled before a segment is opened (stdio_fill.h:
// open(2) returns the lowest free descriptor, so no other thread's file is
// moved). Where no hole can be filled (no /dev/null, no memfd_create, no
// epoll: a sandbox), the open is refused: opened into the hole, for the
// moment before above_stdio moved it, another thread's warning went into
// the segment (test_attack_fork14, NoFiller...). A kept descriptor is moved
// above 2 as well (a hole made by another thread's close meanwhile).
void reserve_stdio(std::string_view name) {
  if (!stdio_fill::fill_holes()) {
    fail(Errc::io_error, name,
         "a standard stream (fd 0-2) is closed and nothing could be opened to fill it (/dev/null, memfd_create "
         "and epoll_create1 all failed): a segment opened there would take what is written to that stream");
  }
}

int above_stdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  const int up = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  const int e = errno;
  ::close(fd);
  errno = e;
  return up;
}

}  // namespace

std::uint64_t max_entry_bytes(std::uint64_t max_key, std::uint64_t max_value) {
  std::uint64_t tags = kMaxTags * (1 + kMaxTagBytes) + kMaxNamespaceBytes;
  return align_up(layout::kHeaderBytes + max_key + max_value + tags, 8);
}

void Segment::validate_name(std::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxNameBytes && name != "." && name != "..";
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-');
  }
  if (!ok) {
    fail(Errc::invalid_name, name.substr(0, 64),
         "invalid name: use 1 to 200 characters from [A-Za-z0-9._-]");
  }
}

std::string Segment::object_of(std::string_view name) { return kObjectPrefix + std::string(name); }
std::string Segment::path_of(std::string_view name) { return "/dev/shm/" + object_of(name); }

Geometry Segment::plan(const Config& c) {
  if (c.mode > 0777 || (c.mode & 0600) != 0600) {
    fail(Errc::invalid_config, c.name, "mode must be within 0777 and give the owner rw (0600 at least)");
  }
  if (c.max_key_bytes == 0 || c.max_key_bytes > (1u << 20)) {
    fail(Errc::invalid_config, c.name, "max_key_bytes must be 1..1 MiB");
  }
  if (c.max_value_bytes > (1ull << 30)) fail(Errc::invalid_config, c.name, "max_value_bytes must be <= 1 GiB");
  if (c.default_ttl.count() <= 0) fail(Errc::invalid_config, c.name, "default_ttl must be positive");
  if (c.stripes != 0 && (!is_pow2(c.stripes) || c.stripes > kMaxStripes)) {
    fail(Errc::invalid_config, c.name, "stripes must be 0 (automatic) or a power of two up to 1024");
  }
  if (c.capacity_bytes > (1ull << 40)) fail(Errc::invalid_config, c.name, "capacity_bytes must be <= 1 TiB");
  if (c.lock_timeout.count() <= 0) fail(Errc::invalid_config, c.name, "lock_timeout must be positive");

  Geometry g;
  g.tag_slots = kTagSlots;
  g.stats_slots = kStatsSlots;
  g.flight_slots = kFlightSlots;
  g.method_slots = kMethodSlots;
  g.outbox_slots = kOutboxSlots;
  place_regions(g);
  g.segment_bytes = c.capacity_bytes;
  const std::uint64_t biggest = max_entry_bytes(c.max_key_bytes, c.max_value_bytes);
  const std::uint64_t fixed = g.stripes_off;
  const std::uint64_t usable = c.capacity_bytes > fixed ? c.capacity_bytes - fixed : 0;
  std::uint64_t n = c.stripes;
  if (n == 0) {
    // As many stripes as keep each one big enough for two of the largest
    // entries and for sensible eviction; more stripes, less lock contention.
    std::uint64_t floor_bytes = std::max<std::uint64_t>(kMinStripeBytes, 2 * biggest + 4096);
    n = 1;
    while (n * 2 <= kMaxStripes && usable / (n * 2) >= floor_bytes) n *= 2;
  }
  g.stripe_count = std::uint32_t(n);
  g.stripe_bytes = (usable / n) & ~std::uint64_t{kCacheLine - 1};
  if (g.stripe_bytes < sizeof(layout::StripeHeader) + 64 + 64) {
    fail(Errc::capacity_too_small, c.name,
         "capacity " + std::to_string(c.capacity_bytes) + " bytes cannot hold " + std::to_string(n) +
             " stripe(s) after " + std::to_string(fixed) + " bytes of header");
  }
  split_stripe(g);
  g.max_key_bytes = c.max_key_bytes;
  g.max_value_bytes = c.max_value_bytes;
  g.default_ttl_ms = c.default_ttl.count();
  if (g.arena_bytes < biggest + 8) {
    fail(Errc::capacity_too_small, c.name,
         "capacity " + std::to_string(c.capacity_bytes) + " bytes gives each of " + std::to_string(n) +
             " stripe(s) an arena of " + std::to_string(g.arena_bytes) +
             " bytes, less than the largest entry (" + std::to_string(biggest) +
             " bytes for max_key_bytes + max_value_bytes + tags): raise capacity_bytes or lower "
             "max_value_bytes or stripes");
  }
  return g;
}

struct Segment::Mapping {
  bip::mapped_region boost_region;  // creator's mapping
  void* raw = nullptr;              // attacher's (or a sealed creator's) mapping
  std::size_t raw_size = 0;
  int keep_fd = -1;                 // a sealed segment's memfd
  ~Mapping() {
    if (raw != nullptr) ::munmap(raw, raw_size);
    if (keep_fd >= 0) ::close(keep_fd);
  }
};

Segment::~Segment() = default;

namespace {

// Removes temporary objects left by creators that died before publishing.
// A temporary is named hostcache~tmp~NAME~PIDNS~PID~RANDOM: only one made in
// our own pid namespace can be judged by its pid.
void sweep_dead_temporaries(std::string_view name) {
  std::string prefix = std::string(kTempPrefix) + std::string(name) + "~" + std::to_string(own_pidns()) + "~";
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) return;
  while (dirent* e = ::readdir(dir)) {
    std::string_view f = e->d_name;
    if (f.substr(0, prefix.size()) != prefix) continue;
    long pid = std::strtol(std::string(f.substr(prefix.size())).c_str(), nullptr, 10);
    if (pid > 0 && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH) {
      ::unlink(("/dev/shm/" + std::string(f)).c_str());
    }
  }
  ::closedir(dir);
}

// This process's pid namespace, which a creator records and a read-write
// opener must share: stripe locks and flights name their owners by thread
// id and pid. A process that cannot read it (no /proc, or another pid
// namespace's /proc, which does not show it) is refused here, before it
// creates a segment that records "unknown" (which once let any namespace
// in: test_attack_lock6, SegmentCreatedWithoutProc...) or takes a lock.
std::uint64_t required_pidns(std::string_view name) {
  const std::uint64_t ns = own_pidns();
  if (ns == 0) {
    const int e = errno;
    fail(Errc::io_error, name,
         std::string("cannot read this thread's pid namespace (/proc/thread-self/ns/pid: ") + std::strerror(e) +
             "): stripe locks name their holders by thread id, which means something only in a known pid "
             "namespace; mount this pid namespace's /proc, or open the segment read-only");
  }
  return ns;
}

// The creator's random secret: 128 bits from the OS, never all zero.
void fill_secret(Geometry& g, std::string_view name) {
  std::random_device rd;
  do {
    g.key_secret[0] = (std::uint64_t(rd()) << 32) | rd();
    g.key_secret[1] = (std::uint64_t(rd()) << 32) | rd();
  } while (g.key_secret[0] == 0 && g.key_secret[1] == 0);
  g.host_id[0] = (std::uint64_t(rd()) << 32) | rd();
  g.host_id[1] = (std::uint64_t(rd()) << 32) | rd();
  g.pidns_ino = required_pidns(name);
  g.timens_ino = own_timens();
}

void init_header(Header* h, const Config& c, const Geometry& g) {
  std::memcpy(h->magic, "INITING!", 8);
  h->format_stamp = layout::kFormatStamp;
  h->layout_version = layout::kLayoutVersion;
  h->segment_bytes = g.segment_bytes;
  h->stripe_count = g.stripe_count;
  h->tag_slots = g.tag_slots;
  h->stats_slots = g.stats_slots;
  h->flight_slots = g.flight_slots;
  h->method_slots = g.method_slots;
  h->groups_per_stripe = g.groups_per_stripe;
  h->stripe_bytes = g.stripe_bytes;
  h->arena_bytes = g.arena_bytes;
  h->max_key_bytes = c.max_key_bytes;
  h->max_value_bytes = c.max_value_bytes;
  h->default_ttl_ms = c.default_ttl.count();
  h->created_unix_ms = clock::unix_ms();
  h->creator_uid = ::geteuid();
  h->creator_pid = std::uint32_t(::getpid());
  h->tags_off = g.tags_off;
  h->stats_off = g.stats_off;
  h->flights_off = g.flights_off;
  h->methods_off = g.methods_off;
  h->stripes_off = g.stripes_off;
  h->outbox_off = g.outbox_off;
  h->host_id[0] = g.host_id[0];
  h->host_id[1] = g.host_id[1];
  h->key_secret[0] = g.key_secret[0];
  h->key_secret[1] = g.key_secret[1];
  h->pidns_ino = g.pidns_ino;
  h->timens_ino = g.timens_ino;
  h->global_gen = 1;
}

// Reads the geometry a header claims and checks that it is the one this build
// would lay out, entirely inside `file_bytes`. Throws Error on any mismatch.
Geometry verified_geometry(const Header* live, std::uint64_t file_bytes, std::string_view name) {
  // Checked on a private copy: a writer changing the header meanwhile cannot
  // make a field pass its check and then be read again with another value.
  Header copy;
  {
    const auto* src = reinterpret_cast<const std::uint8_t*>(live);
    auto* dst = reinterpret_cast<std::uint8_t*>(&copy);
    for (std::size_t i = 0; i < sizeof(Header); i += 8) {
      const std::uint64_t w = words::load_word(src + i);
      std::memcpy(dst + i, &w, 8);
    }
  }
  const Header* h = &copy;
  if (std::memcmp(h->magic, layout::kMagic, 8) != 0) {
    if (std::memcmp(h->magic, "INITING!", 8) == 0) fail(Errc::corrupt, name, "header still initializing");
    fail(Errc::corrupt, name, "bad magic: not a hostcache segment");
  }
  if (h->layout_version != layout::kLayoutVersion) {
    fail(Errc::incompatible, name,
         "layout version " + std::to_string(h->layout_version) + ", this library reads " +
             std::to_string(layout::kLayoutVersion));
  }
  if (h->format_stamp != layout::kFormatStamp) {
    fail(Errc::incompatible, name, "format stamp differs: written by a build with other struct sizes");
  }
  if (h->state != layout::kStateReady) fail(Errc::corrupt, name, "header not marked ready");
  Geometry g;
  g.stripe_count = h->stripe_count;
  g.tag_slots = h->tag_slots;
  g.stats_slots = h->stats_slots;
  g.flight_slots = h->flight_slots;
  g.method_slots = h->method_slots;
  g.outbox_slots = kOutboxSlots;
  g.stripe_bytes = h->stripe_bytes;
  g.segment_bytes = h->segment_bytes;
  auto bad = [&](const char* what) { fail(Errc::corrupt, name, std::string("bad geometry: ") + what); };
  if (g.segment_bytes != file_bytes) {
    fail(Errc::corrupt, name,
         "header says " + std::to_string(g.segment_bytes) + " bytes but the object has " +
             std::to_string(file_bytes) + " (truncated or resized)");
  }
  if (!is_pow2(g.stripe_count) || g.stripe_count > kMaxStripes) bad("stripe count");
  if (!is_pow2(g.tag_slots) || g.tag_slots > (1u << 20)) bad("tag slots");
  if (g.stats_slots == 0 || g.stats_slots > 65536) bad("stats slots");
  if (!is_pow2(g.flight_slots) || g.flight_slots > 65536) bad("flight slots");
  if (g.method_slots > 65536) bad("method slots");
  if (g.stripe_bytes % kCacheLine != 0 || g.stripe_bytes < sizeof(layout::StripeHeader) + 128 ||
      g.stripe_bytes > (1ull << 40)) {
    bad("stripe size");
  }
  place_regions(g);
  split_stripe(g);
  if (h->tags_off != g.tags_off || h->stats_off != g.stats_off || h->flights_off != g.flights_off ||
      h->methods_off != g.methods_off || h->outbox_off != g.outbox_off || h->stripes_off != g.stripes_off) {
    bad("region offsets");
  }
  if (h->groups_per_stripe != g.groups_per_stripe || h->arena_bytes != g.arena_bytes) bad("stripe split");
  std::uint64_t stripes_total = 0, end = 0;
  if (__builtin_mul_overflow(std::uint64_t(g.stripe_count), g.stripe_bytes, &stripes_total) ||
      __builtin_add_overflow(g.stripes_off, stripes_total, &end) || end > file_bytes) {
    bad("stripes extend past the end of the segment");
  }
  if (h->max_key_bytes == 0 || h->max_key_bytes > (1u << 20) || h->max_value_bytes > (1ull << 30) ||
      max_entry_bytes(h->max_key_bytes, h->max_value_bytes) > g.arena_bytes || h->default_ttl_ms <= 0) {
    bad("limits");
  }
  g.max_key_bytes = h->max_key_bytes;
  g.max_value_bytes = h->max_value_bytes;
  g.default_ttl_ms = h->default_ttl_ms;
  g.key_secret[0] = h->key_secret[0];
  g.key_secret[1] = h->key_secret[1];
  g.host_id[0] = h->host_id[0];
  g.host_id[1] = h->host_id[1];
  g.pidns_ino = h->pidns_ino;
  g.timens_ino = h->timens_ino;
  if (g.key_secret[0] == 0 && g.key_secret[1] == 0) bad("key secret");
  return g;
}

}  // namespace

std::unique_ptr<Segment> Segment::attach(std::string_view name, bool allow_foreign, Access access) {
  validate_name(name);
  const std::string path = path_of(name);
  const bool ro = access == Access::read_only;
  Fd fd;
  reserve_stdio(name);
  // O_NOFOLLOW: a symlink planted at the name is refused; O_NONBLOCK: a FIFO
  // planted there cannot hang the open.
  fd.fd = above_stdio(::open(path.c_str(), (ro ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (fd.fd < 0) {
    int e = errno;
    if (e == ENOENT) fail(Errc::not_found, name, "no such segment (" + path + ")");
    if (e == EACCES || e == EPERM) fail(Errc::permission_denied, name, "permission denied opening " + path);
    if (e == ELOOP) fail(Errc::corrupt, name, path + " is a symbolic link; refused");
    if (e == EISDIR) fail(Errc::corrupt, name, path + " is a directory");
    fail(Errc::io_error, name, "open " + path + ": " + std::strerror(e));
  }
  return attach_fd(fd.fd, path, name, allow_foreign, access, false);
}

std::unique_ptr<Segment> Segment::attach_pid(std::uint32_t pid, std::string_view name, bool allow_foreign,
                                             Access access) {
  validate_name(name);
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  const std::string want = "/memfd:" + object_of(name) + " (deleted)";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    const int e = errno;
    if (e == ENOENT) fail(Errc::not_found, name, "no process " + std::to_string(pid));
    fail(Errc::permission_denied, name, "cannot list " + dir + ": " + std::strerror(e));
  }
  std::string found;
  while (dirent* ent = ::readdir(d)) {
    const std::string fdpath = dir + "/" + ent->d_name;
    char target[512];
    const ssize_t n = ::readlink(fdpath.c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    if (std::string_view(target, std::size_t(n)) == want) {
      found = fdpath;
      break;
    }
  }
  ::closedir(d);
  if (found.empty()) {
    fail(Errc::not_found, name, "process " + std::to_string(pid) + " holds no sealed segment of that name");
  }
  const bool ro = access == Access::read_only;
  Fd fd;
  // /proc/PID/fd/N is the kernel's link to the memfd itself (opening it needs
  // the right to inspect that process: its uid, or root).
  // O_NONBLOCK: a FIFO swapped in under that name cannot hang the open.
  reserve_stdio(name);
  fd.fd = above_stdio(::open(found.c_str(), (ro ? O_RDONLY : O_RDWR) | O_NONBLOCK | O_CLOEXEC));
  if (fd.fd < 0) fail(Errc::permission_denied, name, "open " + found + ": " + std::strerror(errno));
  return attach_fd(fd.fd, found, name, allow_foreign, access, true);
}

std::unique_ptr<Segment> Segment::attach_fd(int raw_fd, const std::string& path, std::string_view name,
                                            bool allow_foreign, Access access, bool must_be_sealed) {
  const bool ro = access == Access::read_only;
  struct stat st;
  if (::fstat(raw_fd, &st) != 0) fail(Errc::io_error, name, std::string("fstat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(Errc::corrupt, name, path + " is not a regular shared-memory object");
  if (!allow_foreign) {
    if (st.st_uid != ::geteuid()) {
      fail(Errc::permission_denied, name,
           "owned by uid " + std::to_string(st.st_uid) + ", not by this process's uid " +
               std::to_string(::geteuid()) + " (allow_foreign to accept)");
    }
    if (st.st_mode & 0002) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 0777));
      fail(Errc::permission_denied, name, std::string("world-writable (mode ") + mode + "); refused unless allow_foreign");
    }
  }
  const int seals = ::fcntl(raw_fd, F_GET_SEALS);
  const bool sealed = seals >= 0 && (seals & F_SEAL_SHRINK) != 0 && (seals & F_SEAL_GROW) != 0;
  if (must_be_sealed && !sealed) fail(Errc::corrupt, name, path + " is not sealed against shrinking");
  if (std::uint64_t(st.st_size) < sizeof(Header)) {
    fail(Errc::corrupt, name, "truncated: " + std::to_string(st.st_size) + " bytes, smaller than a header");
  }
  void* p = ::mmap(nullptr, std::size_t(st.st_size), ro ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED,
                   raw_fd, 0);
  if (p == MAP_FAILED) fail(Errc::io_error, name, std::string("mmap: ") + std::strerror(errno));
  auto seg = std::unique_ptr<Segment>(new Segment());
  seg->mapping_ = std::make_unique<Mapping>();
  seg->mapping_->raw = p;
  seg->mapping_->raw_size = std::size_t(st.st_size);
  seg->name_ = std::string(name);
  seg->base_ = static_cast<std::uint8_t*>(p);
  seg->size_ = std::size_t(st.st_size);
  seg->read_only_ = ro;
  seg->sealed_ = sealed;
  seg->owner_uid_ = st.st_uid;
  seg->mode_ = st.st_mode & 0777;
  // The creator publishes only complete segments, so one acquire of the
  // magic orders every header field after it.
  std::atomic_thread_fence(std::memory_order_acquire);
  seg->geo_ = verified_geometry(seg->header(), std::uint64_t(st.st_size), name);
  if (!ro) {
    // Dead-owner detection judges thread ids: they mean nothing across pid
    // namespaces (a container sharing /dev/shm with its host), where a live
    // owner would look dead and be taken over. Read-only tools lock nothing.
    // A namespace that could not be read, ours or the creator's, is never
    // taken for the same (test_attack_lock6).
    const Geometry& g = seg->geo_;
    const std::uint64_t pid_mine = required_pidns(name), time_mine = own_timens();
    if (g.pidns_ino == 0) {
      fail(Errc::incompatible, name,
           "its creator could not read its pid namespace (ns inode 0): nobody can tell whose thread ids its "
           "locks name; remove it and create it again from a process with /proc");
    }
    if (g.pidns_ino != pid_mine) {
      fail(Errc::incompatible, name,
           "created in another pid namespace (ns inode " + std::to_string(g.pidns_ino) + ", ours " +
               std::to_string(pid_mine) +
               "): processes sharing a segment must share a pid namespace; open the segment from "
               "that namespace (e.g. share the host's with --pid=host) or use another name");
    }
    if (g.timens_ino != time_mine) {
      fail(Errc::incompatible, name,
           "created in another time namespace (ns inode " + std::to_string(g.timens_ino) + ", ours " +
               std::to_string(time_mine) + "): start times, which tell a live lock holder from a dead one, "
               "differ between time namespaces");
    }
  }
  return seg;
}

namespace {

// Writes a fresh header and stripes into a mapping of g.segment_bytes bytes,
// publishing the magic last.
void initialize(std::uint8_t* base, const Config& c, const Geometry& g) {
  auto* h = reinterpret_cast<Header*>(base);
  init_header(h, c, g);
  for (std::uint32_t i = 0; i < g.stripe_count; ++i) {
    auto* sh = reinterpret_cast<layout::StripeHeader*>(base + g.stripes_off + std::uint64_t(i) * g.stripe_bytes);
    stripe_lock::init(sh->lock);
  }
  h->state = layout::kStateReady;
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(h->magic, layout::kMagic, 8);
}

// Creates under a private temporary name, initializes, then publishes with
// link(2). Returns nullptr if the name was taken meanwhile.
std::unique_ptr<bip::mapped_region> create_and_publish(const Config& c, Geometry& g) {
  fill_secret(g, c.name);
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ std::uint64_t(::getpid()));
  const std::string temp = std::string(kTempPrefix) + c.name + "~" + std::to_string(own_pidns()) + "~" +
                           std::to_string(::getpid()) + "~" + std::to_string(rng());
  bip::permissions perms(c.mode);
  std::unique_ptr<bip::shared_memory_object> shm;
  reserve_stdio(c.name);
  try {
    shm = std::make_unique<bip::shared_memory_object>(bip::create_only, temp.c_str(), bip::read_write, perms);
  } catch (const bip::interprocess_exception& e) {
    fail(Errc::io_error, c.name, std::string("cannot create shared memory: ") + e.what());
  }
  struct Unlink {
    std::string n;
    ~Unlink() { bip::shared_memory_object::remove(n.c_str()); }
  } unlink_temp{temp};
  int fd = shm->get_mapping_handle().handle;
  if (fd <= 2) {  // Boost's descriptor cannot be moved: refuse rather than log into the segment
    fail(Errc::io_error, c.name,
         "the new segment's descriptor is standard stream " + std::to_string(fd) +
             ", closed with no descriptor to put there");
  }
  // Boost passes the mode to shm_open, where the umask narrows it: apply it exactly.
  if (::fchmod(fd, c.mode) != 0) fail(Errc::io_error, c.name, std::string("fchmod: ") + std::strerror(errno));
  std::unique_ptr<bip::mapped_region> region;
  try {
    shm->truncate(bip::offset_t(c.capacity_bytes));
    region = std::make_unique<bip::mapped_region>(*shm, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    fail(Errc::io_error, c.name, std::string("cannot size or map the segment: ") + e.what());
  }
  initialize(static_cast<std::uint8_t*>(region->get_address()), c, g);
  const std::string final_path = Segment::path_of(c.name);
  if (::link(("/dev/shm/" + temp).c_str(), final_path.c_str()) != 0) {
    if (errno == EEXIST) return nullptr;
    fail(Errc::io_error, c.name, "publish " + final_path + ": " + std::strerror(errno));
  }
  return region;
}

}  // namespace

std::unique_ptr<Segment> Segment::create_sealed(const Config& config) {
  validate_name(config.name);
  Geometry g = plan(config);
  fill_secret(g, config.name);
  Fd fd;
  reserve_stdio(config.name);
  fd.fd = above_stdio(::memfd_create(object_of(config.name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (fd.fd < 0) fail(Errc::io_error, config.name, std::string("memfd_create: ") + std::strerror(errno));
  if (::fchmod(fd.fd, config.mode) != 0) {
    fail(Errc::io_error, config.name, std::string("fchmod: ") + std::strerror(errno));
  }
  if (::ftruncate(fd.fd, off_t(config.capacity_bytes)) != 0) {
    fail(Errc::io_error, config.name, std::string("ftruncate: ") + std::strerror(errno));
  }
  // Sealed before anything is mapped: nobody, not even we, can shrink or grow
  // it from now on, so no process that maps it can be killed by SIGBUS.
  if (::fcntl(fd.fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    fail(Errc::io_error, config.name, std::string("F_ADD_SEALS: ") + std::strerror(errno));
  }
  void* p = ::mmap(nullptr, config.capacity_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.fd, 0);
  if (p == MAP_FAILED) fail(Errc::io_error, config.name, std::string("mmap: ") + std::strerror(errno));
  initialize(static_cast<std::uint8_t*>(p), config, g);
  auto seg = std::unique_ptr<Segment>(new Segment());
  seg->mapping_ = std::make_unique<Mapping>();
  seg->mapping_->raw = p;
  seg->mapping_->raw_size = config.capacity_bytes;
  seg->mapping_->keep_fd = fd.fd;  // kept open: the tools find the segment through /proc/PID/fd
  fd.fd = -1;
  seg->name_ = config.name;
  seg->base_ = static_cast<std::uint8_t*>(p);
  seg->size_ = config.capacity_bytes;
  seg->geo_ = g;
  seg->sealed_ = true;
  seg->owner_uid_ = ::geteuid();
  seg->mode_ = config.mode;
  return seg;
}

std::unique_ptr<Segment> Segment::open(const Config& config, bool& created) {
  if (config.sealed) {
    created = true;
    return create_sealed(config);
  }
  validate_name(config.name);
  Geometry g = plan(config);
  for (int attempt = 0; attempt < 8; ++attempt) {
    try {
      auto seg = attach(config.name, config.allow_foreign, Access::read_write);
      if (!config.allow_foreign && (seg->mode_ & ~config.mode) != 0) {
        fail(Errc::permission_denied, config.name,
             "its mode is wider than the requested one; refused unless allow_foreign");
      }
      created = false;
      return seg;
    } catch (const Error& e) {
      if (e.code() != Errc::not_found) throw;
    }
    sweep_dead_temporaries(config.name);
    if (auto region = create_and_publish(config, g)) {
      auto seg = std::unique_ptr<Segment>(new Segment());
      seg->mapping_ = std::make_unique<Mapping>();
      seg->mapping_->boost_region = std::move(*region);
      seg->name_ = config.name;
      seg->base_ = static_cast<std::uint8_t*>(seg->mapping_->boost_region.get_address());
      seg->size_ = config.capacity_bytes;
      seg->geo_ = g;
      seg->owner_uid_ = ::geteuid();
      seg->mode_ = config.mode;
      created = true;
      log::get().debug("created segment '{}' ({} bytes, {} stripes)", config.name, config.capacity_bytes,
                       g.stripe_count);
      return seg;
    }
    // Another process published it between our attach and our link: attach.
  }
  fail(Errc::io_error, config.name, "the name keeps appearing and disappearing; giving up");
}

bool Segment::remove(std::string_view name) {
  validate_name(name);
  if (::unlink(path_of(name).c_str()) == 0) return true;
  if (errno == ENOENT) return false;
  if (errno == EACCES || errno == EPERM) fail(Errc::permission_denied, name, "cannot remove: permission denied");
  fail(Errc::io_error, name, std::string("cannot remove: ") + std::strerror(errno));
}

}  // namespace hostcache
