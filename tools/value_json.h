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
// What JSON cannot hold as it is gets a marker object, whose one key starts
// with '$': a str that is not UTF-8 {"$base64": B}, bin {"$bin": B}, ext
// {"$ext": TYPE, "$data": B} (B: standard base64), and a map whose keys are
// not all distinct UTF-8 strings free of a leading '$' {"$map": [[K, V], ...]}.
// A plain JSON object in the output therefore never has a key starting with
// '$', and no two distinct values print alike.
std::optional<nlohmann::json> msgpack_to_json(std::string_view bytes);

// One line for a terminal: the JSON text if msgpack, else the escaped bytes,
// cut to `max_chars`.
std::string value_line(std::string_view bytes, std::size_t max_chars);

// A key, tag or name: a JSON string when it is valid UTF-8, else
// {"base64": "..."} (so the binary key a\x80 and the text key `a\x80` differ).
nlohmann::json text_json(std::string_view bytes);
// Strictly valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool is_utf8(std::string_view bytes);
// Standard base64 with padding.
std::string base64(std::string_view bytes);

// A JSON dump that never throws on invalid UTF-8 (it is replaced), with DEL,
// C1 controls and bidi controls written as \uXXXX escapes (the same document,
// safe on a terminal).
std::string dump_json(const nlohmann::json& j, int indent = -1);

}  // namespace hostcache::tools
