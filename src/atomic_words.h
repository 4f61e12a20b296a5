// atomic_words.h — word-wise relaxed atomic access to shared memory.
//
// The optimistic reader of a stripe copies while a writer may be writing: the
// copy is race-free in the C++ memory model only if both sides use atomics.
// Every access to a stripe's buckets and arena goes through these helpers
// (std::atomic_ref on 8-byte aligned words, relaxed); the sequence counter's
// acquire/release orders them. ThreadSanitizer then has nothing to report.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace hostcache::words {

// A spin-wait hint to the CPU (spinning on a seqlock or a lock word).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

template <class T>
inline T load(const T& field, std::memory_order order = std::memory_order_relaxed) {
  return std::atomic_ref<T>(const_cast<T&>(field)).load(order);
}
template <class T>
inline void store(T& field, T value, std::memory_order order = std::memory_order_relaxed) {
  std::atomic_ref<T>(field).store(value, order);
}
template <class T>
inline T fetch_add(T& field, T delta, std::memory_order order = std::memory_order_relaxed) {
  return std::atomic_ref<T>(field).fetch_add(delta, order);
}

// Replaces `expected` with `desired`, or nothing if the field holds another
// value; true if it did.
template <class T>
inline bool replace(T& field, T expected, T desired, std::memory_order order = std::memory_order_seq_cst) {
  return std::atomic_ref<T>(field).compare_exchange_strong(expected, desired, order);
}

inline std::uint64_t load_word(const std::uint8_t* p) {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(const_cast<std::uint8_t*>(p)))
      .load(std::memory_order_relaxed);
}
inline void store_word(std::uint8_t* p, std::uint64_t v) {
  std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p)).store(v, std::memory_order_relaxed);
}

#if defined(__SANITIZE_THREAD__)
#define HOSTCACHE_WORDS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOSTCACHE_WORDS_TSAN 1
#endif
#endif

// Vector moves. On x86-64 (SSE2 is part of the base ISA) a stripe's bytes are
// read and written 16 at a time by single instructions in asm, which the
// compiler does not see as C++ accesses: like P1478's
// atomic_load_per_byte_memcpy, no C++ access races a writer, and the
// seqlock's acquire loads and the fence around a copy order it (the asm
// clobbers memory, so the compiler keeps it between them). A long copy uses
// the CPU's string move, the same way. Under ThreadSanitizer, and on other
// CPUs, the word-wise relaxed atomic loads are used instead, so that the
// protocol is checked.
#if defined(__x86_64__) && !defined(HOSTCACHE_WORDS_TSAN)
#define HOSTCACHE_WORDS_SIMD 1
#endif

inline constexpr std::size_t kBulkCopyBytes = 2048;

#if defined(HOSTCACHE_WORDS_SIMD)
// 16 bytes of shared memory at p (any alignment).
inline __m128i load16(const std::uint8_t* p) {
  __m128i v;
  asm volatile("movdqu %1, %0" : "=x"(v) : "m"(*reinterpret_cast<const char(*)[16]>(p)) : "memory");
  return v;
}
inline void store16(std::uint8_t* p, __m128i v) {
  asm volatile("movdqu %1, %0" : "=m"(*reinterpret_cast<char(*)[16]>(p)) : "x"(v) : "memory");
}
inline __m128i private16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline void put16(void* p, __m128i v) { _mm_storeu_si128(static_cast<__m128i*>(p), v); }

// The CPU's string move of `len` bytes, for a long copy in or out.
inline void bulk_copy(void* dst, const void* src, std::size_t len) {
  asm volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(len) : : "memory");
}

// Moves [0, len) (len >= 16) 16 bytes at a time, four a turn: load(i) reads
// the 16 bytes at i, store(i, v) writes them. The last move overlaps the one
// before, so exactly [0, len) is read and written.
template <class Load, class Store>
inline void move16s(std::size_t len, Load load, Store store) {
  std::size_t i = 0;
  for (; i + 64 <= len; i += 64) {
    const __m128i a = load(i), b = load(i + 16), c = load(i + 32), d = load(i + 48);
    store(i, a);
    store(i + 16, b);
    store(i + 32, c);
    store(i + 48, d);
  }
  for (; i + 16 <= len; i += 16) store(i, load(i));
  if (i < len) store(len - 16, load(len - 16));
}
#endif

