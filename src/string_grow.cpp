// string_grow.cpp — see string_grow.h. The one translation unit built as
// C++23 (CMakeLists.txt): it reaches resize_and_overwrite, and exports a
// plain function with a C++20 signature; std::string's layout is the same in
// every language mode of one libstdc++.
#include "string_grow.h"

namespace hostcache::detail {

char* grow_for_overwrite(std::string& s, std::size_t n) {
#if defined(__cpp_lib_string_resize_and_overwrite)
  // The operation returns n itself, not the length it is passed: GCC 12's
  // libstdc++ passes the capacity it allocated (twice the old one, when
  // that is more than n), and a string of that length would end in bytes
  // nobody wrote (CacheTest.SetGetOverwriteErase).
  s.resize_and_overwrite(n, [n](char*, std::size_t) { return n; });
#else
  s.resize(n);
#endif
  return s.data();
}

}  // namespace hostcache::detail
