// master.h — the prefork server's master process.
//
// The master opens the cache and clears it (hostcache::on_startup, the seed's
// INVALIDATE_ON_STARTUP), binds the port, forks the workers and then only
// watches them: it respawns a worker that dies, and on SIGTERM or SIGINT it
// stops accepting, lets the workers finish their in-flight requests, and
// returns 0. It never serves a request and starts no thread, so fork() is safe.
#pragma once

#include "options.h"

namespace prefork {

// Runs the server until SIGTERM or SIGINT; returns the exit status: 0 when
// every worker stopped cleanly, 1 when one had to be killed. Prints
// "listening on http://HOST:PORT ..." on stdout once the workers are started.
// Throws on a setup failure (the cache or the port).
int run_master(const ServerOptions& options);

}  // namespace prefork
