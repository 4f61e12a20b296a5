// compress.h — zstd compression of stored values.
//
// A value of at least Config::compress_min_bytes is compressed before the
// stripe lock is taken; it is stored compressed only when that saves at
// least 1/16 of its size (a frame barely smaller costs a decompression per
// hit for nothing). Entries carry kFlagCompressed and the original length.
// A reader decompresses its private copy after the seqlock validated it, so
// it never decodes bytes a writer is changing; a frame that does not decode
// to exactly the recorded length (only a writer of the segment can make one)
// is a miss.
//
// Thread-safety: each thread keeps its own zstd contexts.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace hostcache::compress {

// Compresses `in` at `level` into `out` and returns true when the frame is
// worth storing (smaller by at least 1/16); false leaves `out` unspecified.
bool worth_compressing(std::string_view in, int level, std::string& out);

// Decompresses a frame into exactly `len` bytes at `dst`. False if the frame
// is malformed or its content is not exactly `len` bytes long.
bool decompress(std::string_view frame, char* dst, std::size_t len);

}  // namespace hostcache::compress
