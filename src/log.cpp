#include "log.h"

#include <spdlog/details/console_globals.h>
#include <spdlog/sinks/ansicolor_sink.h>
#include <spdlog/sinks/sink.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "per_process.h"

namespace hostcache::log {
namespace {

// Colour on stderr, with state of its own in each process.
//
// spdlog's console sinks write under one process-wide mutex. A child forked
// while another thread of its parent was writing inherited it locked by a
// thread it has no copy of, and blocked on its first message for ever
// (test_memoize_fork, AChildForkedWhileAThreadLogsCanLog). Taking that mutex
// across fork() instead made fork() wait for a message stuck on a full
// stderr pipe, for ever from a signal handler on the writing thread, and
// under Python for ever when the pipe's reader needed the GIL that os.fork
// holds (test_attack_fork8). Here nothing is waited for at fork, and nothing
// runs there (a raw clone() or _Fork() child too): the first message of a
// process makes a sink of its own (per_process.h), and the parent's copy
// (its mutex perhaps held, its buffers perhaps mid-append) is left alone.
class PerProcessStderrSink final : public spdlog::sinks::sink {
 public:
  explicit PerProcessStderrSink(std::string pattern) : pattern_(std::move(pattern)) {}

  void log(const spdlog::details::log_msg& msg) override {
    Own& own = own_.get(pattern_);
    std::lock_guard<std::mutex> lock(own.mutex);
    own.sink.log(msg);
  }
  void flush() override {
    Own& own = own_.get(pattern_);
    std::lock_guard<std::mutex> lock(own.mutex);
    own.sink.flush();
  }
  // The pattern is fixed when the logger is made (a later one is refused:
  // the sinks of forked children are made from the first).
  void set_pattern(const std::string&) override {}
  void set_formatter(std::unique_ptr<spdlog::formatter>) override {}

 private:
  struct Own {
    explicit Own(const std::string& pattern) { sink.set_pattern(pattern); }
    std::mutex mutex;
    spdlog::sinks::ansicolor_stderr_sink<spdlog::details::console_nullmutex> sink;
  };

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
