// worker.h — one worker process of the prefork server: it serves HTTP on the
// listening socket it inherited from the master, until SIGTERM or SIGINT.
//
// A worker is one thread running one Boost.Asio io_context: it accepts
// connections, reads requests with Beast, and answers each one in turn with
// routes.h. A metadata miss computes synchronously, as a prefork worker does;
// the other workers keep serving meanwhile, and hostcache's single flight makes
// them wait for that computation rather than repeat it. (A connection the
// worker accepted just before a long computation waits for it too; the kernel
// gives new connections to whichever worker accepts first, so they go to the
// idle workers.)
//
// On SIGTERM or SIGINT it stops accepting, closes idle keep-alive connections,
// finishes the requests it has received (answering them with Connection:
// close), and returns 0.
#pragma once

#include <hostcache/cache.h>

#include <chrono>

#include "roster.h"

namespace prefork {

struct WorkerConfig {
  int listen_fd = -1;  // bound and listening; shared with the master and the other workers
  bool ipv6 = false;   // the socket's family
  unsigned slot = 0;   // this worker's row in the roster
  std::chrono::milliseconds extract_cost{50};
};

// Serves until told to stop; returns the process's exit status.
// REQUIRES: runs in a freshly forked child; SIGTERM and SIGINT blocked on entry
// (the master blocks them before fork so that none is lost before the worker
// can handle it; run_worker unblocks them once its handler is installed).
int run_worker(hostcache::Cache& cache, Roster& roster, const WorkerConfig& config);

}  // namespace prefork
