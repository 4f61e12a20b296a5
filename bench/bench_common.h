// bench_common.h — what every hostcache benchmark shares: keys, self-checking
// values, the random sources (uniform, Zipf) and a latency histogram.
//
// Values are self-describing so that no figure can come from a broken run: a
// value embeds the hash of its key, its own length, as much of the key as
// fits and a checksum of everything after the checksum. verify() catches a
// torn read, a value returned for another key and a truncated copy alike.
//
// Thread-safety: plain values and functions; each worker owns its own Rng,
// ZipfSampler and Histogram (the histogram is trivially copyable so that it
// can live in shared memory written by a forked worker).
#pragma once

#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace hcbench {

// Prefix of every segment a benchmark creates: compare.sh sets HCBENCH_PREFIX
// to a per-run value so that it can remove what a crashed benchmark left behind.
inline std::string segment_prefix() {
  const char* p = std::getenv("HCBENCH_PREFIX");
  return p != nullptr && *p != '\0' ? p : "hcbench";
}

inline std::uint64_t now_ns() {
  return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now().time_since_epoch())
                           .count());
}

// ---- random sources ----------------------------------------------------------

// xoshiro256**: fast, good enough for workload generation, seedable per worker.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) {
    for (auto& w : s_) w = splitmix(seed);
  }
  std::uint64_t next() {
    const std::uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n) (Lemire's multiply-shift; the bias is below 2^-32 for
  // the n we use, irrelevant for a load generator).
  std::uint64_t below(std::uint64_t n) {
    return std::uint64_t((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  double unit() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)

 private:
  static std::uint64_t splitmix(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  std::array<std::uint64_t, 4> s_{};
};

// Zipf over ranks 1..n with P(k) ~ 1/k^s, any s > 0, O(1) per sample and no
// table: rejection-inversion (Hörmann and Derflinger 1996), as in Apache
// Commons RNG's RejectionInversionZipfSampler. A CDF table would cost 8 bytes
// per key per worker and a binary search per op.
class ZipfSampler {
 public:
  ZipfSampler(std::uint64_t n, double s) : n_(double(n)), s_(s) {
    if (n == 0 || !(s > 0)) throw std::invalid_argument("zipf needs n > 0 and s > 0");
    h_integral_x1_ = h_integral(1.5) - 1.0;
    h_integral_n_ = h_integral(n_ + 0.5);
    cutoff_ = 2.0 - h_integral_inverse(h_integral(2.5) - h(2.0));
  }
  // Rank in [1, n]; rank 1 is the most popular.
  std::uint64_t sample(Rng& rng) const {
    for (;;) {
      const double u = h_integral_n_ + rng.unit() * (h_integral_x1_ - h_integral_n_);
      const double x = h_integral_inverse(u);
      double k = std::floor(x + 0.5);
      k = std::clamp(k, 1.0, n_);
      if (k - x <= cutoff_ || u >= h_integral(k + 0.5) - h(k)) return std::uint64_t(k);
    }
  }

 private:
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  double h_integral(double x) const {
    const double log_x = std::log(x);
    return expm1_over_x((1.0 - s_) * log_x) * log_x;
  }
  double h_integral_inverse(double x) const {
    const double t = std::max(x * (1.0 - s_), -1.0);
    return std::exp(log1p_over_x(t) * x);
  }
  static double log1p_over_x(double x) {
    return std::abs(x) > 1e-8 ? std::log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x));
  }
  static double expm1_over_x(double x) {
    return std::abs(x) > 1e-8 ? std::expm1(x) / x : 1 + x * 0.5 * (1 + x / 3 * (1 + 0.25 * x));
  }
  double n_, s_, h_integral_x1_ = 0, h_integral_n_ = 0, cutoff_ = 0;
};

// Picks key indexes: uniform, or Zipf ranks scattered over the key space by a
// multiplicative permutation (so that the hot keys are not neighbours, which
// would flatter an ordered store such as LMDB).
class KeyChooser {
 public:
  KeyChooser(std::uint64_t n, double zipf_s) : n_(n), zipf_(n, zipf_s > 0 ? zipf_s : 1.0) {
    zipf_on_ = zipf_s > 0;
    mult_ = 0x9e3779b97f4a7c15ull % n;
    while (mult_ == 0 || std::gcd(mult_, n) != 1) mult_ = (mult_ + 1) % n;
  }
  std::uint64_t next(Rng& rng) const {
    if (!zipf_on_) return rng.below(n_);
    return rank_to_key(zipf_.sample(rng) - 1);
  }
  std::uint64_t rank_to_key(std::uint64_t rank0) const {
    return std::uint64_t((static_cast<unsigned __int128>(rank0) * mult_) % n_);
  }

 private:
  std::uint64_t n_;
  ZipfSampler zipf_;
  bool zipf_on_ = false;
  std::uint64_t mult_ = 1;
};

// ---- keys --------------------------------------------------------------------

inline constexpr std::size_t kMinKeyBytes = 20;

// Key `i` of a fixed size: "hc" + 16 hex digits + '.' + filler. Keys of
// different `space`s never collide (hits and misses use different spaces).
inline void make_key(std::uint64_t i, std::size_t size, char space, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out[0] = 'h';
  out[1] = space;
  for (int d = 0; d < 16; ++d) out[2 + d] = kHex[(i >> (60 - 4 * d)) & 15];
  out[18] = '.';
  for (std::size_t j = 19; j < size; ++j) out[j] = char('a' + (i + j) % 26);
}

// All keys of one space in one block: workers index it instead of formatting
// a key per op, and forked workers share its pages. Keys are of one size, or
// of sizes in [min, max]: key i has size_of(i) bytes (i % span, so that each
// size is equally common and a script can rebuild the same keys: see
// apcu_worker.php).
class KeySet {
 public:
  KeySet(std::uint64_t count, std::size_t key_size, char space = 'k')
      : KeySet(count, key_size, key_size, space) {}
  KeySet(std::uint64_t count, std::size_t min_size, std::size_t max_size, char space)
      : min_(min_size), max_(max_size) {
    if (min_size < kMinKeyBytes) throw std::invalid_argument("key size must be >= 20 bytes");
    if (max_size < min_size) throw std::invalid_argument("key size range must be MIN-MAX, MIN <= MAX");
    if (fixed()) {
      bytes_.assign(count * max_, '\0');
      for (std::uint64_t i = 0; i < count; ++i) make_key(i, max_, space, &bytes_[i * max_]);
      count_ = count;
      return;
    }
    offsets_.reserve(count + 1);
    std::uint64_t total = 0;
    for (std::uint64_t i = 0; i < count; ++i) offsets_.push_back(total), total += size_of(i);
    offsets_.push_back(total);
    bytes_.assign(total, '\0');
    for (std::uint64_t i = 0; i < count; ++i) make_key(i, size_of(i), space, &bytes_[offsets_[i]]);
    count_ = count;
  }
  std::string_view operator[](std::uint64_t i) const {
    if (fixed()) return {&bytes_[i * max_], max_};
    return {&bytes_[offsets_[i]], std::size_t(offsets_[i + 1] - offsets_[i])};
  }
  std::uint64_t count() const { return count_; }
  std::size_t key_size() const { return max_; }  // the largest key
  std::size_t min_key_size() const { return min_; }
  std::size_t size_of(std::uint64_t i) const { return min_ + std::size_t(i % (max_ - min_ + 1)); }

 private:
  bool fixed() const { return min_ == max_; }
  std::size_t min_, max_;
  std::uint64_t count_ = 0;
  std::string bytes_;
  std::vector<std::uint64_t> offsets_;  // empty for fixed-size keys
};

// ---- self-checking values ------------------------------------------------------

//   [0, 8)   xxh3 of bytes [8, n), seeded by n
//   [8, 16)  xxh3 of the key
//   [16, 20) n
//   [20, 24) writer's version (diagnostics only)
//   [24, n)  the key (as much as fits), then filler that depends on the version
inline constexpr std::size_t kMinValueBytes = 24;

inline std::uint64_t key_hash(std::string_view key) { return XXH3_64bits(key.data(), key.size()); }

// Writes a value of value.size() bytes for `key` in place.
inline void fill_value(std::string_view key, std::uint32_t version, std::string& value) {
  const std::size_t n = value.size();
  char* p = value.data();
  const std::uint64_t kh = key_hash(key);
  const std::uint32_t n32 = std::uint32_t(n);
  std::memcpy(p + 8, &kh, 8);
  std::memcpy(p + 16, &n32, 4);
  std::memcpy(p + 20, &version, 4);
  const std::size_t kb = std::min(key.size(), n - kMinValueBytes);
  std::memcpy(p + 24, key.data(), kb);
  // Filler: cheap, but different per version so that a mix of two versions
  // fails the checksum.
  const std::uint64_t word = 0x0101010101010101ull * ((version * 131u + 7u) & 0xff);
  for (std::size_t j = 24 + kb; j < n;) {
    const std::size_t c = std::min<std::size_t>(8, n - j);
    std::memcpy(p + j, &word, c);
    j += c;
  }
  const std::uint64_t sum = XXH3_64bits_withSeed(p + 8, n - 8, n);
  std::memcpy(p, &sum, 8);
}

enum class Verdict { ok, too_short, wrong_length, wrong_key, bad_checksum };

inline const char* to_string(Verdict v) {
  switch (v) {
    case Verdict::ok:
      return "ok";
    case Verdict::too_short:
      return "too short";
    case Verdict::wrong_length:
      return "length differs from the embedded length";
    case Verdict::wrong_key:
      return "value belongs to another key";
    case Verdict::bad_checksum:
      return "checksum mismatch (torn or corrupt)";
  }
  return "?";
}

inline Verdict verify_value(std::string_view key, std::string_view value) {
  const std::size_t n = value.size();
  if (n < kMinValueBytes) return Verdict::too_short;
  std::uint64_t sum, kh;
  std::uint32_t n32;
  std::memcpy(&sum, value.data(), 8);
  std::memcpy(&kh, value.data() + 8, 8);
  std::memcpy(&n32, value.data() + 16, 4);
  if (n32 != n) return Verdict::wrong_length;
  if (kh != key_hash(key)) return Verdict::wrong_key;
  const std::size_t kb = std::min(key.size(), n - kMinValueBytes);
  if (std::memcmp(value.data() + 24, key.data(), kb) != 0) return Verdict::wrong_key;
  if (XXH3_64bits_withSeed(value.data() + 8, n - 8, n) != sum) return Verdict::bad_checksum;
  return Verdict::ok;
}

// "256" (fixed) or "64-4096" (uniform in the closed range).
struct SizeSpec {
  std::size_t min = 256, max = 256;
  static SizeSpec parse(const std::string& text) {
    SizeSpec s;
    const auto dash = text.find('-');
    s.min = std::stoul(text.substr(0, dash));
    s.max = dash == std::string::npos ? s.min : std::stoul(text.substr(dash + 1));
    if (s.min < kMinValueBytes || s.max < s.min)
      throw std::invalid_argument("value size must be N or MIN-MAX with 24 <= MIN <= MAX");
    return s;
  }
  std::size_t pick(Rng& rng) const { return min == max ? min : min + rng.below(max - min + 1); }
  std::string str() const {
    return min == max ? std::to_string(min) : std::to_string(min) + "-" + std::to_string(max);
  }
};

// ---- latency -------------------------------------------------------------------

// Log-linear histogram of nanoseconds: exact below 64 ns, then 32 buckets per
// power of two (under 3.2% relative error), like HdrHistogram with two
// significant digits. Fixed size and trivially copyable: it lives in the
// shared results block that forked workers write.
struct Histogram {
  static constexpr unsigned kSub = 32, kLinear = 64;
  static constexpr unsigned kBuckets = kLinear + (64 - 6) * kSub;
  std::uint64_t counts[kBuckets];
  std::uint64_t total;

  static unsigned bucket_of(std::uint64_t ns) {
    if (ns < kLinear) return unsigned(ns);
    const unsigned e = 63 - unsigned(std::countl_zero(ns));  // >= 6
    return kLinear + (e - 6) * kSub + unsigned((ns >> (e - 5)) & (kSub - 1));
  }
  static std::uint64_t lower_bound_of(unsigned b) {
    if (b < kLinear) return b;
    const unsigned e = (b - kLinear) / kSub + 6, sub = (b - kLinear) % kSub;
    return (std::uint64_t{1} << e) + (std::uint64_t(sub) << (e - 5));
  }
  void clear() { std::memset(this, 0, sizeof(*this)); }
  void record(std::uint64_t ns) {
    ++counts[bucket_of(ns)];
    ++total;
  }
  void merge(const Histogram& o) {
    for (unsigned b = 0; b < kBuckets; ++b) counts[b] += o.counts[b];
    total += o.total;
  }
  // The q-quantile (0 < q < 1), as the lower bound of its bucket; 0 if empty.
  std::uint64_t quantile(double q) const {
    if (total == 0) return 0;
    const std::uint64_t rank = std::uint64_t(std::ceil(q * double(total)));
    std::uint64_t seen = 0;
    for (unsigned b = 0; b < kBuckets; ++b) {
      seen += counts[b];
      if (seen >= rank && counts[b] != 0) return lower_bound_of(b);
    }
    return lower_bound_of(kBuckets - 1);
  }
};
static_assert(std::is_trivially_copyable_v<Histogram>, "lives in the shared results block");

}  // namespace hcbench
