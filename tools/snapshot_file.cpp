#include "snapshot_file.h"

#include <fcntl.h>
#include <hostcache/config.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

namespace hostcache::tools {
namespace {

constexpr char kMagic[8] = {'H', 'C', 'S', 'N', 'A', 'P', '\r', '\n'};
constexpr std::size_t kFixedBytes = 32;  // magic .. body bytes
constexpr std::size_t kTrailerBytes = 8;

void put_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

// Reads little-endian fields from a bounded view; every read checks what is left.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : rest_(bytes) {}
  bool get(int bytes, std::uint64_t& v) {
    if (rest_.size() < std::size_t(bytes)) return false;
    v = 0;
    for (int i = 0; i < bytes; ++i)
      v |= std::uint64_t(static_cast<unsigned char>(rest_[i])) << (8 * i);
    rest_.remove_prefix(std::size_t(bytes));
    return true;
  }
  bool take(std::uint64_t n, std::string& out) {
    if (rest_.size() < n) return false;
    out.assign(rest_.data(), std::size_t(n));
    rest_.remove_prefix(std::size_t(n));
    return true;
  }
  bool empty() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace

std::string encode_snapshot(const std::vector<SnapshotEntry>& entries) {
  std::string body;
  for (const SnapshotEntry& e : entries) {
    put_le(body, e.key.size(), 4);
    put_le(body, e.value.size(), 4);
    put_le(body, std::uint64_t(e.ttl_ms), 8);
    put_le(body, e.tags.size(), 1);
    for (const std::string& t : e.tags) {
      put_le(body, t.size(), 1);
      body += t;
    }
    put_le(body, e.ns.size(), 1);
    body += e.ns;
    body += e.key;
    body += e.value;
  }
  std::string out(kMagic, sizeof kMagic);
  put_le(out, kSnapshotVersion, 4);
  put_le(out, 0, 4);
  put_le(out, entries.size(), 8);
  put_le(out, body.size(), 8);
  out += body;
  put_le(out, XXH3_64bits(out.data(), out.size()), 8);
  return out;
}

bool decode_snapshot(std::string_view file, std::vector<SnapshotEntry>& out, std::string& why) {
  if (file.size() < kFixedBytes + kTrailerBytes) {
    why = "too short to be a snapshot (" + std::to_string(file.size()) + " bytes)";
    return false;
  }
  if (std::memcmp(file.data(), kMagic, sizeof kMagic) != 0) {
    why = "not a hostcache snapshot (bad magic)";
    return false;
  }
  Reader head(file.substr(sizeof kMagic, kFixedBytes - sizeof kMagic));
  std::uint64_t version = 0, reserved = 0, count = 0, body_bytes = 0;
  head.get(4, version), head.get(4, reserved), head.get(8, count), head.get(8, body_bytes);
  if (version != 1 && version != kSnapshotVersion) {
    why = "snapshot format version " + std::to_string(version) + ", this tool reads 1 to " +
          std::to_string(kSnapshotVersion);
    return false;
  }
  if (body_bytes != file.size() - kFixedBytes - kTrailerBytes) {
    why = "truncated or extended: header says " + std::to_string(body_bytes) +
          " body bytes, file has " + std::to_string(file.size() - kFixedBytes - kTrailerBytes);
    return false;
  }
  std::uint64_t stored = 0;
  Reader trailer(file.substr(file.size() - kTrailerBytes));
  trailer.get(8, stored);
  if (stored != XXH3_64bits(file.data(), file.size() - kTrailerBytes)) {
    why = "checksum mismatch (the file is corrupt)";
    return false;
  }
  // The checksum only proves the file is what some writer wrote; the records
  // are still checked one by one, so a well-checksummed lie cannot overrun.
  Reader body(file.substr(kFixedBytes, body_bytes));
  std::vector<SnapshotEntry> entries;
  for (std::uint64_t i = 0; i < count; ++i) {
    SnapshotEntry e;
    std::uint64_t key_len = 0, value_len = 0, ttl = 0, ntags = 0;
    bool ok =
        body.get(4, key_len) && body.get(4, value_len) && body.get(8, ttl) && body.get(1, ntags);
    if (ok && (ntags > kMaxTags || std::int64_t(ttl) <= 0)) ok = false;
    for (std::uint64_t t = 0; ok && t < ntags; ++t) {
      std::uint64_t len = 0;
      std::string tag;
      ok = body.get(1, len) && len > 0 && body.take(len, tag);
      if (ok) e.tags.push_back(std::move(tag));
    }
    if (ok && version >= 2) {
      std::uint64_t ns_len = 0;
      ok = body.get(1, ns_len) && ns_len <= kMaxNamespaceBytes && body.take(ns_len, e.ns);
    }
    ok = ok && body.take(key_len, e.key) && body.take(value_len, e.value);
    if (!ok) {
      why = "record " + std::to_string(i) + " of " + std::to_string(count) + " is malformed";
      return false;
    }
    e.ttl_ms = std::int64_t(ttl);
    entries.push_back(std::move(e));
  }
  if (!body.empty()) {
    why = "bytes left after the last of " + std::to_string(count) + " records";
    return false;
  }
  out = std::move(entries);
  return true;
}

namespace {

// Reads everything from an open descriptor (closed here).
bool read_all(int fd, const std::string& path, std::string& out, std::string& why) {
  std::string data;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = path + ": " + std::strerror(errno);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    data.append(buf, std::size_t(n));
  }
  ::close(fd);
  out = std::move(data);
  return true;
}

std::string octal(unsigned mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

}  // namespace

bool read_file(const std::string& path, std::string& out, std::string& why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    why = path + ": " + std::strerror(errno);
    return false;
  }
  return read_all(fd, path, out, why);
}

FileVerdict read_trusted_file(const std::string& path, bool allow_foreign, std::string& out,
                              std::string& why, std::string& warning) {
  warning.clear();
  const int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (allow_foreign ? 0 : O_NOFOLLOW);
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    const int e = errno;
    if (e == ELOOP && !allow_foreign) {
      why = path + " is a symbolic link; refused, since whoever can change the link chooses what "
                   "is loaded (give the file itself, or pass --allow-foreign)";
      return FileVerdict::refused;
    }
    why = path + ": " + std::strerror(e);
    return FileVerdict::unreadable;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    why = path + ": fstat: " + std::strerror(errno);
    ::close(fd);
    return FileVerdict::unreadable;
  }
  if (!S_ISREG(st.st_mode)) {
    why = path + " is not a regular file";
    ::close(fd);
    return FileVerdict::unreadable;
  }
  std::string problem;
  if (st.st_uid != ::geteuid()) {
    problem = "is owned by uid " + std::to_string(st.st_uid) + ", not by uid " +
              std::to_string(::geteuid()) + " (this user)";
  } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    problem = "is writable by group or others (mode " + octal(st.st_mode) + ")";
  }
  if (!problem.empty()) {
    if (!allow_foreign) {
      why = path + " " + problem +
            "; refused: its checksum only detects damage, so whoever can write the file could "
            "have forged every entry (pass --allow-foreign to load it anyway)";
      ::close(fd);
      return FileVerdict::refused;
    }
    warning = path + " " + problem + "; loading it because of --allow-foreign";
  }
  // The descriptor was opened non-blocking only for the open; a regular
  // file reads the same either way.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return read_all(fd, path, out, why) ? FileVerdict::ok : FileVerdict::unreadable;
}

