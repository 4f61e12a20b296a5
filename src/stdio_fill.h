// stdio_fill.h — no descriptor the library opens is ever a standard stream.
#pragma once

namespace hostcache::stdio_fill {

// Fills every hole among fd 0-2 (a daemon that closed its stdio, a sandbox)
// with a descriptor that takes no bytes: /dev/null, else an empty sealed
// memfd, else an epoll instance (it needs no file system; reads and writes
// fail with EINVAL). Called before the library opens any descriptor: open(2)
// returns the lowest free one, and a segment or /proc file put at fd 2 took
// every message written to stderr (the segment's header overwritten:
// test_attack_fork11, test_attack_fork14 NoFiller...), and once closed, it
// closed whatever another thread had dup2'd onto 2 meanwhile (test_attack_
// fork14, ALogLine...Dup2d...). A filler is never closed while it is low
// (closing one could close such a dup2). Cheap when there is no hole (three
// fcntl calls). False if a hole is left: nothing at all could be opened.
bool fill_holes();

}  // namespace hostcache::stdio_fill
