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
//   32      ...    records: u32 key_len, u32 value_len, i64 ttl_ms (> 0),
//                  u8 ntags, then ntags times (u8 len, tag bytes), key, value
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

inline constexpr std::uint32_t kSnapshotVersion = 1;

struct SnapshotEntry {
  std::string key;
  std::string value;
  std::int64_t ttl_ms = 0;  // remaining when saved; > 0
  std::vector<std::string> tags;
};

std::string encode_snapshot(const std::vector<SnapshotEntry>& entries);

// False, with the reason in `why`, unless `file` is a complete, intact
// snapshot; `out` is filled only on success.
bool decode_snapshot(std::string_view file, std::vector<SnapshotEntry>& out, std::string& why);

// Whole-file I/O. write_file_atomically writes PATH.tmp.PID and renames it,
// so a reader never sees half a snapshot. Both return false with errno's
// words in `why`.
bool read_file(const std::string& path, std::string& out, std::string& why);
bool write_file_atomically(const std::string& path, std::string_view bytes, std::string& why);

}  // namespace hostcache::tools
