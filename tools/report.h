// report.h — how the tools show inspect:: results: text for people, JSON
// (nlohmann::json, never string concatenation) for programs, and the
// Prometheus text exposition format for scrapers.
//
// Pure functions of their arguments; safe from any thread.
#pragma once

#include <hostcache/inspect.h>

#include <nlohmann/json.hpp>
#include <ostream>
#include <string_view>
#include <vector>

namespace hostcache::tools {

// ---- shm-dump ----------------------------------------------------------------

struct DumpOptions {
  bool all_stripes = false;  // one line per stripe instead of a histogram
  std::size_t width = 100;   // terminal columns; values are cut to fit
};

void print_dump(std::ostream& out, const inspect::Snapshot& snap, const DumpOptions& options);
nlohmann::json snapshot_json(const inspect::Snapshot& snap);

void print_violations(std::ostream& out, std::string_view name,
                      const std::vector<inspect::Violation>& violations);
nlohmann::json violations_json(std::string_view name,
                               const std::vector<inspect::Violation>& violations);

// ---- hostcache stats / list ------------------------------------------------------

nlohmann::json segment_json(const inspect::SegmentInfo& s);
nlohmann::json stats_json(const Stats& s);
nlohmann::json methods_json(const std::vector<inspect::MethodInfo>& methods);
// {"ever_ran": false, ...} without a relay; its whole state otherwise.
nlohmann::json relay_json(const inspect::RelayInfo& relay);
nlohmann::json namespaces_json(const std::vector<inspect::NamespaceInfo>& namespaces);
nlohmann::json stats_document(const inspect::Snapshot& snap);  // `hostcache stats --json`

// `previous` (may be null) and `interval_s` give per-second rates (--watch).
void print_stats_table(std::ostream& out, const inspect::Snapshot& snap,
                       const inspect::Snapshot* previous, double interval_s);
void print_prometheus(std::ostream& out, const inspect::Snapshot& snap);

void print_listing(std::ostream& out, const std::vector<inspect::Listing>& segments);
nlohmann::json listing_json(const std::vector<inspect::Listing>& segments);

}  // namespace hostcache::tools
