#include "value_json.h"

#include <cstdio>
#include <msgpack.hpp>

#include "tool_common.h"

namespace hostcache::tools {
namespace {

// Deeper values are valid msgpack but not worth showing; refusing them bounds
// both the decoder's and our recursion.
constexpr std::size_t kMaxDepth = 64;

}  // namespace

bool is_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    std::uint32_t cp = 0;
    const std::size_t n = utf8_char(s.substr(i), cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = std::uint32_t(static_cast<unsigned char>(bytes[i])) << 16 |
                            std::uint32_t(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                            std::uint32_t(static_cast<unsigned char>(bytes[i + 2]));
    out += kAlphabet[(v >> 18) & 63], out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63], out += kAlphabet[v & 63];
  }
  if (i < bytes.size()) {
    std::uint32_t v = std::uint32_t(static_cast<unsigned char>(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= std::uint32_t(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63], out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// A key, tag or other name: a JSON string when it is valid UTF-8, otherwise
// {"base64": ...}, so that no two distinct byte strings print alike.
nlohmann::json text_json(std::string_view bytes) {
  if (is_utf8(bytes)) return nlohmann::json(std::string(bytes));
  return nlohmann::json{{"base64", base64(bytes)}};
}

namespace {

// After a cut: drops a last UTF-8 character that lost some of its bytes.
void drop_partial_utf8(std::string& s) {
  std::size_t start = s.size();
  while (start > 0 && (static_cast<unsigned char>(s[start - 1]) & 0xC0) == 0x80) --start;
  if (start == 0) return;
  unsigned char lead = static_cast<unsigned char>(s[start - 1]);
  std::size_t want = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : 4;
  if (s.size() - (start - 1) < want) s.resize(start - 1);
}

nlohmann::json to_json(const msgpack::object& o) {
  using nlohmann::json;
  switch (o.type) {
    case msgpack::type::NIL:
      return nullptr;
    case msgpack::type::BOOLEAN:
      return o.via.boolean;
    case msgpack::type::POSITIVE_INTEGER:
      return o.via.u64;
    case msgpack::type::NEGATIVE_INTEGER:
      return o.via.i64;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64:
      return o.via.f64;  // NaN and infinities dump as null
    case msgpack::type::STR: {
      const std::string_view str(o.via.str.ptr, o.via.str.size);
      if (is_utf8(str)) return std::string(str);
      return json{{"$base64", base64(str)}};  // a str that is not UTF-8
    }
    case msgpack::type::BIN:
      return json{{"$bin", base64(std::string_view(o.via.bin.ptr, o.via.bin.size))}};
    case msgpack::type::EXT:
      return json{{"$ext", o.via.ext.type()},
                  {"$data", base64(std::string_view(o.via.ext.data(), o.via.ext.size))}};
    case msgpack::type::ARRAY: {
      json a = json::array();
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(to_json(o.via.array.ptr[i]));
      return a;
    }
    case msgpack::type::MAP: {
      // A JSON object when every key is a UTF-8 string, none starts with '$'
      // (the markers' prefix) and none repeats; otherwise the pairs, so that
      // no key is lost and none is mistaken for another or for a marker.
      json m = json::object();
      bool plain = true;
      for (std::uint32_t i = 0; plain && i < o.via.map.size; ++i) {
        const msgpack::object& k = o.via.map.ptr[i].key;
        const std::string_view key = k.type == msgpack::type::STR
                                         ? std::string_view(k.via.str.ptr, k.via.str.size)
                                         : std::string_view();
        plain = k.type == msgpack::type::STR && is_utf8(key) && (key.empty() || key[0] != '$') &&
                !m.contains(std::string(key));
        if (plain) m[std::string(key)] = to_json(o.via.map.ptr[i].val);
      }
      if (plain) return m;
      json pairs = json::array();
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        pairs.push_back(json::array({to_json(o.via.map.ptr[i].key), to_json(o.via.map.ptr[i].val)}));
      }
      return json{{"$map", std::move(pairs)}};
    }
  }
  return nullptr;
}

}  // namespace

std::optional<nlohmann::json> msgpack_to_json(std::string_view bytes) {
  if (bytes.empty()) return std::nullopt;
  // Every printable ASCII byte is also a msgpack positive fixint, so a
  // one-character value such as "1" would read as 49: text wins that tie.
  if (bytes.size() == 1 && bytes[0] >= 0x20 && bytes[0] < 0x7f) return std::nullopt;
  // Every element takes at least one byte, so no count may exceed the length:
  // a 5-byte value claiming 2^32 elements is refused before anything is allocated.
  const std::size_t n = bytes.size();
  msgpack::unpack_limit limit(n, n, n, n, n, kMaxDepth);
  try {
    std::size_t off = 0;
    bool referenced = false;
    msgpack::object_handle handle =
        msgpack::unpack(bytes.data(), n, off, referenced, nullptr, nullptr, limit);
    if (off != n) return std::nullopt;  // more than one object: not a msgpack value
    return to_json(handle.get());
  } catch (const std::exception&) {
    return std::nullopt;  // not msgpack (or over the limits): shown as bytes
  }
}

std::string value_line(std::string_view bytes, std::size_t max_chars) {
  if (std::optional<nlohmann::json> j = msgpack_to_json(bytes)) {
    std::string text = dump_json(*j);
    if (text.size() > max_chars) {
      text.resize(max_chars < 3 ? 0 : max_chars - 3);
      drop_partial_utf8(text);
      text += "...";
    }
    return text;
  }
  return escape_bytes(bytes, max_chars);
}

std::string dump_json(const nlohmann::json& j, int indent) {
  const std::string text = j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
  // nlohmann escapes C0 controls; DEL, C1 controls and the bidi controls it
  // passes through as they are. They can only occur inside strings (JSON's
  // own syntax is ASCII), where \uXXXX means the same character, so
  // escaping them keeps the document equal and a terminal safe.
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    std::uint32_t cp = 0;
    std::size_t n = utf8_char(std::string_view(text).substr(i), cp);
    if (n == 0) n = 1, cp = 0xfffd;  // cannot happen after `replace`; keep it valid anyway
    if (n == 1 && cp != 0x7f && cp != 0xfffd) {
      out += text[i];  // raw C0 bytes here are the indentation's newlines
    } else if (n == 1 || unprintable(cp)) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(cp));
      out += buf;
    } else {
      out.append(text, i, n);
    }
    i += n;
  }
  return out;
}

}  // namespace hostcache::tools
