// commands.h — the subcommands of `hostcache`, one function each.
//
// Each is a thin layer over the public API: hostcache::Cache for what
// changes a segment, inspect:: for what only reads it. Each returns the exit
// code (tool_common.h) and reports errors on stderr naming the segment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hostcache::inspect {
struct Options;
}

namespace hostcache::tools {

// Every option any subcommand takes, already parsed by CLI11; each command
// reads only its own.
struct Options {
  std::string name;
  std::string key;
  std::string value;
  std::string file;
  std::vector<std::string> tags;
  std::string ttl;               // a duration ("30m") or "never"; empty: the segment's default
  std::string ns;                // --namespace
  bool has_ns = false;           // --namespace was given (an empty NS is then refused)
  std::string delta = "1";       // incr/decr
  bool ms = false;               // ttl: milliseconds instead of "29m59s"
  std::string capacity = "64M";  // create
  std::string max_key;           // create; empty: Config's default
  std::string max_value;         // create
  std::string mode = "0600";     // create
  unsigned stripes = 0;          // create; 0: automatic
  std::string watch;             // stats: refresh interval; empty: once
  std::uint64_t count = 0;       // stats --watch: refreshes; 0: until interrupted
  bool json = false;
  bool prometheus = false;
  bool raw = false;            // get: exact bytes, no newline
  bool allow_foreign = false;  // use a segment (or, for load, a file) of another uid or a wider mode
  std::string max_stripe_bytes;  // save: inspect::Options::max_stripe_bytes; empty: its default
  std::string max_read_bytes;    // save: inspect::Options::max_read_bytes; empty: its default
};

// The inspect::Options of these options, or false with a usage message in `why`.
bool inspect_options(const Options& o, hostcache::inspect::Options& out, std::string& why);

int cmd_stats(const Options& o);
int cmd_clear(const Options& o);
int cmd_invalidate(const Options& o);
int cmd_get(const Options& o);
int cmd_set(const Options& o);
int cmd_add(const Options& o);
int cmd_incr(const Options& o);
int cmd_decr(const Options& o);
int cmd_touch(const Options& o);
int cmd_ttl(const Options& o);
int cmd_erase(const Options& o);
int cmd_create(const Options& o);
int cmd_remove(const Options& o);
int cmd_list(const Options& o);
int cmd_save(const Options& o);
int cmd_load(const Options& o);

}  // namespace hostcache::tools
