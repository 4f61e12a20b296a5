#include "commands.h"

#include <hostcache/cache.h>
#include <hostcache/inspect.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <limits>
#include <optional>
#include <thread>

#include "report.h"
#include "snapshot_file.h"
#include "tool_common.h"
#include "value_json.h"

namespace hostcache::tools {
namespace {

constexpr const char* kTool = "hostcache";

std::string shown(std::string_view key) { return "'" + escape_bytes(key, 80) + "'"; }

// Why the cache refused a set, in the user's terms.
std::string refusal(Errc e, const Cache& cache) {
  switch (e) {
    case Errc::key_too_large:
      return "key longer than this segment's " + std::to_string(cache.max_key_bytes()) + " bytes";
    case Errc::empty_key:
      return "a key must have at least one byte";
    case Errc::value_too_large:
      return "value longer than this segment's " + std::to_string(cache.max_value_bytes()) +
             " bytes";
    case Errc::invalid_ttl:
      return "TTL must be positive";
    case Errc::too_many_tags:
      return "at most " + std::to_string(kMaxTags) + " tags per entry";
    case Errc::tag_too_large:
      return "a tag must be 1 to " + std::to_string(kMaxTagBytes) + " bytes";
    case Errc::invalid_namespace:
      return "a namespace must be 1 to " + std::to_string(kMaxNamespaceBytes) + " bytes";
    case Errc::already_exists:
      return "the key already has a valid entry; unchanged";
    case Errc::not_found:
      return "no valid entry";
    case Errc::not_integer:
      return "the stored value is not a decimal integer; unchanged";
    case Errc::overflow:
      return "the result would not fit a signed 64-bit integer; unchanged";
    case Errc::busy:
      return "a live process held the stripe's lock past the timeout; nothing changed";
    default:
      return std::string("refused: ") + to_string(e);
  }
}

// Checks a tag list before anything is written, so a bad tag changes nothing.
std::optional<std::string> bad_tags(const std::vector<std::string>& tags) {
  if (tags.size() > kMaxTags) return "at most " + std::to_string(kMaxTags) + " tags per entry";
  for (const std::string& t : tags) {
    if (t.empty() || t.size() > kMaxTagBytes) {
      return "tag " + shown(t) + " must be 1 to " + std::to_string(kMaxTagBytes) + " bytes";
    }
  }
  return std::nullopt;
}

// Cache::attach, with the warning --allow-foreign owes the user.
Cache attach(const Options& o) {
  Cache cache = Cache::attach(o.name, o.allow_foreign);
  if (o.allow_foreign) warn_if_foreign(kTool, o.name);
  return cache;
}

// A TTL as the commands take it: a positive duration, or "never"
// (kNoExpiry) when `never_ok`. nullopt for anything else: 0, a negative
// duration, a word.
std::optional<std::int64_t> parse_ttl(const std::string& text, bool never_ok) {
  if (never_ok && text == "never") return kNoExpiry.count();
  std::optional<std::int64_t> ms = parse_duration_ms(text);
  if (!ms || *ms <= 0) return std::nullopt;
  return ms;
}

// A positive TTL (or "never") from --ttl, or 0 (the segment's default) when absent.
std::optional<std::int64_t> ttl_of(const Options& o, bool never_ok = true) {
  if (o.ttl.empty()) return 0;
  return parse_ttl(o.ttl, never_ok);
}

constexpr const char* kTtlUsage = "wants a positive duration (500ms, 30s, 15m, 2h) or 'never'";

// Checks --namespace before anything is written.
std::optional<std::string> bad_namespace(const Options& o) {
  if (!o.has_ns) return std::nullopt;
  if (o.ns.empty() || o.ns.size() > kMaxNamespaceBytes) {
    return "namespace " + shown(o.ns) + " must be 1 to " + std::to_string(kMaxNamespaceBytes) +
           " bytes";
  }
  return std::nullopt;
}

// The SetOptions of set/add, or an exit code (after the message) in `rc`.
std::optional<SetOptions> set_options(const Options& o, int& rc) {
  const std::optional<std::int64_t> ttl = ttl_of(o);
  if (!ttl) {
    rc = fail(kTool, o.name, Errc::invalid_ttl, "--ttl " + std::string(kTtlUsage) + ", not " + shown(o.ttl));
    return std::nullopt;
  }
  if (std::optional<std::string> why = bad_tags(o.tags)) {
    rc = fail(kTool, o.name, Errc::tag_too_large, *why);
    return std::nullopt;
  }
  if (std::optional<std::string> why = bad_namespace(o)) {
    rc = fail(kTool, o.name, Errc::invalid_namespace, *why);
    return std::nullopt;
  }
  SetOptions options;
  options.ttl = std::chrono::milliseconds(*ttl);
  options.tags.assign(o.tags.begin(), o.tags.end());
  if (o.has_ns) options.ns = o.ns;
  return options;
}

// DELTA of incr/decr: a decimal integer 0..INT64_MAX.
std::optional<std::int64_t> parse_delta(const std::string& text) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  std::int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, c - '0', &v)) {
      return std::nullopt;
    }
  }
  return v;
}

