#include "value_json.h"

#include <msgpack.hpp>

#include "tool_common.h"

namespace hostcache::tools {
namespace {

// Deeper values are valid msgpack but not worth showing; refusing them bounds
// both the decoder's and our recursion.
constexpr std::size_t kMaxDepth = 64;

}  // namespace

bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

// A msgpack str (or a key) is shown as a JSON string when it is valid UTF-8;
// otherwise escaped, so the document stays valid.
nlohmann::json text_json(std::string_view bytes) {
  return is_utf8(bytes) ? nlohmann::json(std::string(bytes)) : nlohmann::json(escape_bytes(bytes));
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
      return text_json(std::string_view(o.via.str.ptr, o.via.str.size));
    }
    case msgpack::type::BIN:
      return json{{"$bin", escape_bytes(std::string_view(o.via.bin.ptr, o.via.bin.size))}};
    case msgpack::type::EXT:
      return json{{"$ext", o.via.ext.type()},
                  {"data", escape_bytes(std::string_view(o.via.ext.data(), o.via.ext.size))}};
    case msgpack::type::ARRAY: {
      json a = json::array();
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) a.push_back(to_json(o.via.array.ptr[i]));
      return a;
    }
    case msgpack::type::MAP: {
      json m = json::object();
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        const msgpack::object_kv& kv = o.via.map.ptr[i];
        std::string key;
        if (kv.key.type == msgpack::type::STR) {
          key = text_json(std::string_view(kv.key.via.str.ptr, kv.key.via.str.size))
                    .get<std::string>();
        } else {
          key = dump_json(to_json(kv.key));
        }
        m[key] = to_json(kv.val);
      }
      return m;
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
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace hostcache::tools
