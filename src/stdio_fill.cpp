#include "stdio_fill.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace hostcache::stdio_fill {
namespace {

// Whether fd 0-2 may have a hole: fcntl fails on one. Any failure counts,
// not only EBADF: a sandbox answering EPERM for F_GETFD hid a real hole, and
// the segment went to fd 2 (test_attack_fork15, FcntlDenied...). The filler
// loop then settles it: a filler that lands above 2 proves there was none.
bool has_hole() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0) return true;
  }
  return false;
}

// One descriptor that takes no bytes, at the lowest free number; -1 if none
// can be had. Not close-on-exec: at 0-2 it is a standard stream.
int filler() {
  int fd = ::open("/dev/null", O_RDWR);
  if (fd >= 0) return fd;
  // Not / as O_PATH: a chrooted child inherited a way out to the real root
  // (test_attack_fork13, AChrootedChild...); not a pipe: two descriptors,
  // and closing the extra one at fd 2 closed another thread's dup2 there
  // (test_attack_fork13, ...Dup2d...); not an eventfd: it takes 8-byte writes.
  fd = ::memfd_create("hostcache-stdio", MFD_ALLOW_SEALING);
  if (fd >= 0) {
    ::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL);
    return fd;
  }
  return ::epoll_create1(0);
}

}  // namespace

bool fill_holes() {
  // Saved before the first probe, whose EBADF it was otherwise
  // (test_attack_fork15, FillHolesKeepsTheCallersErrno).
  const int saved = errno;
  if (!has_hole()) {  // the usual case
    errno = saved;
    return true;
  }
  bool ok = true;
  for (;;) {
    const int fd = filler();
    if (fd < 0) {
      ok = !has_hole();
      break;
    }
    if (fd > 2) {  // every hole filled (this one is nobody's yet)
      ::close(fd);
      break;
    }
  }
  errno = saved;
  return ok;
}

}  // namespace hostcache::stdio_fill
