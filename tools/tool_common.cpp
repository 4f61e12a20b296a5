#include "tool_common.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <limits>

namespace hostcache::tools {

int exit_code_for(Errc e) noexcept {
  switch (e) {
    case Errc::ok:
      return kExitOk;
    case Errc::key_too_large:
    case Errc::empty_key:
    case Errc::value_too_large:
    case Errc::invalid_ttl:
    case Errc::too_many_tags:
    case Errc::tag_too_large:
    case Errc::invalid_name:
    case Errc::invalid_config:
    case Errc::capacity_too_small:
      return kExitUsage;  // the caller's arguments were refused
    case Errc::already_exists:
      return kExitNotFound;  // a lookup (is the name free?) that failed, like a missing key
    case Errc::permission_denied:
      return kExitPermission;
    case Errc::not_found:
    case Errc::incompatible:
    case Errc::corrupt:
    case Errc::io_error:
      return kExitSegment;
  }
  return kExitSegment;
}

int fail(std::string_view tool, std::string_view segment, Errc code, std::string_view what) {
  std::cerr << tool << ": ";
  if (!segment.empty()) std::cerr << segment << ": ";
  std::cerr << what << " (" << to_string(code) << ")\n";
  return exit_code_for(code);
}

int fail_exit(std::string_view tool, std::string_view segment, int exit_code,
              std::string_view what) {
  std::cerr << tool << ": ";
  if (!segment.empty()) std::cerr << segment << ": ";
  std::cerr << what << "\n";
  return exit_code;
}

int fail(std::string_view tool, std::string_view segment, const std::exception& e) {
  // The library's messages already say "segment 'NAME': why"; name it only
  // when the message does not.
  std::string_view what = e.what();
  std::string_view named = what.find(segment) == std::string_view::npos ? segment : "";
  if (const auto* err = dynamic_cast<const Error*>(&e)) return fail(tool, named, err->code(), what);
  return fail(tool, named, Errc::io_error, what);
}

namespace {

// Splits "256M" into 256 and "M"; false when there are no digits.
bool split_number(std::string_view text, std::uint64_t& number, std::string_view& suffix) {
  std::size_t i = 0;
  number = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    std::uint64_t digit = std::uint64_t(text[i] - '0');
    if (number > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
    number = number * 10 + digit;
    ++i;
  }
  suffix = text.substr(i);
  return i > 0;
}

bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

}  // namespace

std::optional<std::uint64_t> parse_size(std::string_view text) {
  std::uint64_t n = 0;
  std::string_view suffix;
  if (!split_number(text, n, suffix)) return std::nullopt;
  std::uint64_t unit = 1;
  if (!suffix.empty()) {
    char c = suffix[0];
    if (c == 'k' || c == 'K')
      unit = 1ull << 10;
    else if (c == 'm' || c == 'M')
      unit = 1ull << 20;
    else if (c == 'g' || c == 'G')
      unit = 1ull << 30;
    else if (c == 'b' || c == 'B')
      unit = 1;
    else
      return std::nullopt;
    std::string_view rest = suffix.substr(1);
    if (unit != 1 && (rest == "i" || rest == "iB" || rest == "B")) rest = {};
    if (!rest.empty()) return std::nullopt;
  }
  std::uint64_t bytes = 0;
  if (!checked_mul(n, unit, bytes)) return std::nullopt;
  return bytes;
}

std::optional<std::int64_t> parse_duration_ms(std::string_view text) {
  std::uint64_t n = 0;
  std::string_view suffix;
  if (!split_number(text, n, suffix)) return std::nullopt;
  std::uint64_t unit = 0;
  if (suffix == "ms")
    unit = 1;
  else if (suffix.empty() || suffix == "s")
    unit = 1000;
  else if (suffix == "m" || suffix == "min")
    unit = 60'000;
  else if (suffix == "h")
    unit = 3'600'000;
  else
    return std::nullopt;
  std::uint64_t ms = 0;
  if (!checked_mul(n, unit, ms) || ms > std::uint64_t(std::numeric_limits<std::int64_t>::max())) {
    return std::nullopt;
  }
  return std::int64_t(ms);
}

std::optional<unsigned> parse_mode(std::string_view text) {
  if (text.empty() || text.size() > 4) return std::nullopt;
  unsigned mode = 0;
  for (char c : text) {
    if (c < '0' || c > '7') return std::nullopt;
    mode = mode * 8 + unsigned(c - '0');
  }
  if (mode > 0777) return std::nullopt;
  return mode;
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  return buf;
}

std::string format_ttl(std::int64_t ms) {
  if (ms <= 0) return "expired";
  char buf[48];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%" PRId64 "ms", ms);
  } else if (ms < 60'000) {
    std::snprintf(buf, sizeof buf, "%" PRId64 ".%01" PRId64 "s", ms / 1000, (ms % 1000) / 100);
  } else if (ms < 3'600'000) {
    std::snprintf(buf, sizeof buf, "%" PRId64 "m%02" PRId64 "s", ms / 60'000, (ms / 1000) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%" PRId64 "h%02" PRId64 "m", ms / 3'600'000,
                  (ms / 60'000) % 60);
  }
  return buf;
}

std::string format_mode(std::uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

std::string format_unix_ms(std::uint64_t ms) {
  std::time_t t = std::time_t(ms / 1000);
  std::tm tm{};
  if (localtime_r(&t, &tm) == nullptr) return std::to_string(ms) + " ms";
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string escape_bytes(std::string_view bytes, std::size_t max_chars) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::size_t budget = max_chars < 3 ? 0 : max_chars - 3;  // room for "..."
  std::string out;
  std::size_t cut = 0;  // longest prefix of whole escapes that leaves room for "..."
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(bytes[i]);
    char piece[5] = {};
    switch (c) {
      case '\\':
        piece[0] = '\\', piece[1] = '\\';
        break;
      case '"':
        piece[0] = '\\', piece[1] = '"';
        break;
      case '\n':
        piece[0] = '\\', piece[1] = 'n';
        break;
      case '\t':
        piece[0] = '\\', piece[1] = 't';
        break;
      case '\r':
        piece[0] = '\\', piece[1] = 'r';
        break;
      default:
        if (c >= 0x20 && c < 0x7f) {
          piece[0] = char(c);
        } else {
          piece[0] = '\\', piece[1] = 'x', piece[2] = kHex[c >> 4], piece[3] = kHex[c & 15];
        }
    }
    std::string_view p(piece);
    if (out.size() + p.size() > max_chars) {
      out.resize(cut);  // whole escapes only, and room for the marker
      return out + "...";
    }
    out += p;
    if (out.size() <= budget) cut = out.size();
  }
  return out;
}

std::size_t terminal_width() {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 100;
}

}  // namespace hostcache::tools