int incr_or_decr(const Options& o, bool up) {
  const char* verb = up ? "incr" : "decr";
  const std::optional<std::int64_t> delta = parse_delta(o.delta);
  if (!delta) {
    return fail_exit(kTool, o.name, kExitUsage,
                     std::string(verb) + ": DELTA wants a decimal integer from 0 to " +
                         std::to_string(std::numeric_limits<std::int64_t>::max()) + ", not " +
                         shown(o.delta));
  }
  Cache cache = attach(o);
  std::int64_t result = 0;
  const Errc e = up ? cache.incr(o.key, *delta, result) : cache.decr(o.key, *delta, result);
  switch (e) {
    case Errc::ok:
      std::cout << result << "\n";
      return kExitOk;
    case Errc::not_found:
      return fail_exit(kTool, o.name, kExitNotFound, "key " + shown(o.key) + " not found");
    default:
      return fail(kTool, o.name, e, std::string(verb) + " " + shown(o.key) + ": " + refusal(e, cache));
  }
}

}  // namespace

bool inspect_options(const Options& o, inspect::Options& out, std::string& why) {
  out.allow_foreign = o.allow_foreign;
  if (!o.max_stripe_bytes.empty() &&
      !parse_limit("--max-stripe-bytes", o.max_stripe_bytes, out.max_stripe_bytes, why)) {
    return false;
  }
  if (!o.max_read_bytes.empty() &&
      !parse_limit("--max-read-bytes", o.max_read_bytes, out.max_read_bytes, why)) {
    return false;
  }
  return true;
}

int cmd_stats(const Options& o) {
  std::optional<std::int64_t> interval_ms;
  if (!o.watch.empty()) {
    interval_ms = parse_duration_ms(o.watch);
    if (!interval_ms || *interval_ms <= 0) {
      return fail_exit(kTool, o.name, kExitUsage, "--watch wants a positive duration (2, 500ms)");
    }
  }
  inspect::Filter headers_only;
  headers_only.limit = 0;  // counters only: no entry is copied
  inspect::Options options;
  options.allow_foreign = o.allow_foreign;
  const bool clear_screen = interval_ms && !o.json && !o.prometheus && ::isatty(STDOUT_FILENO);
  std::optional<inspect::Snapshot> previous;
  for (std::uint64_t n = 0;; ++n) {
    inspect::Snapshot snap = inspect::read(o.name, headers_only, options);
    if (n == 0 && o.allow_foreign) warn_if_foreign(kTool, o.name);
    if (o.json) {
      // Watching prints one document per line (JSON Lines), so a consumer can
      // parse each refresh as it comes.
      std::cout << dump_json(stats_document(snap), interval_ms ? -1 : 2) << "\n";
    } else if (o.prometheus) {
      if (n > 0) std::cout << "\n";
      print_prometheus(std::cout, snap);
    } else {
      if (clear_screen) std::cout << "\x1b[H\x1b[2J";
      const double seconds = interval_ms ? double(*interval_ms) / 1000.0 : 0.0;
      print_stats_table(std::cout, snap, previous ? &*previous : nullptr, seconds);
    }
    std::cout.flush();
    if (!interval_ms || (o.count != 0 && n + 1 >= o.count)) break;
    previous = std::move(snap);
    std::this_thread::sleep_for(std::chrono::milliseconds(*interval_ms));  // the refresh period
  }
  return kExitOk;
}

