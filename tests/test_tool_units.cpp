// The tools' pure pieces: argument parsers, formatting, msgpack detection and
// the snapshot codec (every truncation and every single-byte flip refused).
#include <gtest/gtest.h>

#include <limits>
#include <msgpack.hpp>

#include <xxhash.h>

#include "snapshot_file.h"
#include "tool_common.h"
#include "value_json.h"

namespace hostcache::tools {
namespace {

TEST(ToolUnits, Sizes) {
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("64K"), 64u << 10);
  EXPECT_EQ(parse_size("256M"), 256u << 20);
  EXPECT_EQ(parse_size("256MiB"), 256u << 20);
  EXPECT_EQ(parse_size("1g"), 1ull << 30);
  EXPECT_EQ(parse_size("10B"), 10u);
  for (const char* bad :
       {"", "M", "12X", "1.5M", "-1", "99999999999999999999", "17179869184G", "1MM"}) {
    EXPECT_FALSE(parse_size(bad).has_value()) << bad;
  }
}

TEST(ToolUnits, Durations) {
  EXPECT_EQ(parse_duration_ms("500ms"), 500);
  EXPECT_EQ(parse_duration_ms("30s"), 30'000);
  EXPECT_EQ(parse_duration_ms("30"), 30'000);
  EXPECT_EQ(parse_duration_ms("15m"), 900'000);
  EXPECT_EQ(parse_duration_ms("2h"), 7'200'000);
  EXPECT_EQ(parse_duration_ms("0"), 0);
  for (const char* bad : {"", "ms", "1d", "-5s", "1.5s", "99999999999999999h"}) {
    EXPECT_FALSE(parse_duration_ms(bad).has_value()) << bad;
  }
}

TEST(ToolUnits, Modes) {
  EXPECT_EQ(parse_mode("0600"), 0600u);
  EXPECT_EQ(parse_mode("640"), 0640u);
  for (const char* bad : {"", "8", "0999", "07777", "rw"})
    EXPECT_FALSE(parse_mode(bad).has_value()) << bad;
}

TEST(ToolUnits, Formatting) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(256u << 20), "256.0 MiB");
  EXPECT_EQ(format_ttl(0), "expired");
  EXPECT_EQ(format_ttl(850), "850ms");
  EXPECT_EQ(format_ttl(12'345), "12.3s");
  EXPECT_EQ(format_ttl(1'799'000), "29m59s");
  EXPECT_EQ(format_ttl(7'380'000), "2h03m");
  EXPECT_EQ(format_ttl(std::numeric_limits<std::int64_t>::max()), "never");  // kNoExpiry
  EXPECT_EQ(format_mode(0600), "0600");
}

TEST(ToolUnits, IncrDecrOutcomesHaveTheirOwnExitCodes) {
  EXPECT_EQ(exit_code_for(Errc::not_integer), kExitNotInteger);
  EXPECT_EQ(exit_code_for(Errc::overflow), kExitOverflow);
  EXPECT_EQ(exit_code_for(Errc::invalid_namespace), kExitUsage);
  EXPECT_NE(kExitNotInteger, kExitOverflow);
  EXPECT_NE(kExitNotInteger, kExitNotFound);
}

TEST(ToolUnits, EscapingCutsOnlyBetweenWholeEscapes) {
  EXPECT_EQ(escape_bytes("plain"), "plain");
  EXPECT_EQ(escape_bytes(std::string("a\0\n\"\\\xff", 6)), "a\\x00\\n\\\"\\\\\\xff");
  EXPECT_EQ(escape_bytes("0123456789", 10), "0123456789");  // fits exactly: whole
  EXPECT_EQ(escape_bytes("0123456789x", 10), "0123456...");
  const std::string cut = escape_bytes(std::string(100, '\x01'), 12);
  EXPECT_EQ(cut, "\\x01\\x01...");  // never half an escape
  EXPECT_LE(cut.size(), 12u);
}

std::string packed(const auto& v) {
  msgpack::sbuffer b;
  msgpack::pack(b, v);
  return std::string(b.data(), b.size());
}

TEST(ToolUnits, MsgpackIsShownAsJsonOnlyWhenTheWholeBufferIsOneObject) {
  EXPECT_EQ(msgpack_to_json(packed(std::map<std::string, int>{{"a", 1}}))->dump(), "{\"a\":1}");
  EXPECT_EQ(msgpack_to_json(packed(std::vector<int>{1, 2, 3}))->dump(), "[1,2,3]");
  EXPECT_EQ(msgpack_to_json(packed(std::string("hi")))->dump(), "\"hi\"");
  EXPECT_EQ(msgpack_to_json(packed(-7))->dump(), "-7");
  EXPECT_FALSE(msgpack_to_json("hello world").has_value());  // 'h' is a fixint, then more bytes
  EXPECT_FALSE(msgpack_to_json("").has_value());
  EXPECT_FALSE(msgpack_to_json("1").has_value());  // text, not the fixint 49
  EXPECT_EQ(msgpack_to_json(packed(5))->dump(), "5");
  EXPECT_FALSE(msgpack_to_json(packed(1) + packed(2)).has_value());  // two objects
  const std::string map = packed(std::map<std::string, int>{{"a", 1}, {"b", 2}});
  EXPECT_FALSE(msgpack_to_json(map.substr(0, map.size() - 1)).has_value());  // truncated
  // A 5-byte array header claiming 2^32-1 elements: refused, not allocated.
  EXPECT_FALSE(msgpack_to_json(std::string("\xdd\xff\xff\xff\xff", 5)).has_value());
  // Nesting deeper than shown is refused rather than recursed into.
  EXPECT_FALSE(msgpack_to_json(std::string(100000, '\x91') + '\x01').has_value());
  // Non-UTF-8 strings and binary stay valid JSON, marked and in base64.
  const std::string bad_utf8 = packed(std::string("\xff\xfe", 2));
  EXPECT_EQ(msgpack_to_json(bad_utf8)->dump(), "{\"$base64\":\"//4=\"}");
  EXPECT_NO_THROW(dump_json(*msgpack_to_json(packed(std::vector<char>{'\0', '\xff'}))));
  EXPECT_EQ(value_line("hello world", 8), "hello...");
}

TEST(ToolUnits, EscapingKeepsPrintableUtf8AndEscapesTheRest) {
  EXPECT_EQ(escape_bytes("caf\xc3\xa9 \xe6\x97\xa5"), "caf\xc3\xa9 \xe6\x97\xa5");  // as they are
  EXPECT_EQ(escape_bytes("\x1b]0;t\x07"), "\\x1b]0;t\\x07");
  EXPECT_EQ(escape_bytes("\x7f"), "\\x7f");
  EXPECT_EQ(escape_bytes("\xc2\x9b"), "\\u009b");      // C1 CSI
  EXPECT_EQ(escape_bytes("\xc2\x85"), "\\u0085");      // C1 NEL
  EXPECT_EQ(escape_bytes("\xe2\x80\xae"), "\\u202e");  // RLO
  for (const char* bidi : {"\xe2\x80\xaa", "\xe2\x80\xab", "\xe2\x80\xac", "\xe2\x80\xad",
                           "\xe2\x81\xa6", "\xe2\x81\xa7", "\xe2\x81\xa8", "\xe2\x81\xa9",
                           "\xe2\x80\x8e", "\xe2\x80\x8f", "\xd8\x9c", "\xe2\x80\xa8"}) {
    EXPECT_EQ(escape_bytes(bidi).substr(0, 2), "\\u") << escape_bytes(bidi);
  }
  // Invalid UTF-8, byte by byte: overlongs, surrogates, past U+10FFFF, truncated.
  EXPECT_EQ(escape_bytes("\xc0\xaf"), "\\xc0\\xaf");
  EXPECT_EQ(escape_bytes("\xe0\x80\xaf"), "\\xe0\\x80\\xaf");
  EXPECT_EQ(escape_bytes("\xed\xa0\x80"), "\\xed\\xa0\\x80");
  EXPECT_EQ(escape_bytes("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");
  EXPECT_EQ(escape_bytes("\xe2\x80"), "\\xe2\\x80");
  // Unambiguous: the text of an escape is itself escaped.
  EXPECT_NE(escape_bytes("a\x80"), escape_bytes("a\\x80"));
  EXPECT_NE(escape_bytes("\xe2\x80\xae"), escape_bytes("\\u202e"));
  // A cut never splits a character.
  EXPECT_EQ(escape_bytes("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 7), "\xc3\xa9\xc3\xa9...");
  // Messages: the same, but their backslashes and quotes stay.
  EXPECT_EQ(safe_text("tag 'a\\b' \"x\" \x1b[2J\xe2\x80\xae"), "tag 'a\\b' \"x\" \\x1b[2J\\u202e");
}

TEST(ToolUnits, Utf8IsStrict) {
  EXPECT_TRUE(is_utf8("plain"));
  EXPECT_TRUE(is_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"));
  for (const char* bad : {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x9f\xbf", "\xed\xa0\x80",
                          "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xe2\x80"}) {
    EXPECT_FALSE(is_utf8(bad)) << escape_bytes(bad);
  }
}

TEST(ToolUnits, JsonMarksBytesThatAreNotUtf8) {
  EXPECT_EQ(text_json("a\\x80").dump(), "\"a\\\\x80\"");
  EXPECT_EQ(text_json(std::string("a\x80", 2)).dump(), "{\"base64\":\"YYA=\"}");
  EXPECT_EQ(base64(""), "");
  EXPECT_EQ(base64("f"), "Zg==");
  EXPECT_EQ(base64("fo"), "Zm8=");
  EXPECT_EQ(base64("foo"), "Zm9v");
  EXPECT_EQ(base64("foob"), "Zm9vYg==");
  // dump_json: DEL, C1 and bidi controls escaped; the document is the same.
  const nlohmann::json j = {{"k", "a\x7f\xc2\x9b\xe2\x80\xae\xc3\xa9\x1b"}};
  const std::string text = dump_json(j);
  EXPECT_EQ(text, "{\"k\":\"a\\u007f\\u009b\\u202e\xc3\xa9\\u001b\"}");
  EXPECT_EQ(nlohmann::json::parse(text), j);
  EXPECT_EQ(dump_json(j, 2), "{\n  \"k\": \"a\\u007f\\u009b\\u202e\xc3\xa9\\u001b\"\n}");
}

TEST(ToolUnits, MsgpackMapsNeverLoseOrConfuseKeys) {
  auto map_of = [](const std::vector<std::pair<std::string, int>>& kv) {
    msgpack::sbuffer b;
    msgpack::packer<msgpack::sbuffer> pk(b);
    pk.pack_map(std::uint32_t(kv.size()));
    for (const auto& [k, v] : kv) pk.pack(k), pk.pack(v);
    return std::string(b.data(), b.size());
  };
  EXPECT_EQ(msgpack_to_json(map_of({{"a", 1}, {"b", 2}}))->dump(), "{\"a\":1,\"b\":2}");
  // Not UTF-8, a repeated key, a key like a marker: the pairs, in order.
  EXPECT_EQ(msgpack_to_json(map_of({{std::string("a\x80", 2), 1}, {"a\\x80", 2}}))->dump(),
            "{\"$map\":[[{\"$base64\":\"YYA=\"},1],[\"a\\\\x80\",2]]}");
  EXPECT_EQ(msgpack_to_json(map_of({{"a", 1}, {"a", 2}}))->dump(), "{\"$map\":[[\"a\",1],[\"a\",2]]}");
  EXPECT_EQ(msgpack_to_json(map_of({{"$bin", 1}}))->dump(), "{\"$map\":[[\"$bin\",1]]}");
  // A non-string key is a key of its own type, not its text.
  msgpack::sbuffer b;
  msgpack::packer<msgpack::sbuffer> pk(b);
  pk.pack_map(2), pk.pack(1), pk.pack(1), pk.pack(std::string("1")), pk.pack(2);
  EXPECT_EQ(msgpack_to_json(std::string(b.data(), b.size()))->dump(),
            "{\"$map\":[[1,1],[\"1\",2]]}");
}

TEST(ToolUnits, Limits) {
  std::uint64_t v = 0;
  std::string why;
  EXPECT_TRUE(parse_limit("--max-stripe-bytes", "256M", v, why));
  EXPECT_EQ(v, 256u << 20);
  EXPECT_FALSE(parse_limit("--max-stripe-bytes", "0", v, why));
  EXPECT_FALSE(parse_limit("--max-stripe-bytes", "\x1b[2J", v, why));
  EXPECT_NE(why.find("--max-stripe-bytes"), std::string::npos);
  EXPECT_EQ(why.find('\x1b'), std::string::npos);
}

std::vector<SnapshotEntry> sample() {
  return {{"k1", "v1", 1000, {"t1", "t2"}, ""},
          {"k2", std::string("\0\xff", 2), 50, {}, "django"},
          {"k3", std::string(300, 'x'), 7'200'000, {"model:user"}, std::string(64, 'n')},
          {"k4", "forever", std::numeric_limits<std::int64_t>::max(), {}, ""}};
}

TEST(ToolUnits, SnapshotRoundTrips) {
  const std::string file = encode_snapshot(sample());
  std::vector<SnapshotEntry> back;
  std::string why;
  ASSERT_TRUE(decode_snapshot(file, back, why)) << why;
  ASSERT_EQ(back.size(), 4u);
  for (std::size_t i = 0; i < back.size(); ++i) {
    EXPECT_EQ(back[i].key, sample()[i].key);
    EXPECT_EQ(back[i].value, sample()[i].value);
    EXPECT_EQ(back[i].ttl_ms, sample()[i].ttl_ms);
    EXPECT_EQ(back[i].tags, sample()[i].tags);
    EXPECT_EQ(back[i].ns, sample()[i].ns);
  }
  ASSERT_TRUE(decode_snapshot(encode_snapshot({}), back, why)) << why;
  EXPECT_TRUE(back.empty());
}

// A version 1 file (no namespace field) written by the previous tool still loads.
TEST(ToolUnits, SnapshotVersionOneStillLoads) {
  auto le = [](std::string& out, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
  };
  std::string body;
  le(body, 2, 4), le(body, 3, 4), le(body, 5000, 8), le(body, 1, 1), le(body, 1, 1);
  body += "t";
  body += "k1v12";
  std::string file("HCSNAP\r\n", 8);
  le(file, 1, 4), le(file, 0, 4), le(file, 1, 8), le(file, body.size(), 8);
  file += body;
  le(file, XXH3_64bits(file.data(), file.size()), 8);
  std::vector<SnapshotEntry> back;
  std::string why;
  ASSERT_TRUE(decode_snapshot(file, back, why)) << why;
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0].key, "k1");
  EXPECT_EQ(back[0].value, "v12");
  EXPECT_EQ(back[0].ttl_ms, 5000);
  EXPECT_EQ(back[0].tags, std::vector<std::string>{"t"});
  EXPECT_TRUE(back[0].ns.empty());
  // A namespace over kMaxNamespaceBytes is refused, whatever the checksum says.
  std::vector<SnapshotEntry> too_long{{"k", "v", 10, {}, std::string(65, 'n')}};
  EXPECT_FALSE(decode_snapshot(encode_snapshot(too_long), back, why));
}

TEST(ToolUnits, SnapshotRefusesEveryTruncationAndEveryFlippedByte) {
  const std::string file = encode_snapshot(sample());
  std::vector<SnapshotEntry> out;
  std::string why;
  for (std::size_t n = 0; n < file.size(); ++n) {
    EXPECT_FALSE(decode_snapshot(file.substr(0, n), out, why)) << "truncated to " << n;
    EXPECT_TRUE(out.empty());
  }
  for (std::size_t i = 0; i < file.size(); ++i) {
    for (unsigned bit = 0; bit < 8; bit += 3) {
      std::string bad = file;
      bad[i] ^= char(1u << bit);
      EXPECT_FALSE(decode_snapshot(bad, out, why)) << "byte " << i << " bit " << bit;
    }
  }
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace hostcache::tools
