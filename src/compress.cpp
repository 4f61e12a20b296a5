#include "compress.h"

#include <zstd.h>

#include <memory>
#include <optional>

#include "thread_scratch.h"

namespace hostcache::compress {
namespace {

struct CctxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DctxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

using Cctx = std::unique_ptr<ZSTD_CCtx, CctxFree>;
using Dctx = std::unique_ptr<ZSTD_DCtx, DctxFree>;
struct CctxTag {};
struct DctxTag {};

// This thread's contexts, made on first use (own: one for this call, once
// the thread's are gone at its exit).
ZSTD_CCtx* cctx(std::optional<Cctx>& own) {
  Cctx& c = detail::thread_scratch<CctxTag>(own);
  if (!c) c.reset(ZSTD_createCCtx());
  return c.get();
}
ZSTD_DCtx* dctx(std::optional<Dctx>& own) {
  Dctx& d = detail::thread_scratch<DctxTag>(own);
  if (!d) d.reset(ZSTD_createDCtx());
  return d.get();
}

}  // namespace

bool worth_compressing(std::string_view in, int level, std::string& out) {
  std::optional<Cctx> own;
  ZSTD_CCtx* c = cctx(own);
  if (c == nullptr || in.empty()) return false;
  const std::size_t goal = in.size() - in.size() / 16;
  out.resize(ZSTD_compressBound(in.size()));
  const std::size_t n = ZSTD_compressCCtx(c, out.data(), out.size(), in.data(), in.size(), level);
  if (ZSTD_isError(n) || n >= goal) return false;
  out.resize(n);
  return true;
}

bool decompress(std::string_view frame, char* dst, std::size_t len) {
  std::optional<Dctx> own;
  ZSTD_DCtx* d = dctx(own);
  if (d == nullptr) return false;
  const unsigned long long content = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (content != len) return false;  // also ZSTD_CONTENTSIZE_UNKNOWN / _ERROR
  const std::size_t n = ZSTD_decompressDCtx(d, dst, len, frame.data(), frame.size());
  return !ZSTD_isError(n) && n == len;
}

}  // namespace hostcache::compress
