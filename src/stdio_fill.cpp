#include "stdio_fill.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace hostcache::stdio_fill {
namespace {

bool has_hole() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) return true;
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
  if (!has_hole()) return true;  // the usual case
  const int saved = errno;
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