int cmd_clear(const Options& o) {
  if (std::optional<std::string> why = bad_namespace(o)) {
    return fail(kTool, o.name, Errc::invalid_namespace, *why);
  }
  Cache cache = attach(o);
  if (o.has_ns) {
    cache.clear(o.ns);
    std::cout << "cleared namespace " << shown(o.ns) << " in " << o.name << "\n";
    return kExitOk;
  }
  cache.clear();
  std::cout << "cleared " << o.name << "\n";
  return kExitOk;
}

int cmd_invalidate(const Options& o) {
  for (const std::string& t : o.tags) {
    if (t.empty() || t.size() > kMaxTagBytes) {
      return fail(kTool, o.name, Errc::tag_too_large,
                  "tag " + shown(t) + " must be 1 to " + std::to_string(kMaxTagBytes) + " bytes");
    }
  }
  Cache cache = attach(o);
  for (const std::string& t : o.tags) cache.invalidate(t);
  std::cout << "invalidated " << o.tags.size() << " tag" << (o.tags.size() == 1 ? "" : "s")
            << " in " << o.name << "\n";
  return kExitOk;
}

int cmd_get(const Options& o) {
  Cache cache = attach(o);
  std::string value;
  if (!cache.get(o.key, value)) {
    return fail_exit(kTool, o.name, kExitNotFound, "key " + shown(o.key) + " not found");
  }
  if (!o.raw && ::isatty(STDOUT_FILENO)) {
    // A person is reading: the value's control bytes must not drive the
    // terminal. Escaped as shm-dump shows it; --raw (or a pipe) gets the bytes.
    std::cout << escape_bytes(value) << "\n";
  } else {
    std::cout << value;
    if (!o.raw) std::cout << "\n";
  }
  std::cout.flush();
  return std::cout ? kExitOk : kExitSegment;
}

int cmd_set(const Options& o) {
  int rc = kExitOk;
  const std::optional<SetOptions> options = set_options(o, rc);
  if (!options) return rc;
  Cache cache = attach(o);
  const Errc e = cache.set(o.key, o.value, *options);
  if (e != Errc::ok)
    return fail(kTool, o.name, e, "set " + shown(o.key) + ": " + refusal(e, cache));
  return kExitOk;
}

int cmd_add(const Options& o) {
  int rc = kExitOk;
  const std::optional<SetOptions> options = set_options(o, rc);
  if (!options) return rc;
  Cache cache = attach(o);
  const Errc e = cache.add(o.key, o.value, *options);
  if (e == Errc::already_exists) {
    return fail_exit(kTool, o.name, kExitNotFound,
                     "add " + shown(o.key) + ": " + refusal(e, cache));
  }
  if (e != Errc::ok)
    return fail(kTool, o.name, e, "add " + shown(o.key) + ": " + refusal(e, cache));
  return kExitOk;
}

int cmd_incr(const Options& o) { return incr_or_decr(o, true); }
int cmd_decr(const Options& o) { return incr_or_decr(o, false); }

