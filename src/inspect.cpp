// inspect.cpp — read-only inspection: read(), check(), list().
//
// Nothing here locks or writes. Stripes are copied word by word (relaxed
// atomics) between two acquire readings of their sequence, and everything is
// parsed from that private copy, so a stripe is seen at one instant and a
// writer changing it underneath cannot make a bounds check stale. The segment
// is mapped PROT_READ: a bug here cannot damage it.
#include <dirent.h>
#include <hostcache/config.h>
#include <hostcache/errors.h>
#include <hostcache/inspect.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

#include "arena.h"
#include "atomic_words.h"
#include "clock.h"
#include "compress.h"
#include "generations.h"
#include "index.h"
#include "layout.h"
#include "segment.h"
#include "stats.h"
#include "stripe.h"
#include "stripe_copy.h"
#include "stripe_lock.h"

namespace hostcache::inspect {

const char* to_string(EntryState s) noexcept {
  switch (s) {
    case EntryState::valid:
      return "valid";
    case EntryState::stale:
      return "stale";
    case EntryState::expired:
      return "expired";
  }
  return "unknown";
}

namespace {

using layout::EntryHeader;
using layout::StripeHeader;

const StripeHeader& live_header(const Segment& seg, std::uint32_t i) {
  return *reinterpret_cast<const StripeHeader*>(seg.stripe_base(i));
}

// Bytes taken from the segment, for a message: printable ASCII as it is,
// everything else (and the backslash and quote) escaped, so that a message
// never carries a control sequence to whoever prints it.
std::string escaped(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += char(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string size_text(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  char buf[48];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

std::string busy_text(const StripeCopy& copy) {
  if (copy.moving()) return "busy: live writers never left it at rest long enough to copy";
  return "busy: sequence " + std::to_string(copy.seq()) +
         " stayed odd (its writer is stalled or died without recovery)";
}

// Why a whole copy was not taken, in words, naming the limit to raise.
std::string refused_text(Took took, const Segment& seg, const CopyLimits& limits,
                         const StripeCopy& copy) {
  switch (took) {
    case Took::too_large:
      return "stripe of " + size_text(seg.geometry().stripe_bytes) +
             " is larger than --max-stripe-bytes (" + size_text(limits.max_stripe) +
             "), the most one read copies";
    case Took::over_budget:
      return "the read budget is spent: " + size_text(limits.spent) + " copied of --max-read-bytes (" +
             size_text(limits.max_total) + ")";
    case Took::busy:
    case Took::copied:
      break;
  }
  return busy_text(copy);
}

std::string at(std::uint32_t stripe, std::uint64_t off) {
  return "stripe " + std::to_string(stripe) + " entry @" + std::to_string(off);
}

EntryState state_of(generations::State s) {
  switch (s) {
    case generations::State::expired:
      return EntryState::expired;
    case generations::State::stale:
      return EntryState::stale;
    case generations::State::valid:
      break;
  }
  return EntryState::valid;
}

std::string payload(const arena::StripeView& v, std::uint64_t off, std::uint64_t len) {
  // read_header proved [off, off + size) lies inside the arena; the copy is private.
  return std::string(reinterpret_cast<const char*>(v.arena + off), len);
}

SegmentInfo segment_info(const Segment& seg) {
  const layout::Header& h = *seg.header();
  const Geometry& g = seg.geometry();
  SegmentInfo s;
  s.name = seg.name();
  s.path = Segment::path_of(seg.name());
  s.layout_version = words::load(h.layout_version);
  s.format_stamp = words::load(h.format_stamp);
  s.capacity_bytes = g.segment_bytes;
  s.stripes = g.stripe_count;
  s.stripe_bytes = g.stripe_bytes;
  s.arena_bytes = g.arena_bytes;
  s.tag_slots = g.tag_slots;
  s.max_key_bytes = words::load(h.max_key_bytes);
  s.max_value_bytes = words::load(h.max_value_bytes);
  s.default_ttl_ms = words::load(h.default_ttl_ms);
  s.created_unix_ms = words::load(h.created_unix_ms);
  s.creator_uid = words::load(h.creator_uid);
  s.creator_pid = words::load(h.creator_pid);
  s.global_gen = words::load(h.global_gen, std::memory_order_acquire);
  s.owner_uid = seg.owner_uid();
  s.mode = seg.mode();
  return s;
}

std::vector<MethodInfo> methods_of(const Segment& seg) {
  std::vector<MethodInfo> out;
  const layout::MethodSlot* slots = seg.method_slots();
  for (std::uint32_t i = 0; i < seg.geometry().method_slots; ++i) {
    const layout::MethodSlot& m = slots[i];
    if (words::load(m.claimed, std::memory_order_acquire) != 2) continue;  // 2: named
    MethodInfo info;
    std::size_t len = std::min<std::size_t>(words::load(m.name_len), layout::kMethodNameBytes);
    info.name.resize(len);
    words::copy_out(reinterpret_cast<const std::uint8_t*>(&m), offsetof(layout::MethodSlot, name),
                    len, info.name.data());
    info.requests = words::load(m.requests);
    info.hits = words::load(m.hits);
    info.misses = words::load(m.misses);
    info.hit_ns = words::load(m.hit_ns);
    info.miss_ns = words::load(m.miss_ns);
    info.bytes = words::load(m.bytes);
    out.push_back(std::move(info));
  }
  return out;
}

// What read() gathers across stripes besides the entries.
struct Gathered {
  std::map<std::string, NamespaceInfo> namespaces;
  std::uint64_t decompress_left = 0;  // original bytes still allowed (Options::max_read_bytes)
  bool namespaces_cut = false;        // kMaxNamespaces reached
};
// Distinct namespaces counted by one read: a segment of garbage could
// otherwise name one per entry.
constexpr std::size_t kMaxNamespaces = 10000;

// The value of a compressed entry, decompressed from the stored frame when
// its claimed length is one the library could have written and the budget
// allows; false (and `out` untouched) otherwise.
bool decompressed(const std::string& frame, std::uint64_t orig_len, std::uint64_t arena_bytes,
                  Gathered& g, std::string& out) {
  if (orig_len > arena_bytes || orig_len > g.decompress_left) return false;
  std::string value(orig_len, '\0');
  if (!compress::decompress(frame, value.data(), value.size())) return false;
  g.decompress_left -= orig_len;
  out = std::move(value);
  return true;
}

// Adds the live entries of a consistent stripe copy that pass `filter`.
void collect_entries(const Segment& seg, StripeCopy& copy, std::uint32_t stripe,
                     const generations::Judge& judge, const Filter& filter, Gathered& gathered,
                     Snapshot& snap) {
  const arena::StripeView v = copy.view();
  const std::uint32_t tag_mask = seg.geometry().tag_slots - 1;
  std::string why;
  std::vector<std::string> tags;
  // A stripe of garbage could otherwise add a problem per entry-sized piece.
  constexpr std::size_t kPerStripe = 16;
  std::size_t bad = 0;
  auto problem = [&](std::string what) {
    if (bad++ < kPerStripe) snap.problems.push_back(std::move(what));
  };
  auto visit = [&](std::uint64_t off, const EntryHeader& h) {
    if (h.live == 0) return;
    const bool room = snap.entries.size() < filter.limit;
    if (!room && !filter.namespaces) return;
    if (!arena::checksum_ok(v, off, h)) {
      problem(at(stripe, off) + ": checksum mismatch; not shown");
      return;
    }
    if (!arena::read_tags(v, off, h, tags)) {
      problem(at(stripe, off) + ": malformed tags; not shown");
      return;
    }
    const bool has_ns = (h.flags & layout::kFlagNamespace) != 0;
    std::string ns = has_ns ? payload(v, arena::ns_off(off, h), h.ns_len) : std::string();
    const EntryState state = state_of(judge.of(h));
    if (filter.namespaces && has_ns) {
      auto it = gathered.namespaces.find(ns);
      if (it == gathered.namespaces.end() && gathered.namespaces.size() < kMaxNamespaces) {
        it = gathered.namespaces.emplace(ns, NamespaceInfo{ns, 0, 0, 0}).first;
      }
      if (it != gathered.namespaces.end()) {
        ++it->second.entries;
        it->second.valid += state == EntryState::valid;
        it->second.bytes += h.size;
      } else {
        gathered.namespaces_cut = true;
      }
    }
    if (!room) return;
    if (filter.ns && (*filter.ns != ns || (filter.ns->empty() && has_ns))) return;
    EntryInfo e;
    e.key = payload(v, arena::key_off(off), h.key_len);
    if (e.key.compare(0, filter.prefix.size(), filter.prefix) != 0) return;
    if (!filter.tag.empty() && std::find(tags.begin(), tags.end(), filter.tag) == tags.end())
      return;
    e.state = state;
    if (filter.state && *filter.state != e.state) return;
    e.value = payload(v, arena::value_off(off, h), h.value_len);
    e.has_namespace = has_ns;
    e.ns = std::move(ns);
    e.stored_bytes = h.value_len;
    e.orig_bytes = h.orig_len;
    e.compressed = (h.flags & layout::kFlagCompressed) != 0;
    if (e.compressed) {
      e.decompressed = decompressed(e.value, h.orig_len, v.arena_bytes, gathered, e.value);
      if (!e.decompressed) {
        problem(at(stripe, off) + ": compressed value (" + std::to_string(h.value_len) + " B -> " +
                std::to_string(h.orig_len) + " B) not decompressed; shown as stored");
      }
    }
    e.stripe = stripe;
    e.size = h.size;
    e.no_expiry = h.expires_ms == std::numeric_limits<std::int64_t>::max();
    if (e.no_expiry || __builtin_sub_overflow(h.expires_ms, judge.now_ms(), &e.ttl_left_ms)) {
      // Never, or a forged expiry the subtraction cannot hold.
      e.ttl_left_ms = h.expires_ms >= 0 ? std::numeric_limits<std::int64_t>::max()
                                        : std::numeric_limits<std::int64_t>::min();
    }
    for (std::size_t k = 0; k < tags.size(); ++k) {
      TagInfo t;
      t.name = tags[k];
      t.slot = h.tag_slot[k];
      t.gen_at_write = h.tag_gen[k];
      // Masked: an out-of-range slot is check()'s to report, not ours to follow.
      t.gen_now = words::load(seg.tag_gens()[t.slot & tag_mask], std::memory_order_acquire);
      e.tags.push_back(std::move(t));
    }
    snap.entries.push_back(std::move(e));
  };
  const StripeHeader& hdr = copy.hdr();
  if (!arena::walk(v, hdr.tail, hdr.head, visit, &why, nullptr)) {
    problem("stripe " + std::to_string(stripe) + ": ring does not walk: " + why);
  }
  if (bad > kPerStripe) {
    snap.problems.push_back("stripe " + std::to_string(stripe) + ": " +
                            std::to_string(bad - kPerStripe) + " more problems not listed");
  }
}

std::string hex_id(const std::uint64_t (&id)[2]) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::uint64_t part : id) {
    for (int shift = 60; shift >= 0; shift -= 4) out.push_back(kHex[(part >> shift) & 15]);
  }
  return out;
}

// The relay's state and the outbox head, word by word (the relay writes them
// while we read: each field is one relaxed load, the set may mix two loops).
RelayInfo relay_of(const Segment& seg, std::int64_t now_ms) {
  const layout::RelayState& r = *seg.relay_state();
  RelayInfo info;
  info.pid = words::load(r.pid);
  info.ever_ran = info.pid != 0;
  // A pid past INT32_MAX would name a process group: only a forged one is.
  info.alive = info.ever_ran && info.pid <= std::uint32_t(std::numeric_limits<pid_t>::max()) &&
               (::kill(pid_t(info.pid), 0) == 0 || errno == EPERM);
  info.connected = words::load(r.connected) != 0;
  info.heartbeat_ms = words::load(r.heartbeat_ms);
  if (info.ever_ran && __builtin_sub_overflow(now_ms, info.heartbeat_ms, &info.heartbeat_age_ms)) {
    info.heartbeat_age_ms = std::numeric_limits<std::int64_t>::max();
  }
  if (!info.ever_ran) info.heartbeat_age_ms = 0;
  info.head = words::load(seg.outbox()->head, std::memory_order_acquire);
  const layout::RelayIds& ids = r.ids[words::load(r.ids_current, std::memory_order_acquire) & 1];
  info.cursor = words::load(ids.cursor);
  info.pending = info.head > info.cursor ? info.head - info.cursor : 0;
  info.outbox_slots = seg.geometry().outbox_slots;
  info.last_id_ms = words::load(ids.last_id_ms);
  info.last_id_seq = words::load(ids.last_id_seq);
  info.published = words::load(r.published);
  info.applied = words::load(r.applied);
  info.lag_events = words::load(r.lag_events);
  info.lag_ms = words::load(r.lag_ms);
  info.resync_lost = words::load(r.resync_lost);
  info.resync_trimmed = words::load(r.resync_trimmed);
  info.resync_replay = words::load(r.resync_replay);
  info.overflow_clears = words::load(r.overflow_clears);
  info.stale_clears = words::load(r.stale_clears);
  info.host_id = hex_id(seg.geometry().host_id);
  return info;
}

CopyLimits limits_of(const Options& options) {
  CopyLimits l;
  l.max_stripe = options.max_stripe_bytes;
  l.max_total = options.max_read_bytes;
  return l;
}

}  // namespace

Snapshot read(std::string_view name, const Filter& filter, const Options& options) {
  // The same owner and mode checks as Cache::attach: a segment another user
  // can write may hold anything, and `hostcache save` would carry it on.
  std::unique_ptr<Segment> seg =
      Segment::attach(name, options.allow_foreign, Segment::Access::read_only);
  Snapshot snap;
  snap.segment = segment_info(*seg);
  snap.stats = StatsRecorder::read(*seg);
  snap.methods = methods_of(*seg);
  const std::int64_t now = clock::now_ms();
  snap.relay = relay_of(*seg, now);
  const generations::Judge judge(*seg, now);
  Gathered gathered;
  gathered.decompress_left = options.max_read_bytes;
  StripeCopy copy(*seg);
  BusyBudget budget;
  CopyLimits limits = limits_of(options);
  for (std::uint32_t i = 0; i < seg->geometry().stripe_count; ++i) {
    StripeInfo info;
    info.index = i;
    info.lock_owner_pid = words::load(live_header(*seg, i).owner_pid);
    // With no entries wanted (limit 0, or reached) only the header is copied:
    // `hostcache stats --watch` then costs a few cache lines per stripe.
    bool want = snap.entries.size() < filter.limit || filter.namespaces;
    Took took = copy.take(i, want, budget, limits);
    if (took == Took::too_large || took == Took::over_budget) {
      // Its entries are not read; its counters still are, from its header.
      snap.problems.push_back("stripe " + std::to_string(i) + ": " +
                              refused_text(took, *seg, limits, copy) + "; entries not read");
      want = false;
      took = copy.take(i, false, budget, limits);
      info.consistent = false;
    }
    if (took != Took::copied) {
      info.consistent = false;
      info.seq = copy.seq();
      snap.problems.push_back("stripe " + std::to_string(i) + ": " + busy_text(copy) +
                              "; not read");
      snap.stripes.push_back(info);
      continue;
    }
    const StripeHeader& h = copy.hdr();
    info.seq = h.seq;
    info.entries = h.entries;
    info.dead_bytes = h.dead_bytes;
    info.bytes_used = h.used >= h.dead_bytes ? h.used - h.dead_bytes : 0;
    info.evictions = h.evictions;
    info.recoveries = h.recoveries;
    info.resets = h.resets;
    if (want) {
      const std::size_t before = snap.problems.size();
      collect_entries(*seg, copy, i, judge, filter, gathered, snap);
      info.consistent = snap.problems.size() == before;
    }
    snap.stripes.push_back(info);
  }
  for (auto& [name, ns] : gathered.namespaces) snap.namespaces.push_back(std::move(ns));
  if (gathered.namespaces_cut) {
    snap.problems.push_back("more than " + std::to_string(kMaxNamespaces) +
                            " namespaces: the rest are not counted");
  }
  return snap;
}

namespace {

// Collects violations, at most kPerStripe for one stripe: a stripe of garbage
// would otherwise report every one of its buckets.
class Report {
 public:
  static constexpr std::size_t kPerStripe = 16;
  explicit Report(std::vector<Violation>& out) : out_(out) {}
  void start(std::uint32_t stripe) {
    flush();
    stripe_ = stripe;
    count_ = 0;
  }
  void add(std::string where, std::string what) {
    if (count_++ < kPerStripe) out_.push_back({std::move(where), std::move(what)});
  }
  void flush() {
    if (count_ > kPerStripe) {
      out_.push_back({"stripe " + std::to_string(stripe_),
                      std::to_string(count_ - kPerStripe) + " more violations not listed"});
    }
    count_ = 0;
  }

