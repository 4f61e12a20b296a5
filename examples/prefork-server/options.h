// options.h — what the prefork server's command line sets (main.cpp parses it).
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace prefork {

struct ServerOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 8080;              // 0: the kernel picks a free port; it is printed
  unsigned workers = 0;                    // 0: one per core
  std::string segment = "prefork-server";  // /dev/shm/hostcache.{segment}
  std::size_t capacity_mb = 64;
  std::chrono::milliseconds extract_cost{50};  // CPU time of one full metadata extraction
  bool cache = true;               // false: every request extracts (the seed's ENABLED = False)
  std::chrono::seconds grace{10};  // after SIGTERM, how long workers may finish before SIGKILL
  bool unlink_on_exit = false;     // remove the segment's name when the server stops
};

}  // namespace prefork