int cmd_touch(const Options& o) {
  const std::optional<std::int64_t> ttl = parse_ttl(o.ttl, true);
  if (!ttl) {
    return fail(kTool, o.name, Errc::invalid_ttl,
                "touch: TTL " + std::string(kTtlUsage) + ", not " + shown(o.ttl));
  }
  Cache cache = attach(o);
  if (!cache.touch(o.key, std::chrono::milliseconds(*ttl))) {
    return fail_exit(kTool, o.name, kExitNotFound, "key " + shown(o.key) + " not found");
  }
  return kExitOk;
}

int cmd_ttl(const Options& o) {
  Cache cache = attach(o);
  const std::optional<std::chrono::milliseconds> left = cache.ttl(o.key);
  if (!left) return fail_exit(kTool, o.name, kExitNotFound, "key " + shown(o.key) + " not found");
  if (*left == kNoExpiry) {
    std::cout << "never\n";
  } else if (o.ms) {
    std::cout << left->count() << "\n";
  } else {
    std::cout << format_ttl(left->count()) << "\n";
  }
  return kExitOk;
}

int cmd_erase(const Options& o) {
  Cache cache = attach(o);
  if (!cache.erase(o.key)) {
    return fail_exit(kTool, o.name, kExitNotFound, "key " + shown(o.key) + " not found");
  }
  return kExitOk;
}

int cmd_create(const Options& o) {
  Config config;
  config.name = o.name;
  auto usage = [&](const std::string& what) { return fail_exit(kTool, o.name, kExitUsage, what); };
  std::optional<std::uint64_t> capacity = parse_size(o.capacity);
  if (!capacity) return usage("--capacity wants a size such as 256M, not '" + o.capacity + "'");
  config.capacity_bytes = *capacity;
  config.stripes = o.stripes;
  std::optional<unsigned> mode = parse_mode(o.mode);
  if (!mode) return usage("--mode wants octal permissions such as 0600, not '" + o.mode + "'");
  config.mode = *mode;
  if (!o.ttl.empty()) {
    std::optional<std::int64_t> ttl = ttl_of(o, false);
    if (!ttl) return usage("--ttl wants a positive duration such as 30m, not '" + o.ttl + "'");
    config.default_ttl = std::chrono::milliseconds(*ttl);
  }
  if (!o.max_key.empty()) {
    std::optional<std::uint64_t> v = parse_size(o.max_key);
    if (!v) return usage("--max-key wants a size, not '" + o.max_key + "'");
    config.max_key_bytes = *v;
  }
  if (!o.max_value.empty()) {
    std::optional<std::uint64_t> v = parse_size(o.max_value);
    if (!v) return usage("--max-value wants a size, not '" + o.max_value + "'");
    config.max_value_bytes = *v;
  }
  // Cache::open attaches when the name exists; `create` promises a new
  // segment, so it refuses a taken name first (a racing creator can still
  // win in between: then this attaches, which is harmless).
  struct stat st;
  if (::lstat(("/dev/shm/hostcache." + o.name).c_str(), &st) == 0) {
    return fail(kTool, o.name, Errc::already_exists, "a segment of this name already exists");
  }
  Cache cache = Cache::open(config);
  std::cout << "created " << o.name << ": " << format_bytes(config.capacity_bytes) << ", mode "
            << format_mode(config.mode) << ", default TTL "
            << format_ttl(cache.default_ttl().count()) << "\n";
  return kExitOk;
}

int cmd_remove(const Options& o) {
  if (!Cache::remove(o.name)) return fail(kTool, o.name, Errc::not_found, "no such segment");
  std::cout << "removed " << o.name << "\n";
  return kExitOk;
}

int cmd_list(const Options& o) {
  const std::vector<inspect::Listing> segments = inspect::list();
  if (o.json) {
    std::cout << dump_json(listing_json(segments), 2) << "\n";
  } else {
    print_listing(std::cout, segments);
  }
  return kExitOk;
}

