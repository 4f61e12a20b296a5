// test_words.cpp — the shared-memory copy and compare primitives
// (atomic_words.h) against memcpy/memcmp, at every alignment and length that
// an arena can ask for, with the source at the very end of a readable mapping
// and guard bytes around the destination: a primitive that reads past the
// range it was given faults, and one that writes outside it is caught.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <xxhash.h>

#include "arena.h"
#include "atomic_words.h"

namespace {

using hostcache::words::copy_in;
using hostcache::words::copy_out;
using hostcache::words::equal;

// `bytes` readable bytes ending exactly at a PROT_NONE page.
class EdgeBuffer {
 public:
  explicit EdgeBuffer(std::size_t bytes) {
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    span_ = (bytes + page - 1) / page * page + page;
    void* p = ::mmap(nullptr, span_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap");
    map_ = static_cast<std::uint8_t*>(p);
    if (::mprotect(map_ + span_ - page, page, PROT_NONE) != 0) throw std::runtime_error("mprotect");
    data_ = map_ + span_ - page - bytes;
  }
  ~EdgeBuffer() { ::munmap(map_, span_); }
  std::uint8_t* data() const { return data_; }

 private:
  std::uint8_t* map_ = nullptr;
  std::uint8_t* data_ = nullptr;
  std::size_t span_ = 0;
};

std::vector<std::size_t> lengths() {
  std::vector<std::size_t> v;
  for (std::size_t n = 0; n <= 300; ++n) v.push_back(n);
  for (std::size_t n : {511u, 512u, 513u, 1000u, 2047u, 2048u, 2049u, 4095u, 4096u, 4097u, 65537u}) v.push_back(n);
  return v;
}

TEST(Words, CopyOutCopiesExactlyTheRangeAndReadsNothingPastIt) {
  std::mt19937_64 rng(1);
  for (std::size_t len : lengths()) {
    for (std::size_t off = 0; off < 16; ++off) {
      // The words covering [off, off + len) end at the guard page: with
      // off + len a multiple of 8 the last byte copied is the last readable one.
      const std::size_t covered = (off + len + 7) / 8 * 8;
      EdgeBuffer src(covered == 0 ? 8 : covered);
      for (std::size_t i = 0; i < covered; ++i) src.data()[i] = std::uint8_t(rng());
      std::vector<char> dst(len + 64, '\x5a');
      copy_out(src.data(), off, len, dst.data() + 32);
      ASSERT_EQ(0, std::memcmp(dst.data() + 32, src.data() + off, len)) << "len " << len << " off " << off;
      for (std::size_t i = 0; i < 32; ++i) {
        ASSERT_EQ('\x5a', dst[i]) << "wrote before dst, len " << len << " off " << off;
        ASSERT_EQ('\x5a', dst[32 + len + i]) << "wrote past dst + len, len " << len << " off " << off;
      }
    }
  }
}

TEST(Words, EqualFindsEveryDifferingByte) {
  for (std::size_t len : lengths()) {
    if (len > 4096) continue;
    for (std::size_t off = 0; off < 16; off += 3) {
      const std::size_t covered = (off + len + 7) / 8 * 8;
      EdgeBuffer src(covered == 0 ? 8 : covered);
      for (std::size_t i = 0; i < covered; ++i) src.data()[i] = std::uint8_t(i * 7 + 3);
      std::vector<char> mine(src.data() + off, src.data() + off + len);
      ASSERT_TRUE(equal(src.data(), off, mine.data(), len)) << "len " << len << " off " << off;
      for (std::size_t at = 0; at < len; at += (len > 64 ? 13 : 1)) {
        mine[at] ^= 0x01;
        ASSERT_FALSE(equal(src.data(), off, mine.data(), len)) << "len " << len << " off " << off << " at " << at;
        mine[at] ^= 0x01;
      }
      if (len > 0) {  // the last byte, whatever the stride above skipped
        mine[len - 1] ^= 0x80;
        ASSERT_FALSE(equal(src.data(), off, mine.data(), len)) << "len " << len << " off " << off;
      }
    }
  }
}

TEST(Words, CopyInWritesExactlyTheWords) {
  std::mt19937_64 rng(2);
  for (std::size_t bytes = 0; bytes <= 4096 + 8; bytes += 8) {
    std::vector<std::uint64_t> image(bytes / 8 + 1);
    for (auto& w : image) w = rng();
    std::vector<std::uint64_t> shared(bytes / 8 + 4, 0x5a5a5a5a5a5a5a5aull);
    auto* dst = reinterpret_cast<std::uint8_t*>(shared.data() + 2);
    copy_in(dst, reinterpret_cast<const std::uint8_t*>(image.data()), bytes);
    ASSERT_EQ(0, std::memcmp(dst, image.data(), bytes)) << bytes;
    EXPECT_EQ(0x5a5a5a5a5a5a5a5aull, shared[0]);
    EXPECT_EQ(0x5a5a5a5a5a5a5a5aull, shared[1]);
    EXPECT_EQ(0x5a5a5a5a5a5a5a5aull, shared[bytes / 8 + 2]) << bytes;
    EXPECT_EQ(0x5a5a5a5a5a5a5a5aull, shared[bytes / 8 + 3]) << bytes;
  }
}

// The checksum is XXH3 whichever vector path this CPU takes (the AVX2 one
// past 240 bytes): processes on CPUs with and without AVX2 share segments.
TEST(Words, ChecksumIsXxh3OnEveryPath) {
  std::mt19937_64 rng(3);
  std::vector<std::uint8_t> image(8192 + 256);
  for (auto& b : image) b = std::uint8_t(rng());
  for (std::uint32_t value_len : {0u, 1u, 100u, 121u, 200u, 240u, 241u, 500u, 1000u, 4096u, 8000u}) {
    hostcache::layout::EntryHeader h{};
    h.magic = hostcache::layout::kEntryMagic;
    h.kind = hostcache::layout::kKindEntry;
    h.key_len = 7;
    h.value_len = value_len;
    h.size = std::uint32_t(hostcache::arena::entry_size(h.key_len, h.value_len, 0));
    const std::size_t len = hostcache::layout::kHeaderBytes - hostcache::layout::kChecksumFrom + h.key_len + value_len;
    const std::uint64_t seed = (std::uint64_t(h.size) << 32) | (std::uint64_t(h.kind) << 16) | h.magic;
    // libxxhash's own build, not the library's inlined ones.
    EXPECT_EQ(hostcache::arena::checksum_of(image.data(), h),
              XXH3_64bits_withSeed(image.data() + hostcache::layout::kChecksumFrom, len, seed))
        << value_len;
  }
}

}  // namespace
