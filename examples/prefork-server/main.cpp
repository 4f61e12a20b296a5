// prefork-server — an HTTP/1.1 server whose worker processes share one
// hostcache segment: the example to copy when putting hostcache into a
// prefork server.
//
//   prefork-server --port 0 --workers 4
//   curl 'http://127.0.0.1:PORT/metadata/shop/product?user=alice'
//
// master.cpp is the process lifecycle, worker.cpp the HTTP serving, routes.cpp
// the endpoints and metadata.cpp the memoized "expensive" extraction.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "master.h"
#include "options.h"
#include "roster.h"

int main(int argc, char** argv) {
  prefork::ServerOptions o;
  CLI::App app{
      "An HTTP server whose forked worker processes share one hostcache segment.\n"
      "Endpoints: GET /metadata/{app}/{model}?user=U, POST /schema-changed/{app}/{model},\n"
      "POST /clear, GET /stats. SIGTERM or SIGINT stops it gracefully (exit 0)."};
  app.option_defaults()->always_capture_default();
  app.add_option("--host", o.host, "Address to listen on");
  app.add_option("-p,--port", o.port, "TCP port; 0 picks a free one (printed at start)");
  app.add_option("-w,--workers", o.workers, "Worker processes; 0: one per core")
      ->check(CLI::Range(0u, prefork::kMaxWorkers));
  app.add_option("--segment", o.segment, "Cache segment name (/dev/shm/hostcache.NAME)");
  app.add_option("--capacity-mb", o.capacity_mb, "Segment size in MiB, fixed for its life")
      ->check(CLI::Range(std::size_t(1), std::size_t(1) << 20));
  int extract_ms = int(o.extract_cost.count());
  app.add_option("--extract-ms", extract_ms, "CPU time of one metadata extraction (ms)")
      ->check(CLI::Range(0, 600000));
  std::string cache = "on";
  app.add_option("--cache", cache, "on: memoize in the shared cache; off: extract every time")
      ->check(CLI::IsMember({"on", "off"}));
  int grace_s = int(o.grace.count());
  app.add_option("--grace-s", grace_s, "After SIGTERM, seconds before busy workers are killed")
      ->check(CLI::Range(1, 3600));
  app.add_flag("--unlink-on-exit", o.unlink_on_exit,
               "Remove the segment's name when the server stops (demos and tests)");
  CLI11_PARSE(app, argc, argv);

  o.extract_cost = std::chrono::milliseconds(extract_ms);
  o.cache = cache == "on";
  o.grace = std::chrono::seconds(grace_s);
  if (o.workers == 0) o.workers = std::max(1u, std::thread::hardware_concurrency());
  try {
    return prefork::run_master(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prefork-server: %s\n", e.what());
    return 1;
  }
}