// Copies `len` bytes starting at base + off into dst. `base` is 8-aligned and
// the words covering [off, off + len) are readable (the vector path reads
// exactly [off, off + len): its last move overlaps the one before).
inline void copy_out(const std::uint8_t* base, std::size_t off, std::size_t len, char* dst) {
  if (len == 0) return;
#if defined(HOSTCACHE_WORDS_SIMD)
  if (len >= 16) {
    const std::uint8_t* src = base + off;
    if (len >= kBulkCopyBytes) return bulk_copy(dst, src, len);
    move16s(len, [&](std::size_t i) { return load16(src + i); }, [&](std::size_t i, __m128i v) { put16(dst + i, v); });
    return;
  }
#endif
  std::size_t word = off & ~std::size_t{7};
  std::size_t skip = off - word;
  if (skip != 0) {  // leading partial word
    const std::uint64_t w = load_word(base + word);
    const std::size_t n = 8 - skip < len ? 8 - skip : len;
    std::memcpy(dst, reinterpret_cast<const char*>(&w) + skip, n);
    dst += n;
    len -= n;
    word += 8;
  }
  for (; len >= 32; len -= 32, word += 32, dst += 32) {  // four words per turn
    const std::uint64_t w0 = load_word(base + word), w1 = load_word(base + word + 8);
    const std::uint64_t w2 = load_word(base + word + 16), w3 = load_word(base + word + 24);
    std::memcpy(dst, &w0, 8);
    std::memcpy(dst + 8, &w1, 8);
    std::memcpy(dst + 16, &w2, 8);
    std::memcpy(dst + 24, &w3, 8);
  }
  for (; len >= 8; len -= 8, word += 8, dst += 8) {
    const std::uint64_t w = load_word(base + word);
    std::memcpy(dst, &w, 8);
  }
  if (len > 0) {  // trailing partial word
    const std::uint64_t w = load_word(base + word);
    std::memcpy(dst, &w, len);
  }
}

// Copies N bytes (a multiple of 8) of shared memory at the 8-aligned `src`
// into dst: copy_out for a length known at compile time (an entry header).
template <std::size_t N>
inline void copy_out_fixed(const std::uint8_t* src, void* dst) {
  static_assert(N % 8 == 0 && N >= 16);
  auto* d = static_cast<char*>(dst);
#if defined(HOSTCACHE_WORDS_SIMD)
  for (std::size_t i = 0; i + 16 <= N; i += 16) put16(d + i, load16(src + i));
  if constexpr (N % 16 != 0) {
    const std::uint64_t w = load_word(src + N - 8);
    std::memcpy(d + N - 8, &w, 8);
  }
#else
  for (std::size_t i = 0; i < N; i += 8) {
    const std::uint64_t w = load_word(src + i);
    std::memcpy(d + i, &w, 8);
  }
#endif
}

// Compares `len` bytes at base + off with `s`. The same reads as copy_out.
inline bool equal(const std::uint8_t* base, std::size_t off, const char* s, std::size_t len) {
#if defined(HOSTCACHE_WORDS_SIMD)
  if (len >= 16) {
    const std::uint8_t* p = base + off;
    auto same = [&](std::size_t i) {
      return _mm_movemask_epi8(_mm_cmpeq_epi8(load16(p + i), private16(s + i))) == 0xFFFF;
    };
    std::size_t i = 0;
    for (; i + 16 <= len; i += 16) {
      if (!same(i)) return false;
    }
    return i == len || same(len - 16);
  }
#endif
  std::size_t word = off & ~std::size_t{7};
  std::size_t skip = off - word;
  if (skip != 0 && len > 0) {
    const std::uint64_t w = load_word(base + word);
    const std::size_t n = 8 - skip < len ? 8 - skip : len;
    if (std::memcmp(s, reinterpret_cast<const char*>(&w) + skip, n) != 0) return false;
    s += n;
    len -= n;
    word += 8;
  }
  for (; len >= 8; len -= 8, word += 8, s += 8) {
    std::uint64_t mine;
    std::memcpy(&mine, s, 8);
    if (load_word(base + word) != mine) return false;
  }
  if (len > 0) {
    const std::uint64_t w = load_word(base + word);
    return std::memcmp(s, &w, len) == 0;
  }
  return true;
}

// Copies `bytes` (a multiple of 8) from a private, 8-aligned buffer into
// shared memory at `dst` (8-aligned).
inline void copy_in(std::uint8_t* dst, const std::uint8_t* src, std::size_t bytes) {
#if defined(HOSTCACHE_WORDS_SIMD)
  if (bytes >= 16) {
    if (bytes >= kBulkCopyBytes) return bulk_copy(dst, src, bytes);
    move16s(bytes, [&](std::size_t i) { return private16(src + i); }, [&](std::size_t i, __m128i v) { store16(dst + i, v); });
    return;
  }
#endif
  for (std::size_t i = 0; i < bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, src + i, 8);
    store_word(dst + i, w);
  }
}

// Moves `bytes` (a multiple of 8) within shared memory to a lower address;
// the ranges may overlap (a forward copy is then safe).
inline void move_down(std::uint8_t* dst, const std::uint8_t* src, std::size_t bytes) {
  for (std::size_t i = 0; i < bytes; i += 8) store_word(dst + i, load_word(src + i));
}

}  // namespace hostcache::words
