// string_grow.h — growing a std::string for bytes about to be written.
//
// std::string::resize zeroes what it adds, and a get then overwrites every
// byte of it: for a 4 KiB value that is a second pass over 4 KiB (get_many
// of 16 at 4 KiB spends about a tenth of its time there). C++23's
// resize_and_overwrite grows without writing; string_grow.cpp is built as
// C++23 where the compiler offers it, and falls back to resize elsewhere.
#pragma once

#include <cstddef>
#include <string>

namespace hostcache::detail {

// Makes `s` exactly `n` bytes long and returns its data. Bytes past the old
// size are indeterminate until the caller writes them: it must write all of
// [old size, n) before anything reads `s`, or call s.clear().
[[gnu::visibility("hidden")]] char* grow_for_overwrite(std::string& s, std::size_t n);

}  // namespace hostcache::detail