int cmd_save(const Options& o) {
  inspect::Filter valid_only;
  valid_only.state = inspect::EntryState::valid;
  inspect::Options options;
  std::string usage;
  if (!inspect_options(o, options, usage)) return fail_exit(kTool, o.name, kExitUsage, usage);
  const inspect::Snapshot snap = inspect::read(o.name, valid_only, options);
  if (o.allow_foreign) warn_if_foreign(kTool, o.name);
  std::vector<SnapshotEntry> entries;
  for (const inspect::EntryInfo& e : snap.entries) {
    if (e.ttl_left_ms <= 0) continue;
    if (e.compressed && !e.decompressed) continue;  // reported in problems
    SnapshotEntry s{e.key, e.value, e.no_expiry ? kNoExpiry.count() : e.ttl_left_ms, {}, e.ns};
    for (const inspect::TagInfo& t : e.tags) s.tags.push_back(t.name);
    entries.push_back(std::move(s));
  }
  for (const std::string& p : snap.problems) {
    std::cerr << kTool << ": " << o.name << ": warning, not saved: " << safe_text(p) << "\n";
  }
  std::string why;
  if (!write_file_atomically(o.file, encode_snapshot(entries), why)) {
    return fail_exit(kTool, o.name, kExitNotFound, "cannot write snapshot: " + safe_text(why));
  }
  std::cout << "saved " << entries.size() << " entries of " << o.name << " to "
            << safe_text(o.file) << "\n";
  return kExitOk;
}

int cmd_load(const Options& o) {
  std::string bytes, why, warning;
  std::vector<SnapshotEntry> entries;
  switch (read_trusted_file(o.file, o.allow_foreign, bytes, why, warning)) {
    case FileVerdict::ok:
      break;
    case FileVerdict::refused:
      return fail_exit(kTool, o.name, kExitPermission,
                       "snapshot refused, nothing loaded: " + safe_text(why));
    case FileVerdict::unreadable:
      return fail_exit(kTool, o.name, kExitNotFound, "cannot read snapshot: " + safe_text(why));
  }
  if (!warning.empty()) std::cerr << kTool << ": " << o.name << ": warning: " << safe_text(warning) << "\n";
  if (!decode_snapshot(bytes, entries, why)) {
    return fail_exit(kTool, o.name, kExitNotFound,
                     safe_text(o.file) + ": refused, nothing loaded: " + why);
  }
  Cache cache = attach(o);
  // Everything the cache could refuse is checked before the first set, so a
  // snapshot from a segment with larger limits loads nothing rather than part.
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const SnapshotEntry& e = entries[i];
    Errc refused = Errc::ok;
    if (e.key.empty())
      refused = Errc::empty_key;
    else if (e.key.size() > cache.max_key_bytes())
      refused = Errc::key_too_large;
    else if (e.value.size() > cache.max_value_bytes())
      refused = Errc::value_too_large;
    else if (bad_tags(e.tags))
      refused = Errc::tag_too_large;
    else if (e.ns.size() > kMaxNamespaceBytes)
      refused = Errc::invalid_namespace;
    if (refused != Errc::ok) {
      return fail(kTool, o.name, refused,
                  safe_text(o.file) + ": refused, nothing loaded: entry " + std::to_string(i) + " (key " +
                      shown(e.key) + "): " + refusal(refused, cache));
    }
  }
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const SnapshotEntry& e = entries[i];
    SetOptions options;
    options.ttl = std::chrono::milliseconds(e.ttl_ms);
    options.tags.assign(e.tags.begin(), e.tags.end());
    options.ns = e.ns;
    const Errc err = cache.set(e.key, e.value, options);
    if (err != Errc::ok) {
      return fail(kTool, o.name, err,
                  "loaded " + std::to_string(i) + " of " + std::to_string(entries.size()) +
                      " entries; key " + shown(e.key) + ": " + refusal(err, cache));
    }
  }
  std::cout << "loaded " << entries.size() << " entries into " << o.name << "\n";
  return kExitOk;
}

}  // namespace hostcache::tools
