// tool_common.h — what shm-dump and hostcache share: exit codes, argument
// parsing (sizes, durations, modes) and human formatting.
//
// The tools are thin mains over public functions (inspect.h, cache.h); this
// file holds only the glue they would otherwise each repeat. Everything here
// is a pure function, safe from any thread.
#pragma once

#include <hostcache/errors.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hostcache::tools {

// The exit codes both tools document (docs/shm-dump.md, docs/hostcache.md).
enum Exit : int {
  kExitOk = 0,
  kExitNotFound = 1,    // key not found, check failed, name already taken
  kExitUsage = 2,       // bad arguments, or a value the cache refuses (too large, bad TTL)
  kExitSegment = 3,     // segment missing, incompatible, corrupt, or an OS failure
  kExitPermission = 4,  // the OS or the segment's owner/mode refused access
  kExitNotInteger = 5,  // incr/decr: the stored value is not a decimal integer (unchanged)
  kExitOverflow = 6,    // incr/decr: the result would not fit a signed 64-bit integer (unchanged)
};

// The exit code for a hostcache::Error (or a refused set()) with code `e`.
int exit_code_for(Errc e) noexcept;

// Prints "TOOL: SEGMENT: WHAT" on stderr and returns exit_code_for(code), so a
// command can end with `return fail(...)`.
int fail(std::string_view tool, std::string_view segment, Errc code, std::string_view what);
// Same, for outcomes that are not a library error (a missing key, a bad file).
int fail_exit(std::string_view tool, std::string_view segment, int exit_code,
              std::string_view what);
// For an exception thrown by the library: the code and message of an Error,
// io_error for anything else. When the library refused a segment for its
// owner or mode, a second line says which check failed and how to override.
int fail(std::string_view tool, std::string_view segment, const std::exception& e);

// Why /dev/shm/hostcache.NAME is foreign to this user, in words ("owned by
// uid 65534 (nobody), not by uid 0 (root)", "writable by every user (mode
// 0666)"), or "" when it is not (or cannot be looked at).
std::string foreign_reason(std::string_view segment);
// After --allow-foreign: prints "TOOL: NAME: warning: ..." on stderr when the
// segment is foreign, and nothing otherwise.
void warn_if_foreign(std::string_view tool, std::string_view segment);

// "256M", "64K", "1G", "4096" (bytes; K/M/G are powers of 1024, an optional
// trailing B or iB is accepted). nullopt on anything else or on overflow.
std::optional<std::uint64_t> parse_size(std::string_view text);
// "500ms", "30s", "15m", "2h"; a bare number is seconds. nullopt when the text
// is not a non-negative duration or overflows.
std::optional<std::int64_t> parse_duration_ms(std::string_view text);
// An octal permission mode such as "0600" or "640", at most 0777.
std::optional<unsigned> parse_mode(std::string_view text);
// A size option such as --max-stripe-bytes: parse_size, and positive. The
// usage message, naming the option, in `why` otherwise.
bool parse_limit(std::string_view option, const std::string& text, std::uint64_t& out,
                 std::string& why);

// "1.5 MiB", "512 B".
std::string format_bytes(std::uint64_t bytes);
// "29m59s", "850ms", "2h03m", "expired" for <= 0, "never" for INT64_MAX
// (kNoExpiry's count).
std::string format_ttl(std::int64_t ms);
// "0600".
std::string format_mode(std::uint32_t mode);
// Local time "2024-05-01 12:00:00" of milliseconds since the epoch.
std::string format_unix_ms(std::uint64_t ms);

// True for the code points that must not reach a terminal as they are:
// C0 controls, DEL, C1 controls (U+0080-U+009F), the Unicode bidi controls
// (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), the line and
// paragraph separators U+2028 and U+2029, and surrogates.
bool unprintable(std::uint32_t code_point) noexcept;
// Decodes one strictly valid UTF-8 character (no overlongs, surrogates or
// values past U+10FFFF) at the start of `s`: its length, or 0 if invalid.
std::size_t utf8_char(std::string_view s, std::uint32_t& code_point) noexcept;

// Bytes made safe and unambiguous for a terminal: printable ASCII and
// printable UTF-8 characters as they are; `\\`, `\n`, `\t`, `\r`, `\"`;
// `\uXXXX` for a valid but unprintable character of several bytes (U+009B,
// U+202E); `\xNN` for every other byte (C0 controls, DEL, invalid UTF-8). Distinct inputs
// give distinct outputs. When the result would exceed `max_chars` bytes it is
// cut (never inside an escape or a character) and ends with "...".
std::string escape_bytes(std::string_view bytes, std::size_t max_chars = SIZE_MAX);
// A message that may hold bytes from outside (a library error, a problem
// found in a segment) made safe for a terminal: like escape_bytes, but the
// backslash and the double quote are kept as they are (the message is text,
// not a quoted value).
std::string safe_text(std::string_view text);

// Columns of the terminal on stdout (TIOCGWINSZ), or 100 when it is not one.
std::size_t terminal_width();

}  // namespace hostcache::tools
