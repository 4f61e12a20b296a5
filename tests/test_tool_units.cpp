// The tools' pure pieces: argument parsers, formatting, msgpack detection and
// the snapshot codec (every truncation and every single-byte flip refused).
#include <gtest/gtest.h>

#include <msgpack.hpp>

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
  EXPECT_EQ(format_mode(0600), "0600");
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
  // Non-UTF-8 strings and binary stay valid JSON.
  const std::string bad_utf8 = packed(std::string("\xff\xfe", 2));
  EXPECT_EQ(msgpack_to_json(bad_utf8)->get<std::string>(), "\\xff\\xfe");
  EXPECT_NO_THROW(dump_json(*msgpack_to_json(packed(std::vector<char>{'\0', '\xff'}))));
  EXPECT_EQ(value_line("hello world", 8), "hello...");
}

std::vector<SnapshotEntry> sample() {
  return {{"k1", "v1", 1000, {"t1", "t2"}},
          {"k2", std::string("\0\xff", 2), 50, {}},
          {"k3", std::string(300, 'x'), 7'200'000, {"model:user"}}};
}

TEST(ToolUnits, SnapshotRoundTrips) {
  const std::string file = encode_snapshot(sample());
  std::vector<SnapshotEntry> back;
  std::string why;
  ASSERT_TRUE(decode_snapshot(file, back, why)) << why;
  ASSERT_EQ(back.size(), 3u);
  for (std::size_t i = 0; i < back.size(); ++i) {
    EXPECT_EQ(back[i].key, sample()[i].key);
    EXPECT_EQ(back[i].value, sample()[i].value);
    EXPECT_EQ(back[i].ttl_ms, sample()[i].ttl_ms);
    EXPECT_EQ(back[i].tags, sample()[i].tags);
  }
  ASSERT_TRUE(decode_snapshot(encode_snapshot({}), back, why)) << why;
  EXPECT_TRUE(back.empty());
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
