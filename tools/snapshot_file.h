// snapshot_file.h — the file `hostcache save` writes and `hostcache load` reads.
//
// A snapshot holds the valid entries of a segment with their remaining TTLs
// and tags. Little-endian throughout:
//
//   offset  bytes  field
//   0       8      magic "HCSNAP\r\n" (the CR LF catches text-mode mangling)
//   8       4      format version (kSnapshotVersion)
//   12      4      reserved, 0
//   16      8      entry count
//   24      8      body bytes (the records that follow)
//   32      ...    records: u32 key_len, u32 value_len, i64 ttl_ms (> 0;
//                  INT64_MAX: never expires), u8 ntags, then ntags times
//                  (u8 len, tag bytes), [version 2: u8 ns_len, ns bytes
//                  (0: no namespace)], key, value
//
// Version 2 adds the namespace; version 1 files (no namespace) still load.
//   end-8   8      XXH3-64 of every byte before it
//
// decode verifies all of it (magic, version, lengths, checksum, every record
// in bounds, exactly `count` records filling exactly the body) before
// returning anything, so a truncated or corrupt file yields nothing at all.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hostcache::tools {

inline constexpr std::uint32_t kSnapshotVersion = 2;

struct SnapshotEntry {
  std::string key;
  std::string value;
  std::int64_t ttl_ms = 0;  // remaining when saved; > 0; INT64_MAX (kNoExpiry): never
  std::vector<std::string> tags;
  std::string ns;           // namespace, 1..kMaxNamespaceBytes bytes; empty: none
};

std::string encode_snapshot(const std::vector<SnapshotEntry>& entries);

// False, with the reason in `why`, unless `file` is a complete, intact
// snapshot; `out` is filled only on success.
bool decode_snapshot(std::string_view file, std::vector<SnapshotEntry>& out, std::string& why);

// Whole-file I/O. Both return false with errno's words in `why`.
bool read_file(const std::string& path, std::string& out, std::string& why);

// The checksum of a snapshot is not a MAC: anyone who can write the file can
// write a valid one. So `load` reads only a file this user controls:
// opened with O_NOFOLLOW (a symbolic link is refused) and O_NONBLOCK (a FIFO
// cannot hang the open), then checked on the opened descriptor (fstat, never
// the path): a regular file, owned by this effective uid, not writable by
// group or others. `allow_foreign` skips the owner, mode and link checks (a
// FIFO or device is refused still) and fills `warning` with what was
// overridden.
enum class FileVerdict {
  ok,
  unreadable,  // missing, unreadable, not a regular file: `why`
  refused,     // a link, another owner, or writable by others: `why`
};
FileVerdict read_trusted_file(const std::string& path, bool allow_foreign, std::string& out,
                              std::string& why, std::string& warning);

// Writes `bytes` to `path` so that a reader never sees half a snapshot and a
// name planted by another user is never followed: the data goes to a new
// file with a random name in the target's directory (openat on an O_DIRECTORY
// descriptor, O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600), is fsynced, and is
// renamed over `path` with renameat (which replaces a symlink at `path`
// rather than following it); the directory is fsynced last. On failure the
// temporary is removed.
bool write_file_atomically(const std::string& path, std::string_view bytes, std::string& why);

}  // namespace hostcache::tools
