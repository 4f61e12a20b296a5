#include "log.h"

#include <pthread.h>
#include <spdlog/details/console_globals.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <cstdlib>

namespace hostcache::log {

spdlog::logger& get() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>(
        "hostcache", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    l->set_level(spdlog::level::warn);
    if (const char* level = std::getenv("HOSTCACHE_LOG")) {
      l->set_level(spdlog::level::from_str(level));
    }
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [hostcache] [%l] [pid %P] %v");
    // The sink writes under spdlog's console mutex. A child forked while
    // another thread of its parent was writing would inherit it locked by a
    // thread it has no copy of, and block on its first message for ever
    // (test_memoize_fork, AChildForkedWhileAThreadLogsCanLog). fork() waits
    // for the message in progress instead, and both sides start unlocked.
    // (A child made by a raw clone() or _Fork() runs no atfork handlers.)
    pthread_atfork([] { spdlog::details::console_mutex::mutex().lock(); },
                   [] { spdlog::details::console_mutex::mutex().unlock(); },
                   [] { spdlog::details::console_mutex::mutex().unlock(); });
    return l;
  }();
  return *logger;
}

}  // namespace hostcache::log
