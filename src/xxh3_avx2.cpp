// xxh3_avx2.cpp — XXH3 compiled for AVX2, chosen at run time (arena.cpp's
// checksum_of) on CPUs that have it. XXH3's result does not depend on the
// vector width, so processes with and without AVX2 share a segment's
// checksums. This file alone is built with -mavx2, and includes nothing but
// xxHash (inlined, internal linkage): no inline function compiled for AVX2
// can be picked by the linker for code that runs everywhere.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstddef>
#include <cstdint>

namespace hostcache::detail {

std::uint64_t xxh3_seeded_avx2(const void* data, std::size_t len, std::uint64_t seed) {
  return XXH3_64bits_withSeed(data, len, seed);
}

}  // namespace hostcache::detail
