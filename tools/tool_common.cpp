#include "tool_common.h"

#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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
    case Errc::invalid_namespace:
      return kExitUsage;  // the caller's arguments were refused
    case Errc::not_integer:
      return kExitNotInteger;
    case Errc::overflow:
      return kExitOverflow;
    case Errc::already_exists:
      return kExitNotFound;  // a lookup (is the name free?) that failed, like a missing key
    case Errc::permission_denied:
      return kExitPermission;
    case Errc::not_found:
    case Errc::incompatible:
    case Errc::corrupt:
    case Errc::io_error:
    case Errc::busy:  // a live process held a stripe past the lock timeout
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
  const std::string what = safe_text(e.what());
  std::string_view named = what.find(segment) == std::string::npos ? segment : "";
  if (const auto* err = dynamic_cast<const Error*>(&e)) {
    const int rc = fail(tool, named, err->code(), what);
    if (err->code() == Errc::permission_denied && !segment.empty()) {
      const std::string why = foreign_reason(segment);
      if (!why.empty()) {
        std::cerr << tool << ": " << segment << ": refused because the segment is " << why
                  << ": whoever can write it may have forged what it holds; pass --allow-foreign "
                     "to use it anyway\n";
      }
    }
    return rc;
  }
  return fail(tool, named, Errc::io_error, what);
}

namespace {

std::string user_name(std::uint32_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  char buf[1024];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != nullptr) {
    return "uid " + std::to_string(uid) + " (" + found->pw_name + ")";
  }
  return "uid " + std::to_string(uid);
}

}  // namespace

std::string foreign_reason(std::string_view segment) {
  struct stat st;
  const std::string path = "/dev/shm/hostcache." + std::string(segment);
  if (::lstat(path.c_str(), &st) != 0) return "";
  if (st.st_uid != ::geteuid()) {
    return "owned by " + user_name(st.st_uid) + ", not by " + user_name(::geteuid()) +
           " (this user)";
  }
  if ((st.st_mode & S_IWOTH) != 0) {
    return "writable by every user (mode " + format_mode(st.st_mode & 07777) + ")";
  }
  return "";
}

void warn_if_foreign(std::string_view tool, std::string_view segment) {
  const std::string why = foreign_reason(segment);
  if (why.empty()) return;
  std::cerr << tool << ": " << segment << ": warning: using a segment " << why
            << " because of --allow-foreign; what it holds may have been forged\n";
}

bool parse_limit(std::string_view option, const std::string& text, std::uint64_t& out,
                 std::string& why) {
  const std::optional<std::uint64_t> v = parse_size(text);
  if (!v || *v == 0) {
    why = std::string(option) + " wants a positive size such as 256M or 4G, not '" +
          escape_bytes(text, 40) + "'";
    return false;
  }
  out = *v;
  return true;
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
  if (ms == std::numeric_limits<std::int64_t>::max()) return "never";  // kNoExpiry
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

bool unprintable(std::uint32_t cp) noexcept {
  return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0) || cp == 0x061c || cp == 0x200e ||
         cp == 0x200f || (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) ||
         (cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff;
}

std::size_t utf8_char(std::string_view s, std::uint32_t& cp) noexcept {
  if (s.empty()) return 0;
  const unsigned char c = static_cast<unsigned char>(s[0]);
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  std::size_t n = 0;
  std::uint32_t min = 0;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2, min = 0x80, cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, min = 0x800, cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4, min = 0x10000, cp = c & 0x07;
  } else {
    return 0;  // a continuation byte, 0xc0/0xc1 (always overlong) or 0xf5..0xff
  }
  if (s.size() < n) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[k]);
    if ((d & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (d & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) return 0;
  return n;
}

namespace {

// One piece of escaped output for the character or byte at the start of `s`;
// `consumed` receives how many bytes it stands for.
std::string escape_piece(std::string_view s, bool quote_specials, std::size_t& consumed) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint32_t cp = 0;
  const std::size_t n = utf8_char(s, cp);
  if (n == 0) {  // not UTF-8: the byte
    const unsigned char c = static_cast<unsigned char>(s[0]);
    consumed = 1;
    return std::string{'\\', 'x', kHex[c >> 4], kHex[c & 15]};
  }
  consumed = n;
  if (n == 1) {
    const char c = char(cp);
    if (quote_specials && (c == '\\' || c == '"')) return std::string{'\\', c};
    if (c == '\n') return "\\n";
    if (c == '\t') return "\\t";
    if (c == '\r') return "\\r";
    if (unprintable(cp)) return std::string{'\\', 'x', kHex[cp >> 4], kHex[cp & 15]};
    return std::string(1, c);
  }
  if (unprintable(cp)) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(cp));
    return buf;
  }
  return std::string(s.substr(0, n));
}

}  // namespace

std::string escape_bytes(std::string_view bytes, std::size_t max_chars) {
  const std::size_t budget = max_chars < 3 ? 0 : max_chars - 3;  // room for "..."
  std::string out;
  std::size_t cut = 0;  // longest prefix of whole pieces that leaves room for "..."
  for (std::size_t i = 0; i < bytes.size();) {
    std::size_t consumed = 0;
    const std::string p = escape_piece(bytes.substr(i), true, consumed);
    i += consumed;
    if (out.size() + p.size() > max_chars) {
      out.resize(cut);  // whole pieces only, and room for the marker
      return out + "...";
    }
    out += p;
    if (out.size() <= budget) cut = out.size();
  }
  return out;
}

std::string safe_text(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    std::size_t consumed = 0;
    out += escape_piece(text.substr(i), false, consumed);
    i += consumed;
  }
  return out;
}

std::size_t terminal_width() {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 100;
}

}  // namespace hostcache::tools
