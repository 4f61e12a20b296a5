// hostcache — operate a hostcache segment from the shell (docs/hostcache.md).
//
// Only argument parsing lives here; each subcommand is one function in
// commands.cpp over the public API.
#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.h"
#include "tool_common.h"

namespace {

using hostcache::tools::Options;

CLI::App* command(CLI::App& app, const char* name, const char* what, const char* example) {
  CLI::App* sub = app.add_subcommand(name, what);
  sub->footer(std::string("Example:\n  ") + example + "\n");
  return sub;
}

void add_name(CLI::App* sub, Options& o) {
  sub->add_option("NAME", o.name, "segment name (/dev/shm/hostcache.NAME)")->required();
}

void add_foreign(CLI::App* sub, Options& o) {
  sub->add_flag("--allow-foreign", o.allow_foreign,
                "use a segment owned by another user or writable by every user (refused "
                "otherwise: its contents may be forged); a warning is printed");
}

void add_namespace(CLI::App* sub, Options& o, const char* what) {
  sub->add_option_function<std::string>(
      "--namespace",
      [&o](const std::string& ns) {
        o.ns = ns;
        o.has_ns = true;
      },
      what)
      ->type_name("NS");
}

void add_write_options(CLI::App* sub, Options& o) {
  sub->add_option("--ttl", o.ttl,
                  "time to live: 500ms, 30s, 15m, 2h, or 'never' (default: the segment's)");
  sub->add_option("--tag", o.tags, "an invalidation tag; repeat for several (at most 4)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_namespace(sub, o,
                "store under namespace NS (1 to 64 bytes): 'hostcache clear NAME --namespace NS' "
                "drops it");
}

void add_limits(CLI::App* sub, Options& o) {
  sub->add_option("--max-stripe-bytes", o.max_stripe_bytes,
                  "skip stripes larger than SIZE instead of copying them (default 256M)");
  sub->add_option("--max-read-bytes", o.max_read_bytes,
                  "copy at most SIZE of stripes in all, then skip the rest (default 4G)");
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hostcache::tools;
  Options o;
  CLI::App app{"Operate hostcache shared-memory segments", "hostcache"};
  app.require_subcommand(1);
  app.footer(
      "Run 'hostcache COMMAND --help' for a command's options and an example.\n"
      "Exit status: 0 ok, 1 not found (or, for add, present), 2 usage, 3 segment missing or "
      "invalid, 4 permission denied, 5 not an integer (incr/decr), 6 overflow (incr/decr).\n");
  std::vector<std::pair<CLI::App*, int (*)(const Options&)>> commands;

  CLI::App* stats = command(app, "stats", "show counters summed over every process",
                            "hostcache stats web --watch 2 --count 10");
  add_name(stats, o);
  CLI::Option* json =
      stats->add_flag("--json", o.json, "one JSON document (one per line with --watch)");
  stats->add_flag("--prometheus", o.prometheus, "Prometheus text exposition format")
      ->excludes(json);
  CLI::Option* watch =
      stats->add_option("--watch", o.watch, "refresh every SECONDS (or 500ms, 1m) like top");
  stats->add_option("--count", o.count, "with --watch: stop after N refreshes")->needs(watch);
  add_foreign(stats, o);
  commands.emplace_back(stats, cmd_stats);

  CLI::App* clear = command(app, "clear",
                            "invalidate every entry, or those of one namespace (O(1), one increment)",
                            "hostcache clear web --namespace django");
  add_name(clear, o);
  add_namespace(clear, o, "invalidate only the entries written under namespace NS");
  add_foreign(clear, o);
  commands.emplace_back(clear, cmd_clear);

  CLI::App* invalidate = command(app, "invalidate", "invalidate the entries carrying any TAG",
                                 "hostcache invalidate web model:user model:group");
  add_name(invalidate, o);
  invalidate->add_option("TAG", o.tags, "tags to invalidate")->required();
  add_foreign(invalidate, o);
  commands.emplace_back(invalidate, cmd_invalidate);

  CLI::App* get = command(app, "get", "print the value of KEY (exit 1 if absent)",
                          "hostcache get web metadata_fields_shop_Order_u42 --raw > value.bin");
  add_name(get, o);
  get->add_option("KEY", o.key, "the key")->required();
  get->add_flag("--raw", o.raw,
                "write the exact bytes, without a newline (otherwise, on a terminal, "
                "unprintable bytes are escaped)");
  add_foreign(get, o);
  commands.emplace_back(get, cmd_get);

  CLI::App* set = command(app, "set", "store VALUE under KEY",
                          "hostcache set web greeting hello --ttl 15m --tag model:user");
  add_name(set, o);
  set->add_option("KEY", o.key, "the key")->required();
  set->add_option("VALUE", o.value, "the value (bytes as given)")->required();
  add_write_options(set, o);
  add_foreign(set, o);
  commands.emplace_back(set, cmd_set);

  CLI::App* add = command(app, "add",
                          "store VALUE under KEY only if KEY has no valid entry (exit 1 if it has)",
                          "hostcache add web lock:report 1 --ttl 5m");
  add_name(add, o);
  add->add_option("KEY", o.key, "the key")->required();
  add->add_option("VALUE", o.value, "the value (bytes as given)")->required();
  add_write_options(add, o);
  add_foreign(add, o);
  commands.emplace_back(add, cmd_add);

  const char* kDeltaHelp = "a decimal integer from 0 to 9223372036854775807 (default 1)";
  const char* kIncrFooter =
      "Exit status: 0 ok (the new value printed), 1 not found, 2 usage, 5 the value is not a "
      "decimal integer, 6 the result would overflow a signed 64-bit integer; in 5 and 6 the "
      "entry is unchanged.";
  CLI::App* incr = command(app, "incr", "add DELTA to the decimal integer under KEY; print it",
                           "hostcache incr web counter:visits 5");
  add_name(incr, o);
  incr->add_option("KEY", o.key, "the key")->required();
  incr->add_option("DELTA", o.delta, kDeltaHelp);
  add_foreign(incr, o);
  incr->footer(incr->get_footer() + "\n" + kIncrFooter + "\n");
  commands.emplace_back(incr, cmd_incr);

  CLI::App* decr = command(app, "decr", "subtract DELTA from the decimal integer under KEY; print it",
                           "hostcache decr web stock:item42");
  add_name(decr, o);
  decr->add_option("KEY", o.key, "the key")->required();
  decr->add_option("DELTA", o.delta, kDeltaHelp);
  add_foreign(decr, o);
  decr->footer(decr->get_footer() + "\n" + kIncrFooter + "\n");
  commands.emplace_back(decr, cmd_decr);

  CLI::App* touch = command(app, "touch", "give KEY a new TTL without rewriting it (exit 1 if absent)",
                            "hostcache touch web session:42 30m");
  add_name(touch, o);
  touch->add_option("KEY", o.key, "the key")->required();
  touch->add_option("TTL", o.ttl, "the new time to live: 500ms, 30s, 15m, 2h, or 'never'")
      ->required();
  add_foreign(touch, o);
  commands.emplace_back(touch, cmd_touch);

  CLI::App* ttl = command(app, "ttl",
                          "print the remaining TTL of KEY ('never' if it does not expire; exit 1 if "
                          "absent)",
                          "hostcache ttl web session:42 --ms");
  add_name(ttl, o);
  ttl->add_option("KEY", o.key, "the key")->required();
  ttl->add_flag("--ms", o.ms, "print milliseconds (an integer) instead of 29m59s");
  add_foreign(ttl, o);
  commands.emplace_back(ttl, cmd_ttl);

  CLI::App* erase =
      command(app, "erase", "remove KEY (exit 1 if absent)", "hostcache erase web greeting");
  add_name(erase, o);
  erase->add_option("KEY", o.key, "the key")->required();
  add_foreign(erase, o);
  commands.emplace_back(erase, cmd_erase);

  CLI::App* create = command(app, "create", "create a new segment (exit 1 if the name is taken)",
                             "hostcache create web --capacity 256M --mode 0660");
  add_name(create, o);
  create->add_option("--capacity", o.capacity, "whole segment size: 64M, 1G (default 64M)");
  create->add_option("--stripes", o.stripes, "lock stripes, a power of two (default: automatic)");
  create->add_option("--mode", o.mode, "octal permissions (default 0600)");
  create->add_option("--ttl", o.ttl, "default time to live (default 30m)");
  create->add_option("--max-key", o.max_key, "largest key (default 1K)");
  create->add_option("--max-value", o.max_value, "largest value (default 1M)");
  commands.emplace_back(create, cmd_create);

  CLI::App* remove = command(app, "remove", "unlink a segment (mappings stay valid until unmapped)",
                             "hostcache remove web");
  add_name(remove, o);
  commands.emplace_back(remove, cmd_remove);

  CLI::App* list = command(app, "list", "list the segments in /dev/shm", "hostcache list --json");
  list->add_flag("--json", o.json, "a JSON array");
  commands.emplace_back(list, cmd_list);

  CLI::App* save = command(app, "save", "write the valid entries, TTLs and tags to FILE",
                           "hostcache save web /var/backups/web.hcsnap");
  add_name(save, o);
  save->add_option("FILE", o.file, "snapshot file (written atomically)")->required();
  add_foreign(save, o);
  add_limits(save, o);
  commands.emplace_back(save, cmd_save);

  CLI::App* load = command(app, "load", "verify FILE whole, then store its entries",
                           "hostcache load web /var/backups/web.hcsnap");
  add_name(load, o);
  load->add_option("FILE", o.file,
                   "snapshot file written by 'hostcache save': a regular file (not a link) "
                   "owned by this user and not writable by group or others")
      ->required();
  load->add_flag("--allow-foreign", o.allow_foreign,
                 "load a FILE that is a link, owned by another user or writable by others, "
                 "and into a segment of another user (refused otherwise: the checksum is not a "
                 "signature, so its entries may be forged); a warning is printed");
  commands.emplace_back(load, cmd_load);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help (rc 0) or the error
    return rc == 0 ? kExitOk : kExitUsage;
  }
  for (const auto& [sub, run] : commands) {
    if (!sub->parsed()) continue;
    try {
      return run(o);
    } catch (const std::exception& e) {
      return fail("hostcache", o.name, e);
    }
  }
  return kExitUsage;
}
