// libFuzzer target: an untrusted segment must never crash a process.
//
// The input is laid out as a segment two ways (its first byte chooses):
//  - raw: the bytes are the whole shared-memory object;
//  - patched: a valid segment with entries in several states (live, erased,
//    overwritten, tagged, invalidated, wrapped ring) is built, then the input
//    is read as (offset, length, bytes) patches written over it.
// Then attach, get, set, erase, clear and the checker run on it. Any crash,
// out-of-bounds access (ASan), undefined behaviour (UBSan) or hang (libFuzzer
// -timeout) is a finding.
//
// Every byte is fuzzed, the stripe lock words included: the lock holds no
// pointers, a word naming a dead thread is taken over, and one naming a live
// thread costs a wait of lock_timeout (20 ms here), then a miss or busy.
//
// HOSTCACHE_FUZZ_SEEDS=DIR writes the seed corpus (valid segments) and exits.
#include <hostcache/cache.h>
#include <hostcache/inspect.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "layout.h"
#include "segment.h"

namespace {

using namespace hostcache;

constexpr std::size_t kCapacity = 192 << 10;

std::string name_for(const char* what) { return std::string("fuzz-") + what + "-" + std::to_string(::getpid()); }

Config template_config(const std::string& name) {
  Config c;
  c.name = name;
  c.capacity_bytes = kCapacity;
  c.stripes = 2;
  c.max_key_bytes = 64;
  c.max_value_bytes = 2048;
  return c;
}

// A segment with entries in every state.
void populate(Cache& cache, int variant) {
  SetOptions tagged;
  tagged.tags = {"app.model"};
  for (int i = 0; i < 60 + variant * 40; ++i) {
    const std::string k = "key" + std::to_string(i);
    cache.set(k, std::string(10 + (i * 37) % 900, char('a' + i % 26)), i % 3 ? SetOptions{} : tagged);
    if (i % 7 == 0) cache.erase("key" + std::to_string(i / 2));
    if (i % 11 == 0) cache.set("key" + std::to_string(i / 3), "overwritten");
  }
  if (variant >= 1) cache.invalidate("app.model");
  if (variant >= 2) cache.clear();
  for (int i = 0; i < 30; ++i) cache.set("late" + std::to_string(i), std::string(100, 'z'));
}

std::vector<std::uint8_t> read_object(const std::string& name) {
  std::ifstream in(Segment::path_of(name), std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_object(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::string path = Segment::path_of(name);
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) std::abort();
  if (size > 0 && ::write(fd, data, size) != ssize_t(size)) std::abort();
  ::close(fd);
}

// Every operation a worker or a tool would do.
void exercise(const std::string& name) {
  try {
    Config c = template_config(name);
    c.lock_timeout = std::chrono::milliseconds(20);
    Cache cache = Cache::open(c);  // attaches: the object exists
    std::string v;
    for (int i = 0; i < 40; ++i) cache.get("key" + std::to_string(i), v);
    cache.get("late3", v);
    cache.set("key5", "fuzzed");
    cache.set("new", std::string(700, 'n'));
    cache.erase("key9");
    cache.invalidate("app.model");
    for (int i = 0; i < 20; ++i) cache.set("more" + std::to_string(i), std::string(300, 'm'));
    cache.get("key5", v);
    (void)cache.stats();
  } catch (const Error&) {
    // A clear refusal is the right answer to a bad segment.
  }
  try {
    (void)inspect::check(name);
    (void)inspect::read(name);
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("HOSTCACHE_FUZZ_SEEDS")) {
    for (int variant = 0; variant < 3; ++variant) {
      const std::string name = name_for("seed");
      Cache::remove(name);
      {
        Cache cache = Cache::open(template_config(name));
        populate(cache, variant);
      }
      const auto image = read_object(name);
      Cache::remove(name);
      std::ofstream raw(std::string(dir) + "/raw-" + std::to_string(variant), std::ios::binary);
      raw.put(0);
      raw.write(reinterpret_cast<const char*>(image.data()), std::streamsize(image.size()));
      std::ofstream patch(std::string(dir) + "/patch-" + std::to_string(variant), std::ios::binary);
      const char p[] = {1, char(variant), 0x00, 0x10, 0x00, 0x00, 4, 'H', 'O', 'S', 'T'};
      patch.write(p, sizeof p);
    }
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string name = name_for("case");
  if (data[0] % 2 == 0) {
    write_object(name, data + 1, size - 1);
  } else {
    Cache::remove(name);
    const int variant = size > 1 ? data[1] % 3 : 0;
    {
      Cache cache = Cache::open(template_config(name));
      populate(cache, variant);
    }
    const int fd = ::open(Segment::path_of(name).c_str(), O_RDWR);
    auto* base = static_cast<std::uint8_t*>(::mmap(nullptr, kCapacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    ::close(fd);
    // Patches: 4-byte little-endian offset, 1-byte length, then the bytes.
    std::size_t p = 2;
    while (p + 5 <= size) {
      std::uint32_t off;
      std::memcpy(&off, data + p, 4);
      std::size_t len = data[p + 4];
      p += 5;
      len = std::min(len, size - p);
      for (std::size_t i = 0; i < len; ++i) {
        const std::size_t at = (off + i) % kCapacity;
        base[at] = data[p + i];
      }
      p += len;
    }
    ::munmap(base, kCapacity);
  }
  exercise(name);
  Cache::remove(name);
  return 0;
}
