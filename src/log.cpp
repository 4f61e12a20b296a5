#include "log.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/sink.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "per_process.h"

namespace hostcache::log {
namespace {

// Colour on stderr, with state of its own in each process, written with
// write(2).
//
// spdlog's console sinks write under one process-wide mutex. A child forked
// while another thread of its parent was writing inherited it locked by a
// thread it has no copy of, and blocked on its first message for ever
// (test_memoize_fork, AChildForkedWhileAThreadLogsCanLog). Taking that mutex
// across fork() instead made fork() wait for a message stuck on a full
// stderr pipe, for ever from a signal handler on the writing thread, and
// under Python for ever when the pipe's reader needed the GIL that os.fork
// holds (test_attack_fork8). Here nothing is waited for at fork, and nothing
// runs there: the first message of a process makes a sink of its own
// (per_process.h), and the parent's copy (its mutex perhaps held, its
// buffers perhaps mid-append) is left alone. No stdio either: stderr's
// FILE lock is process-local too, and only glibc's fork() resets it; a
// child of _Fork() or of a raw clone waited for ever on it in fwrite
// (test_attack_fork10, UnderscoreForkChild..., RawCloneChild...).
class PerProcessStderrSink final : public spdlog::sinks::sink {
 public:
  explicit PerProcessStderrSink(std::string pattern) : pattern_(std::move(pattern)) {}

  void log(const spdlog::details::log_msg& msg) override {
    Own& own = own_.get(pattern_);
    std::lock_guard<std::mutex> lock(own.mutex);
    msg.color_range_start = 0;
    msg.color_range_end = 0;
    spdlog::memory_buf_t formatted;
    own.formatter->format(msg, formatted);
    if (!own.color || msg.color_range_end <= msg.color_range_start || msg.color_range_end > formatted.size()) {
      write_all(formatted.data(), formatted.size());
      return;
    }
    spdlog::memory_buf_t out;
    const char* f = formatted.data();
    out.append(f, f + msg.color_range_start);
    const std::string_view colour = colour_of(msg.level);
    out.append(colour.data(), colour.data() + colour.size());
    out.append(f + msg.color_range_start, f + msg.color_range_end);
    constexpr std::string_view kReset = "\033[m";
    out.append(kReset.data(), kReset.data() + kReset.size());
    out.append(f + msg.color_range_end, f + formatted.size());
    write_all(out.data(), out.size());
  }
  void flush() override {}  // nothing is buffered
  // The pattern is fixed when the logger is made (a later one is refused:
  // the sinks of forked children are made from the first).
  void set_pattern(const std::string&) override {}
  void set_formatter(std::unique_ptr<spdlog::formatter>) override {}

 private:
  struct Own {
    explicit Own(const std::string& pattern)
        : formatter(std::make_unique<spdlog::pattern_formatter>(pattern)), color(colour_wanted()) {}
    std::mutex mutex;
    std::unique_ptr<spdlog::formatter> formatter;
    const bool color;
  };

  // A terminal that is not "dumb" (spdlog's own test keeps a static, whose
  // guard a child could inherit held).
  static bool colour_wanted() {
    if (::isatty(STDERR_FILENO) != 1) return false;
    const char* term = std::getenv("TERM");
    return term != nullptr && *term != '\0' && std::strcmp(term, "dumb") != 0;
  }
  static std::string_view colour_of(spdlog::level::level_enum level) {
    switch (level) {
      case spdlog::level::trace: return "\033[37m";
      case spdlog::level::debug: return "\033[36m";
      case spdlog::level::info: return "\033[32m";
      case spdlog::level::warn: return "\033[33m\033[1m";
      case spdlog::level::err: return "\033[31m\033[1m";
      case spdlog::level::critical: return "\033[1m\033[41m";
      default: return "";
    }
  }
  // One message, whole where the pipe allows; dropped on an error (a closed
  // or non-blocking stderr that is full): logging never fails the caller,
  // nor changes its errno.
  static void write_all(const char* p, std::size_t n) {
    const int saved = errno;
    while (n > 0) {
      const ssize_t w = ::write(STDERR_FILENO, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      p += w;
      n -= std::size_t(w);
    }
    errno = saved;
  }

  const std::string pattern_;
  PerProcess<Own> own_;
};

// Made on first use without a static initialiser: a child forked while a
// thread of its parent was inside one would wait for ever on its guard
// (test_attack_fork8, AChildForkedWhileAThreadMakesTheLoggerFinishes). Never
// freed (a message logged from a destructor at exit still has a logger).
std::atomic<spdlog::logger*> g_logger{nullptr};

}  // namespace

spdlog::logger& get() {
  if (spdlog::logger* l = g_logger.load(std::memory_order_acquire)) return *l;
  auto made = std::make_unique<spdlog::logger>(
      "hostcache", std::make_shared<PerProcessStderrSink>(
                       "[%Y-%m-%d %H:%M:%S.%e] [hostcache] [%l] [pid %P] %v"));
  made->set_level(spdlog::level::warn);
  if (const char* level = std::getenv("HOSTCACHE_LOG")) {
    made->set_level(spdlog::level::from_str(level));
  }
  spdlog::logger* none = nullptr;
  if (!g_logger.compare_exchange_strong(none, made.get(), std::memory_order_acq_rel)) {
    return *none;  // another thread's won; ours is freed
  }
  return *made.release();
}

std::atomic<int> detail::g_debug{-1};

bool detail::debug_level_now() {
  const bool on = get().should_log(spdlog::level::debug);
  g_debug.store(on ? 1 : 0, std::memory_order_relaxed);  // racing threads store the same answer
  return on;
}

}  // namespace hostcache::log