namespace {

// 16 random hex digits from the kernel (getrandom), for a temporary name
// nobody can guess in advance.
bool random_suffix(std::string& out) {
  unsigned char r[8];
  std::size_t got = 0;
  while (got < sizeof r) {
    const ssize_t n = ::getrandom(r + got, sizeof r - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got += std::size_t(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  out.clear();
  for (unsigned char c : r) out += kHex[c >> 4], out += kHex[c & 15];
  return true;
}

}  // namespace

bool write_file_atomically(const std::string& path, std::string_view bytes, std::string& why) {
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty() || base == "." || base == "..") {
    why = path + ": not a file name";
    return false;
  }
  const int dirfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd < 0) {
    why = dir + ": " + std::strerror(errno);
    return false;
  }
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    std::string suffix;
    if (!random_suffix(suffix)) {
      why = std::string("getrandom: ") + std::strerror(errno);
      ::close(dirfd);
      return false;
    }
    tmp = "." + base + ".tmp-" + suffix;
    fd = ::openat(dirfd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    why = dir + "/" + tmp + ": " + std::strerror(errno);
    ::close(dirfd);
    return false;
  }
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    done += std::size_t(n);
  }
  bool ok = done == bytes.size() && ::fsync(fd) == 0;
  int saved = errno;
  ok = (::close(fd) == 0) && ok;
  if (ok && ::renameat(dirfd, tmp.c_str(), dirfd, base.c_str()) != 0) ok = false, saved = errno;
  if (!ok) {
    why = path + ": " + std::strerror(saved);
    ::unlinkat(dirfd, tmp.c_str(), 0);
  } else {
    ::fsync(dirfd);  // the rename itself survives a crash
  }
  ::close(dirfd);
  return ok;
}

}  // namespace hostcache::tools
