// value_json.h — showing a cached value: msgpack as JSON, anything else as
// escaped bytes.
//
// Values are opaque bytes to the cache; most are msgpack (Cache::put, the
// memoize layer). A value is treated as msgpack only when the whole buffer
// decodes as exactly one msgpack object within limits derived from its length,
// so that arbitrary bytes (a string that happens to start with a valid
// msgpack byte) are never mistaken for it, and a hostile value cannot make the
// decoder allocate more than the value's size or recurse without bound.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

namespace hostcache::tools {

// The value as JSON if it is exactly one msgpack object, else nullopt.
// Strings that are not UTF-8 and binary data become escaped strings (see
// escape_bytes); map keys that are not strings become their JSON text.
std::optional<nlohmann::json> msgpack_to_json(std::string_view bytes);

// One line for a terminal: the JSON text if msgpack, else the escaped bytes,
// cut to `max_chars`.
std::string value_line(std::string_view bytes, std::size_t max_chars);

// Bytes as a JSON string: themselves when valid UTF-8, else escape_bytes().
nlohmann::json text_json(std::string_view bytes);
bool is_utf8(std::string_view bytes);

// A JSON dump that never throws on invalid UTF-8 (it is replaced).
std::string dump_json(const nlohmann::json& j, int indent = -1);

}  // namespace hostcache::tools
