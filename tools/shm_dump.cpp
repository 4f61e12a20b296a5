// shm-dump — read-only inspection of a hostcache segment (docs/shm-dump.md).
//
// A thin main over inspect::read and inspect::check, like mdb_stat over
// mdb_reader_list: it maps the segment PROT_READ, takes no lock and writes
// nothing, so it is safe on a segment live workers are writing and on a
// corrupt one.
#include <hostcache/errors.h>
#include <hostcache/inspect.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "report.h"
#include "tool_common.h"
#include "value_json.h"

namespace {

constexpr const char* kTool = "shm-dump";

std::optional<hostcache::inspect::EntryState> parse_state(const std::string& s) {
  using hostcache::inspect::EntryState;
  if (s == "valid") return EntryState::valid;
  if (s == "stale") return EntryState::stale;
  if (s == "expired") return EntryState::expired;
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hostcache;
  CLI::App app{"Show a hostcache segment: header, stripes, statistics and entries (read-only)",
               kTool};
  app.footer(
      "Examples:\n"
      "  shm-dump web                          everything, values cut to the terminal\n"
      "  shm-dump web --prefix metadata_ --limit 20\n"
      "  shm-dump web --tag model:user --state stale --json | jq .entries\n"
      "  shm-dump web --namespace django --limit 0   the summary: namespaces, relay\n"
      "  shm-dump web --check                  exit 1 and list violations if unsound\n"
      "\nA segment owned by another user, or writable by every user, is refused unless\n"
      "--allow-foreign is given. Stripes larger than --max-stripe-bytes are not copied,\n"
      "and at most --max-read-bytes of stripes are copied in all: the header's geometry\n"
      "is not trusted to size what this tool allocates.\n"
      "\nExit status: 0 ok, 1 check failed, 2 usage, 3 segment missing or invalid,\n"
      "4 permission denied (by the OS, or a foreign segment without --allow-foreign).\n");
  std::string name, prefix, tag, state, ns, width_text, max_stripe_text, max_read_text;
  std::size_t limit = SIZE_MAX;
  bool json = false, check = false, all_stripes = false, allow_foreign = false;
  app.add_option("NAME", name, "segment name (/dev/shm/hostcache.NAME)")->required();
  app.add_option("--prefix", prefix, "only entries whose key starts with PREFIX");
  app.add_option("--tag", tag, "only entries carrying TAG");
  CLI::Option* ns_option =
      app.add_option("--namespace", ns, "only entries written under namespace NS ('' : none)");
  app.add_option("--state", state, "only entries in STATE")
      ->check(CLI::IsMember({"valid", "stale", "expired"}));
  app.add_option("--limit", limit, "show at most N entries (0: none)");
  app.add_option("--width", width_text,
                 "cut values to N columns (default: the terminal's, or 100)");
  app.add_flag("--stripes", all_stripes, "one line per stripe instead of a histogram");
  app.add_flag("--json", json, "print one JSON document instead of text");
  app.add_flag("--check", check, "run the full checker instead of dumping; exit 1 on a violation");
  app.add_flag("--allow-foreign", allow_foreign,
               "read a segment owned by another user or writable by every user (refused "
               "otherwise: its contents may be forged); a warning is printed");
  app.add_option("--max-stripe-bytes", max_stripe_text,
                 "skip stripes larger than SIZE instead of copying them (default 256M)");
  app.add_option("--max-read-bytes", max_read_text,
                 "copy at most SIZE of stripes in all, then skip the rest (default 4G)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? tools::kExitOk : tools::kExitUsage;
  }
  std::size_t width = tools::terminal_width();
  if (!width_text.empty()) {
    std::optional<std::uint64_t> w = tools::parse_size(width_text);
    if (!w || *w == 0 || *w > 100000) {
      std::cerr << kTool << ": --width wants a number of columns, not '" << width_text << "'\n";
      return tools::kExitUsage;
    }
    width = std::size_t(*w);
  }
  inspect::Options options;
  options.allow_foreign = allow_foreign;
  std::string why;
  if ((!max_stripe_text.empty() &&
       !tools::parse_limit("--max-stripe-bytes", max_stripe_text, options.max_stripe_bytes, why)) ||
      (!max_read_text.empty() &&
       !tools::parse_limit("--max-read-bytes", max_read_text, options.max_read_bytes, why))) {
    std::cerr << kTool << ": " << why << "\n";
    return tools::kExitUsage;
  }

  try {
    if (check) {
      const std::vector<inspect::Violation> violations = inspect::check(name, options);
      if (allow_foreign) tools::warn_if_foreign(kTool, name);
      if (json) {
        std::cout << tools::dump_json(tools::violations_json(name, violations), 2) << "\n";
      } else {
        tools::print_violations(std::cout, name, violations);
      }
      return violations.empty() ? tools::kExitOk : tools::kExitNotFound;
    }
    inspect::Filter filter;
    filter.prefix = prefix;
    filter.tag = tag;
    filter.state = parse_state(state);
    filter.limit = limit;
    if (ns_option->count() > 0) filter.ns = ns;
    filter.namespaces = true;  // the per-namespace summary walks every stripe
    const inspect::Snapshot snap = inspect::read(name, filter, options);
    if (allow_foreign) tools::warn_if_foreign(kTool, name);
    if (json) {
      std::cout << tools::dump_json(tools::snapshot_json(snap), 2) << "\n";
    } else {
      tools::print_dump(std::cout, snap, tools::DumpOptions{all_stripes, width});
    }
    std::cout.flush();
    return std::cout ? tools::kExitOk : tools::kExitSegment;
  } catch (const std::exception& e) {
    return tools::fail(kTool, name, e);
  }
}
