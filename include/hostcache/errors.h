// hostcache/errors.h — error codes and the exception type.
//
// Policy (after CacheLib): what a caller can foresee (a key too large, a miss)
// is a value: `Errc`, `bool`, `std::optional`. A segment that cannot be trusted,
// or misuse (an invalid name, a capacity too small), throws `hostcache::Error`,
// whose message names the segment and the reason.
//
// Thread-safety: plain values; `Error` is an immutable exception object.
#pragma once

#include <stdexcept>
#include <string>

namespace hostcache {

enum class Errc {
  ok = 0,
  key_too_large,      // key longer than Config::max_key_bytes
  value_too_large,    // value longer than Config::max_value_bytes
  invalid_ttl,        // negative TTL
  too_many_tags,      // more than kMaxTags tags
  tag_too_large,      // a tag empty or longer than kMaxTagBytes
  invalid_name,       // segment name not [A-Za-z0-9._-]{1,200}
  invalid_config,     // a Config field out of range (mode, limits)
  capacity_too_small, // capacity cannot hold one stripe with one maximal entry
  not_found,          // attach: no segment of that name
  already_exists,     // create-only: the name is taken
  incompatible,       // another layout version or format stamp
  corrupt,            // the segment fails validation
  permission_denied,  // owner or mode refused, or the OS refused access
  io_error,           // any other OS failure (shm_open, ftruncate, mmap)
  empty_key,          // a key must have at least one byte
  busy,               // a stripe stayed locked by a live process past Config::lock_timeout
  not_integer,        // incr/decr: the value is not a decimal integer
  overflow,           // incr/decr: the result would not fit a signed 64-bit integer
  invalid_namespace,  // a namespace longer than kMaxNamespaceBytes
};

// A stable, lower_snake_case name for `e` ("key_too_large").
const char* to_string(Errc e) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message);
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

}  // namespace hostcache