 private:
  std::vector<Violation>& out_;
  std::uint32_t stripe_ = 0;
  std::size_t count_ = 0;
};

void check_header(const Segment& seg, std::vector<Violation>& out) {
  const layout::Header& h = *seg.header();
  const Geometry& g = seg.geometry();
  auto bad = [&](std::string what) { out.push_back({"header", std::move(what)}); };
  char magic[8];
  words::copy_out(seg.base(), 0, 8, magic);
  if (std::memcmp(magic, layout::kMagic, 8) != 0) bad("bad magic");
  if (words::load(h.layout_version) != layout::kLayoutVersion) bad("layout version differs");
  if (words::load(h.format_stamp) != layout::kFormatStamp) bad("format stamp differs");
  if (words::load(h.state) != layout::kStateReady) bad("state is not ready");
  if (words::load(h.segment_bytes) != seg.size()) bad("segment_bytes differs from the mapped size");
  // attach() verified the geometry; these restate what parsing a stripe relies on.
  const std::uint64_t stripe_need =
      sizeof(StripeHeader) + std::uint64_t(g.groups_per_stripe) * 64 + g.arena_bytes;
  if (g.groups_per_stripe == 0) bad("a stripe has no bucket groups");
  if (g.arena_bytes % 8 != 0) bad("arena bytes not a multiple of 8");
  if (stripe_need > g.stripe_bytes) bad("header, buckets and arena overflow the stripe");
  if (g.stripes_off + std::uint64_t(g.stripe_count) * g.stripe_bytes > seg.size()) {
    bad("stripes extend past the segment");
  }
  const layout::MethodSlot* methods = seg.method_slots();
  for (std::uint32_t i = 0; i < g.method_slots; ++i) {
    const std::uint32_t claimed = words::load(methods[i].claimed, std::memory_order_acquire);
    const std::string where = "method slot " + std::to_string(i);
    // 0 free, 2 named, (pid << 2) | 1 being named by pid (memoize.cpp).
    if (claimed != 0 && claimed != 2 && (claimed & 3) != 1) {
      out.push_back({where, "claimed is " + std::to_string(claimed) + ", not 0, 2 or (pid << 2) | 1"});
    }
    if (claimed == 2 && words::load(methods[i].name_len) > layout::kMethodNameBytes) {
      out.push_back({where, "name longer than the slot"});
    }
  }
}

struct SeenEntry {
  std::uint64_t hash = 0;
  bool live = false;
  int refs = 0;
};

void check_stripe(const Segment& seg, std::uint32_t i, StripeCopy& copy, BusyBudget& budget,
                  CopyLimits& limits, Report& report) {
  const std::string where = "stripe " + std::to_string(i);
  report.start(i);
  // owner_pid alone is no holder: a child forked just as its parent took
  // the lock may store its parent's pid there after the parent left. Only a
  // held lock word makes a dead owner_pid a dead holder.
  const std::uint64_t word = words::load(live_header(seg, i).lock);
  const std::uint32_t owner = words::load(live_header(seg, i).owner_pid);
  if (stripe_lock::held(word) && owner != 0 && ::kill(pid_t(owner), 0) != 0 && errno == ESRCH) {
    report.add(where, "lock held by dead pid " + std::to_string(owner) + " (not yet recovered)");
  }
  if (const Took took = copy.take(i, true, budget, limits); took != Took::copied) {
    report.add(where, "not verified: " + refused_text(took, seg, limits, copy));
    return;
  }
  const StripeHeader& h = copy.hdr();
  const arena::StripeView v = copy.view();
  if (h.move_size != 0) {
    report.add(where,
               "move journal not empty at rest (move_size " + std::to_string(h.move_size) + ")");
  }
  std::unordered_map<std::uint64_t, SeenEntry> seen;
  std::uint64_t dead = 0, live = 0, ring = 0;
  std::vector<std::string> tags;
  const std::uint32_t tag_slots = seg.geometry().tag_slots;
  auto visit = [&](std::uint64_t off, const EntryHeader& e) {
    seen[off] = SeenEntry{e.hash, e.live != 0, 0};
    if (e.live == 0) {
      dead += e.size;
      return;
    }
    ++live;
    if (stripe::of(e.hash, seg.geometry().stripe_count) != i) {
      report.add(at(i, off), "key hash belongs to stripe " +
                                 std::to_string(stripe::of(e.hash, seg.geometry().stripe_count)));
    }
    if (!arena::checksum_ok(v, off, e)) {
      report.add(at(i, off), "checksum mismatch on a live entry");
      return;
    }
    if (!arena::read_tags(v, off, e, tags)) {
      report.add(at(i, off), "malformed tags blob");
      return;
    }
    for (std::size_t k = 0; k < tags.size(); ++k) {
      if (e.tag_slot[k] >= tag_slots || e.tag_slot[k] != generations::slot_of(tags[k], tag_slots)) {
        report.add(at(i, off),
                   "tag '" + escaped(tags[k]) + "' recorded in the wrong generation slot");
      }
    }
    if ((e.flags & layout::kFlagNamespace) != 0) {
      const std::string ns = payload(v, arena::ns_off(off, e), e.ns_len);
      if (ns.empty() || ns.size() > kMaxNamespaceBytes) {
        report.add(at(i, off), "namespace of " + std::to_string(ns.size()) + " bytes, not 1.." +
                                   std::to_string(kMaxNamespaceBytes));
      } else if (e.ns_slot != generations::ns_slot_of(ns, tag_slots)) {
        report.add(at(i, off),
                   "namespace '" + escaped(ns) + "' recorded in the wrong generation slot");
      }
    } else if (e.ns_len != 0) {
      report.add(at(i, off), "namespace bytes without the namespace flag");
    }
    if ((e.flags & layout::kFlagCompressed) != 0) {
      const std::string frame = payload(v, arena::value_off(off, e), e.value_len);
      std::string value;
      Gathered unlimited;
      unlimited.decompress_left = UINT64_MAX;
      if (!decompressed(frame, e.orig_len, v.arena_bytes, unlimited, value)) {
        report.add(at(i, off), "compressed value does not decode to its " +
                                   std::to_string(e.orig_len) + " bytes");
      }
    }
  };
  std::string why;
  if (!arena::walk(v, h.tail, h.head, visit, &why, &ring)) {
    report.add(where, "ring does not walk from tail to head: " + why);
    return;  // without the chain, index checks would only repeat this
  }
  auto differs = [&](const char* field, std::uint64_t stored, std::uint64_t actual) {
    if (stored != actual) {
      report.add(where, std::string(field) + " is " + std::to_string(stored) + ", the ring holds " +
                            std::to_string(actual));
    }
  };
  differs("used", h.used, ring);
  differs("dead_bytes", h.dead_bytes, dead);
  differs("entries", h.entries, live);

  const std::uint64_t nbuckets = std::uint64_t(v.groups) * layout::kGroupSlots;
  for (std::uint64_t b = 0; b < nbuckets; ++b) {
    const layout::Bucket bucket = v.buckets[b];
    if (bucket == 0) continue;
    const std::string bw = where + " bucket " + std::to_string(b);
    std::uint64_t off = 0;
    if (!index::offset_of(bucket, v.arena_bytes, off)) {
      report.add(bw, "offset outside the arena");
      continue;
    }
    auto it = seen.find(off);
    if (it == seen.end()) {
      report.add(bw,
                 "points to @" + std::to_string(off) + ", not the start of an entry in the ring");
      continue;
    }
    if (!it->second.live) report.add(bw, "points to dead entry @" + std::to_string(off));
    ++it->second.refs;
    const index::Probe p = index::probe(it->second.hash, v.groups);
    if (index::fingerprint_of(bucket) != p.fingerprint) {
      report.add(bw, "fingerprint does not match entry @" + std::to_string(off));
    }
    const std::uint64_t g = b / layout::kGroupSlots;
    if (g != p.g1 && g != p.g2) {
      report.add(bw, "in group " + std::to_string(g) + ", but entry @" + std::to_string(off) +
                         " belongs in group " + std::to_string(p.g1) + " or " +
                         std::to_string(p.g2));
    }
  }
  for (const auto& [off, e] : seen) {
    if (e.live && e.refs != 1) {
      report.add(at(i, off), "live entry referenced by " + std::to_string(e.refs) + " buckets");
    }
  }
}

}  // namespace

std::vector<Violation> check(std::string_view name, const Options& options) {
  std::unique_ptr<Segment> seg =
      Segment::attach(name, options.allow_foreign, Segment::Access::read_only);
  std::vector<Violation> out;
  check_header(*seg, out);
  StripeCopy copy(*seg);
  BusyBudget budget;
  CopyLimits limits = limits_of(options);
  Report report(out);
  for (std::uint32_t i = 0; i < seg->geometry().stripe_count; ++i) {
    check_stripe(*seg, i, copy, budget, limits, report);
  }
  report.flush();
  return out;
}

namespace {

// Counts the processes whose /proc/PID/maps maps each segment. Mappings are
// matched by device and inode, not by path: a creator maps the object under
// its temporary name (since unlinked), and a "(deleted)" mapping of an older
// object of the same name is another inode. Processes whose maps this user
// cannot read are not counted.
bool count_attached(std::vector<Listing>& segments, const std::vector<struct stat>& stats) {
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return false;
  std::map<std::pair<std::uint64_t, std::uint64_t>, Listing*> by_inode;  // (dev, ino)
  for (std::size_t i = 0; i < segments.size(); ++i) {
    segments[i].attached_processes = 0;
    by_inode[{std::uint64_t(stats[i].st_dev), std::uint64_t(stats[i].st_ino)}] = &segments[i];
  }
  while (dirent* e = ::readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream maps(std::string("/proc/") + e->d_name + "/maps");
    if (!maps) continue;
    std::set<Listing*> here;
    std::string line;
    while (std::getline(maps, line)) {
      if (line.find("/dev/shm/") == std::string::npos) continue;
      // address perms offset MAJOR:MINOR inode path
      unsigned major_no = 0, minor_no = 0;
      unsigned long long inode = 0;
      if (std::sscanf(line.c_str(), "%*s %*s %*s %x:%x %llu", &major_no, &minor_no, &inode) != 3) {
        continue;
      }
      auto it = by_inode.find({std::uint64_t(makedev(major_no, minor_no)), inode});
      if (it != by_inode.end()) here.insert(it->second);
    }
    for (Listing* l : here) ++l->attached_processes;
  }
  ::closedir(proc);
  return true;
}

}  // namespace

std::vector<Listing> list() {
  std::vector<Listing> out;
  std::vector<struct stat> stats;
  DIR* dir = ::opendir("/dev/shm");
  if (dir == nullptr) return out;
  constexpr std::string_view kPrefix = "hostcache.";
  while (dirent* e = ::readdir(dir)) {
    std::string_view file = e->d_name;
    if (file.substr(0, kPrefix.size()) != kPrefix) continue;
    Listing l;
    l.name = std::string(file.substr(kPrefix.size()));
    try {
      Segment::validate_name(l.name);
    } catch (const Error&) {
      continue;  // not a name this library would have created
    }
    struct stat st;
    if (::lstat(Segment::path_of(l.name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    l.bytes = std::uint64_t(st.st_size);
    l.owner_uid = st.st_uid;
    l.mode = st.st_mode & 07777;
    out.push_back(std::move(l));
    stats.push_back(st);
  }
  ::closedir(dir);
  count_attached(out, stats);
  std::sort(out.begin(), out.end(),
            [](const Listing& a, const Listing& b) { return a.name < b.name; });
  return out;
}

}  // namespace hostcache::inspect
