// report_text.cpp — the human-readable output of both tools.
#include <pwd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>

#include "report.h"
#include "tool_common.h"
#include "value_json.h"

namespace hostcache::tools {
namespace {

std::string printf_string(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string printf_string(const char* fmt, ...) {
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string out(n > 0 ? std::size_t(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, again);
  va_end(again);
  return out;
}

std::string percent(std::uint64_t part, std::uint64_t whole) {
  return whole == 0 ? "-" : printf_string("%.1f%%", 100.0 * double(part) / double(whole));
}

// "1.2 MiB -> 300.0 KiB (saved 924.0 KiB)", or "none".
std::string compressed_text(const Stats& s) {
  if (s.compressed_in == 0 && s.compressed_out == 0) return "none";
  const std::uint64_t saved = s.compressed_in >= s.compressed_out ? s.compressed_in - s.compressed_out : 0;
  return format_bytes(s.compressed_in) + " -> " + format_bytes(s.compressed_out) + " (saved " +
         format_bytes(saved) + ", " + percent(saved, s.compressed_in) + ")";
}

// "850ms", "12.3s", "4m05s": how long ago.
std::string format_age(std::int64_t ms) {
  if (ms <= 0) return "0ms";
  return format_ttl(ms);
}

std::string user_of(std::uint32_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  char buf[1024];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    return std::string(found->pw_name) + " (" + std::to_string(uid) + ")";
  }
  return std::to_string(uid);
}

std::string mean_ms(std::uint64_t total_ns, std::uint64_t count) {
  return count == 0 ? "-" : printf_string("%.3fms", double(total_ns) / double(count) / 1e6);
}

void print_header(std::ostream& out, const inspect::SegmentInfo& s) {
  out << "segment   " << s.name << "  " << s.path << "\n"
      << "layout    version " << s.layout_version << ", format stamp "
      << printf_string("%016" PRIx64, s.format_stamp) << ", owner " << user_of(s.owner_uid)
      << ", mode " << format_mode(s.mode) << "\n"
      << "capacity  " << format_bytes(s.capacity_bytes) << ": " << s.stripes << " stripes of "
      << format_bytes(s.stripe_bytes) << " (arena " << format_bytes(s.arena_bytes) << " each)\n"
      << "limits    key " << format_bytes(s.max_key_bytes) << ", value "
      << format_bytes(s.max_value_bytes) << ", default TTL " << format_ttl(s.default_ttl_ms) << ", "
      << s.tag_slots << " tag slots\n"
      << "created   " << format_unix_ms(s.created_unix_ms) << " by uid " << s.creator_uid
      << ", pid " << s.creator_pid << "\n"
      << "global generation " << s.global_gen << "\n";
}

// Stripes by how full their arena is, in tenths: shape at a glance, 10 lines
// for any number of stripes.
void print_stripe_summary(std::ostream& out, const inspect::Snapshot& snap) {
  const std::vector<inspect::StripeInfo>& st = snap.stripes;
  std::uint64_t entries = 0, used = 0, dead = 0, evictions = 0, recoveries = 0, resets = 0;
  std::uint64_t min_e = UINT64_MAX, max_e = 0, locked = 0, busy = 0;
  std::size_t bins[10] = {};
  for (const inspect::StripeInfo& s : st) {
    entries += s.entries, used += s.bytes_used, dead += s.dead_bytes;
    evictions += s.evictions, recoveries += s.recoveries, resets += s.resets;
    min_e = std::min(min_e, s.entries), max_e = std::max(max_e, s.entries);
    locked += s.lock_owner_pid != 0, busy += !s.consistent;
    const std::uint64_t arena = snap.segment.arena_bytes;
    const std::uint64_t tenth =
        arena == 0 ? 0 : std::min<std::uint64_t>(9, 10 * s.bytes_used / arena);
    ++bins[tenth];
  }
  if (st.empty()) min_e = 0;
  const std::uint64_t arena_total = snap.segment.arena_bytes * st.size();
  out << "\nstripes   " << st.size() << ": entries " << entries << " (" << min_e << " to " << max_e
      << " per stripe), used " << format_bytes(used) << " of " << format_bytes(arena_total) << " ("
      << percent(used, arena_total) << "), dead " << format_bytes(dead) << "\n"
      << "          evictions " << evictions << ", recoveries " << recoveries << ", resets "
      << resets << ", locked now " << locked << ", unreadable " << busy << "\n";
  const std::size_t most = *std::max_element(std::begin(bins), std::end(bins));
  out << "  arena fill  stripes\n";
  for (int b = 0; b < 10; ++b) {
    const std::size_t bar = most == 0 ? 0 : (bins[b] * 40 + most - 1) / most;
    out << printf_string("  %3d-%3d%% %6zu", b * 10, b * 10 + 10, bins[b])
        << (bar ? " " + std::string(bar, '#') : "") << "\n";
  }
}

void print_stripe_table(std::ostream& out, const inspect::Snapshot& snap) {
  out << "\n"
      << printf_string("  %6s %8s %12s %12s %10s %10s %6s %12s %8s\n", "stripe", "entries", "used",
                       "dead", "evictions", "recovered", "resets", "seq", "lock");
  for (const inspect::StripeInfo& s : snap.stripes) {
    out << printf_string("  %6u %8" PRIu64 " %12" PRIu64 " %12" PRIu64 " %10" PRIu64 " %10" PRIu64
                         " %6" PRIu64 " %12" PRIu64 " %8s%s\n",
                         s.index, s.entries, s.bytes_used, s.dead_bytes, s.evictions, s.recoveries,
                         s.resets, s.seq,
                         s.lock_owner_pid ? std::to_string(s.lock_owner_pid).c_str() : "-",
                         s.consistent ? "" : "  unreadable");
  }
}

void print_stats_lines(std::ostream& out, const Stats& s) {
  out << "stats     gets " << s.gets << ", hits " << s.hits << ", misses " << s.misses
      << " (hit ratio " << percent(s.hits, s.gets) << "), sets " << s.sets << ", erases "
      << s.erases << "\n"
      << "          evictions " << s.evictions << ", expired " << s.expired << ", stale " << s.stale
      << ", recoveries " << s.recoveries << ", resets " << s.resets << "\n"
      << "          entries " << s.entries << ", bytes used " << format_bytes(s.bytes_used)
      << " of " << format_bytes(s.capacity_bytes) << " (" << percent(s.bytes_used, s.capacity_bytes)
      << ")\n"
      << "          compressed " << compressed_text(s) << "\n";
}

// Relay lines; `lead` starts the first line ("relay     " in shm-dump, "  " in stats).
void print_relay(std::ostream& out, const inspect::RelayInfo& r, const char* lead,
                 const char* indent) {
  out << lead;
  if (!r.ever_ran) {
    out << "none (no hostcache-relay has run on this segment); outbox head " << r.head << "\n";
  } else {
    out << "pid " << r.pid << (r.alive ? " (running)" : " (not running)") << ", "
        << (r.connected ? "connected" : "not connected") << ", heartbeat "
        << (r.heartbeat_age_ms < 0 ? "in the future (" + std::to_string(r.heartbeat_age_ms) + "ms)"
                                   : format_age(r.heartbeat_age_ms) + " ago")
        << "\n"
        << indent << "outbox pending " << r.pending << " (head " << r.head << ", cursor "
        << r.cursor << ", " << r.outbox_slots << " slots)" << (r.pending > r.outbox_slots
                                                                   ? ", a lap behind: events lost"
                                                                   : "")
        << ", last id " << r.last_id_ms << "-" << r.last_id_seq << "\n"
        << indent << "published " << r.published << ", applied " << r.applied << ", lag "
        << r.lag_events << " events / " << r.lag_ms << "ms\n"
        << indent << "resyncs: lost " << r.resync_lost << ", trimmed " << r.resync_trimmed
        << ", replay " << r.resync_replay << "; overflow clears " << r.overflow_clears
        << ", stale clears " << r.stale_clears << "\n";
  }
  out << indent << "host id " << r.host_id << "\n";
}

void print_namespaces(std::ostream& out, const std::vector<inspect::NamespaceInfo>& namespaces) {
  if (namespaces.empty()) return;
  out << "\n" << printf_string("  %-32s %10s %10s %12s\n", "namespace", "entries", "valid", "bytes");
  for (const inspect::NamespaceInfo& n : namespaces) {
    out << printf_string("  %-32s %10" PRIu64 " %10" PRIu64 " %12s\n",
                         escape_bytes(n.name, 32).c_str(), n.entries, n.valid,
                         format_bytes(n.bytes).c_str());
  }
}

void print_methods(std::ostream& out, const std::vector<inspect::MethodInfo>& methods) {
  if (methods.empty()) return;
  out << "\n"
      << printf_string("  %-32s %10s %10s %10s %7s %10s %10s %10s\n", "method", "requests", "hits",
                       "misses", "hit%", "mean hit", "mean miss", "bytes");
  for (const inspect::MethodInfo& m : methods) {
    out << printf_string("  %-32s %10" PRIu64 " %10" PRIu64 " %10" PRIu64 " %7s %10s %10s %10s\n",
                         escape_bytes(m.name, 32).c_str(), m.requests, m.hits, m.misses,
                         percent(m.hits, m.hits + m.misses).c_str(),
                         mean_ms(m.hit_ns, m.hits).c_str(), mean_ms(m.miss_ns, m.misses).c_str(),
                         format_bytes(m.bytes).c_str());
  }
}

std::string tags_text(const inspect::EntryInfo& e) {
  std::string out;
  for (const inspect::TagInfo& t : e.tags) {
    if (!out.empty()) out += ' ';
    out += escape_bytes(t.name, 64) + "@" + std::to_string(t.gen_at_write);
    if (t.gen_now != t.gen_at_write) out += "(now " + std::to_string(t.gen_now) + ")";
  }
  return out.empty() ? "-" : out;
}

void print_entries(std::ostream& out, const inspect::Snapshot& snap, std::size_t width) {
  out << "\nentries   " << snap.entries.size() << " shown\n";
  if (snap.entries.empty()) return;
  std::size_t key_width = 3;
  for (const inspect::EntryInfo& e : snap.entries) {
    key_width = std::max(key_width, escape_bytes(e.key, 40).size());
  }
  std::size_t ns_width = 2;
  for (const inspect::EntryInfo& e : snap.entries) {
    if (e.has_namespace) ns_width = std::max(ns_width, escape_bytes(e.ns, 32).size());
  }
  out << printf_string("  %-*s  %-7s %10s %9s %6s  %-*s  %s\n", int(key_width), "key", "state",
                       "size", "ttl", "stripe", int(ns_width), "ns", "tags");
  const std::size_t value_width = width > 6 ? width - 6 : 20;
  for (const inspect::EntryInfo& e : snap.entries) {
    out << printf_string("  %-*s  %-7s %10s %9s %6u  %-*s  ", int(key_width),
                         escape_bytes(e.key, 40).c_str(), inspect::to_string(e.state),
                         format_bytes(e.size).c_str(), format_ttl(e.ttl_left_ms).c_str(), e.stripe,
                         int(ns_width), e.has_namespace ? escape_bytes(e.ns, 32).c_str() : "-")
        << tags_text(e);
    if (e.compressed) {
      out << "  compressed, " << format_bytes(e.stored_bytes) << " -> "
          << format_bytes(e.orig_bytes);
    }
    out << "\n      ";
    if (e.compressed && !e.decompressed) {
      const std::string mark = "[stored zstd frame, not decompressed] ";
      out << mark << value_line(e.value, value_width > mark.size() + 8 ? value_width - mark.size() : 8);
    } else {
      out << value_line(e.value, value_width);
    }
    out << "\n";
  }
}

}  // namespace

void print_dump(std::ostream& out, const inspect::Snapshot& snap, const DumpOptions& options) {
  print_header(out, snap.segment);
  print_stripe_summary(out, snap);
  if (options.all_stripes) print_stripe_table(out, snap);
  out << "\n";
  print_stats_lines(out, snap.stats);
  out << "\n";
  print_relay(out, snap.relay, "relay     ", "          ");
  print_methods(out, snap.methods);
  print_namespaces(out, snap.namespaces);
  print_entries(out, snap, options.width);
  if (!snap.problems.empty()) {
    out << "\nproblems  " << snap.problems.size() << "\n";
    for (const std::string& p : snap.problems) out << "  " << safe_text(p) << "\n";
  }
}

void print_violations(std::ostream& out, std::string_view name,
                      const std::vector<inspect::Violation>& violations) {
  if (violations.empty()) {
    out << name << ": ok\n";
    return;
  }
  out << name << ": " << violations.size() << " violation" << (violations.size() == 1 ? "" : "s")
      << "\n";
  for (const inspect::Violation& v : violations) {
    out << "  " << safe_text(v.where) << ": " << safe_text(v.what) << "\n";
  }
}

void print_stats_table(std::ostream& out, const inspect::Snapshot& snap,
                       const inspect::Snapshot* previous, double interval_s) {
  const inspect::SegmentInfo& seg = snap.segment;
  const Stats& s = snap.stats;
  out << "segment " << seg.name << "  capacity " << format_bytes(seg.capacity_bytes) << "  "
      << seg.stripes << " stripes  global generation " << seg.global_gen << "\n\n";
  auto row = [&](const char* name, std::uint64_t value, std::uint64_t Stats::*field) {
    out << printf_string("  %-12s %14" PRIu64, name, value);
    if (previous != nullptr && field != nullptr && interval_s > 0) {
      const std::uint64_t before = previous->stats.*field;
      out << printf_string("  %10.1f/s",
                           value >= before ? double(value - before) / interval_s : 0.0);
    }
    out << "\n";
  };
  row("gets", s.gets, &Stats::gets);
  row("hits", s.hits, &Stats::hits);
  row("misses", s.misses, &Stats::misses);
  out << printf_string("  %-12s %14s\n", "hit ratio", percent(s.hits, s.gets).c_str());
  row("sets", s.sets, &Stats::sets);
  row("erases", s.erases, &Stats::erases);
  row("evictions", s.evictions, &Stats::evictions);
  row("expired", s.expired, &Stats::expired);
  row("stale", s.stale, &Stats::stale);
  row("recoveries", s.recoveries, &Stats::recoveries);
  row("resets", s.resets, &Stats::resets);
  row("entries", s.entries, nullptr);
  out << printf_string(
      "  %-12s %14s  (%s of %s)\n", "bytes used", format_bytes(s.bytes_used).c_str(),
      percent(s.bytes_used, s.capacity_bytes).c_str(), format_bytes(s.capacity_bytes).c_str());
  out << printf_string("  %-12s %14s\n", "compressed", compressed_text(s).c_str());
  out << "\n";
  print_relay(out, snap.relay, "  relay      ", "             ");
  print_methods(out, snap.methods);
  for (const std::string& p : snap.problems) out << "  note: " << safe_text(p) << "\n";
}

namespace {

// Label values: made printable first (escape_bytes: no control byte, bidi
// control or invalid UTF-8 reaches a scraper or a terminal), then backslash,
// double quote and newline escaped (exposition format).
std::string label(std::string_view raw) {
  const std::string v = escape_bytes(raw);
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"')
      out += '\\', out += c;
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

}  // namespace

void print_prometheus(std::ostream& out, const inspect::Snapshot& snap) {
  const std::string seg = "segment=\"" + label(snap.segment.name) + "\"";
  const Stats& s = snap.stats;
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    out << "# HELP hostcache_" << name << " " << help << "\n# TYPE hostcache_" << name << " "
        << type << "\nhostcache_" << name << "{" << seg << "} " << printf_string("%.17g", value)
        << "\n";
  };
  metric("gets_total", "counter", "Lookups, hits plus misses.", double(s.gets));
  metric("hits_total", "counter", "Lookups that found a valid entry.", double(s.hits));
  metric("misses_total", "counter", "Lookups that found no valid entry.", double(s.misses));
  metric("sets_total", "counter", "Successful sets.", double(s.sets));
  metric("erases_total", "counter", "Erases that removed an entry.", double(s.erases));
  metric("evictions_total", "counter", "Live entries dropped to make room.", double(s.evictions));
  metric("expired_total", "counter", "Entries reclaimed after their TTL.", double(s.expired));
  metric("stale_total", "counter", "Entries reclaimed after clear or invalidate.", double(s.stale));
  metric("recoveries_total", "counter", "Stripes repaired after a holder died.",
         double(s.recoveries));
  metric("resets_total", "counter", "Stripes emptied because they could not be verified.",
         double(s.resets));
  metric("entries", "gauge", "Entries in the index.", double(s.entries));
  metric("bytes_used", "gauge", "Arena bytes held by entries not known dead.",
         double(s.bytes_used));
  metric("capacity_bytes", "gauge", "Size of the segment.", double(s.capacity_bytes));
  metric("global_generation", "gauge", "Clears since creation, plus one.",
         double(snap.segment.global_gen));
  metric("compressed_in_bytes_total", "counter",
         "Original bytes of the values stored compressed.", double(s.compressed_in));
  metric("compressed_out_bytes_total", "counter", "Bytes those values took compressed.",
         double(s.compressed_out));
  const inspect::RelayInfo& r = snap.relay;
  metric("outbox_head", "gauge", "Invalidation events appended to the outbox since creation.",
         double(r.head));
  metric("relay_running", "gauge", "1 when the relay process recorded in the segment exists.",
         r.alive ? 1.0 : 0.0);
  if (r.ever_ran) {
    metric("relay_connected", "gauge", "1 while the relay holds a working Redis connection.",
           r.connected ? 1.0 : 0.0);
    metric("relay_heartbeat_age_seconds", "gauge", "Time since the relay's last loop.",
           double(r.heartbeat_age_ms) / 1e3);
    metric("relay_outbox_pending", "gauge", "Outbox events the relay has not read (head - cursor).",
           double(r.pending));
    metric("relay_published_total", "counter", "Events the relay sent to the stream.",
           double(r.published));
    metric("relay_applied_total", "counter", "Remote events applied here.", double(r.applied));
    metric("relay_lag_events", "gauge", "Remote events seen but not yet applied.",
           double(r.lag_events));
    metric("relay_lag_seconds", "gauge", "Age of the newest remote event when applied.",
           double(r.lag_ms) / 1e3);
    out << "# HELP hostcache_relay_resyncs_total Relay resynchronisations, by cause.\n"
        << "# TYPE hostcache_relay_resyncs_total counter\n";
    for (const auto& [cause, n] : {std::pair<const char*, std::uint64_t>{"lost", r.resync_lost},
                                   {"trimmed", r.resync_trimmed},
                                   {"replay", r.resync_replay}}) {
      out << "hostcache_relay_resyncs_total{" << seg << ",cause=\"" << cause << "\"} " << n << "\n";
    }
    metric("relay_overflow_clears_total", "counter",
           "Outbox laps or stuck slots published as one global clear.", double(r.overflow_clears));
    metric("relay_stale_clears_total", "counter",
           "Local clears because Redis was unreachable past the stale bound.",
           double(r.stale_clears));
  }
  if (snap.methods.empty()) return;
  struct Field {
    const char* name;
    const char* type;
    const char* help;
    double (*get)(const inspect::MethodInfo&);
  };
  static const Field kFields[] = {
      {"method_requests_total", "counter", "Calls of a memoized method.",
       [](const inspect::MethodInfo& m) { return double(m.requests); }},
      {"method_hits_total", "counter", "Calls served from the cache.",
       [](const inspect::MethodInfo& m) { return double(m.hits); }},
      {"method_misses_total", "counter", "Calls that computed.",
       [](const inspect::MethodInfo& m) { return double(m.misses); }},
      {"method_hit_seconds_total", "counter", "Time spent in calls served from the cache.",
       [](const inspect::MethodInfo& m) { return double(m.hit_ns) / 1e9; }},
      {"method_miss_seconds_total", "counter", "Time spent in calls that computed.",
       [](const inspect::MethodInfo& m) { return double(m.miss_ns) / 1e9; }},
      {"method_bytes_total", "counter", "Bytes of values stored by the method.",
       [](const inspect::MethodInfo& m) { return double(m.bytes); }},
  };
  for (const Field& f : kFields) {
    out << "# HELP hostcache_" << f.name << " " << f.help << "\n# TYPE hostcache_" << f.name << " "
        << f.type << "\n";
    for (const inspect::MethodInfo& m : snap.methods) {
      out << "hostcache_" << f.name << "{" << seg << ",method=\"" << label(m.name) << "\"} "
          << printf_string("%.17g", f.get(m)) << "\n";
    }
  }
}

void print_listing(std::ostream& out, const std::vector<inspect::Listing>& segments) {
  out << printf_string("%-32s %12s %-20s %6s %10s\n", "name", "size", "owner", "mode", "processes");
  for (const inspect::Listing& l : segments) {
    out << printf_string(
        "%-32s %12s %-20s %6s %10s\n", l.name.c_str(), format_bytes(l.bytes).c_str(),
        user_of(l.owner_uid).c_str(), format_mode(l.mode).c_str(),
        l.attached_processes < 0 ? "?" : std::to_string(l.attached_processes).c_str());
  }
}

}  // namespace hostcache::tools
