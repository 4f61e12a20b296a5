#include "log.h"

#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <spdlog/sinks/sink.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <memory>
#include <new>
#include <mutex>
#include <string>
#include <string_view>

#include "per_process.h"
#include "stdio_fill.h"

namespace hostcache::log {
namespace {

// errno as the caller left it, on every way out.
struct KeepErrno {
  const int saved = errno;
  ~KeepErrno() { errno = saved; }
};

// The last message was written in part: its line is open in that stream.
// The stream is shared by a process and its children, so the record is
// too: a page mapped shared when the library is loaded, before any fork (a
// per-process flag let a worker's first line, or its parent's next, be
// glued to the other's fragment: test_attack_fork12, ...TornOneStartsWhole).
// Each record names its stream (device and inode of fd 2), so that a
// descendant writing elsewhere neither ends nor clears another stream's
// line (test_attack_fork13, AChild...OwnFile...), and there is one per
// stream, a few of them: a child tearing a line in a stream of its own kept
// its record in the only one and dropped its parent's (test_attack_fork14,
// AChildTearing...). A hint: two processes writing at once may both think
// the line whole, and a ninth stream torn at once takes the slot torn
// longest ago (it took the next slot round-robin, and dropped the newest
// record: test_attack_fork15, NinthTornStream...). A writer killed while it
// names a slot leaves that slot 'filling' for good: the table has one fewer.
struct TornSlot {
  std::atomic<std::uint32_t> state{0};  // kFree, kFilling (being named), kOpen
  std::atomic<std::uint64_t> dev{0};
  std::atomic<std::uint64_t> ino{0};
  std::atomic<std::uint64_t> stamp{0};  // when torn last (Torn::clock)
};
constexpr std::uint32_t kFree = 0, kFilling = 1, kOpen = 2;
struct Torn {
  TornSlot slot[8];
  std::atomic<std::uint64_t> clock{0};  // counts tears
};
// Shared by the processes of a tree through one page: lock-free words only.
static_assert(std::atomic<std::uint32_t>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free,
              "the torn-line table is shared between processes");
static_assert(sizeof(Torn) <= 4096, "the torn-line table fits the page it is mapped on");
Torn* map_torn() {
  void* p = ::mmap(nullptr, sizeof(Torn), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  static Torn fallback;  // constant-initialised
  return p == MAP_FAILED ? &fallback : new (p) Torn;
}
Torn* const g_torn = map_torn();

bool stderr_id(std::uint64_t& dev, std::uint64_t& ino) {
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  dev = std::uint64_t(st.st_dev);
  ino = std::uint64_t(st.st_ino);
  return true;
}

bool any_torn() {
  for (const TornSlot& t : g_torn->slot) {
    if (t.state.load(std::memory_order_acquire) != kFree) return true;
  }
  return false;
}

// Whether t is an open record of stream (dev, ino).
bool is_open_record_of(const TornSlot& t, std::uint64_t dev, std::uint64_t ino) {
  return t.state.load(std::memory_order_acquire) == kOpen && t.dev.load(std::memory_order_relaxed) == dev &&
         t.ino.load(std::memory_order_relaxed) == ino;
}

// The open record of stream (dev, ino), or nullptr.
TornSlot* torn_of(std::uint64_t dev, std::uint64_t ino) {
  for (TornSlot& t : g_torn->slot) {
    if (is_open_record_of(t, dev, ino)) return &t;
  }
  return nullptr;
}

// Whether fd 2's line is open (a message to it must start with '\n').
bool stderr_line_open() {
  if (!any_torn()) return false;  // the usual case: no system call
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  return stderr_id(dev, ino) && torn_of(dev, ino) != nullptr;
}

// A slot of its own for this record: a free one, else the open one torn
// longest ago, taken by CAS so that no two writers name one slot at once
// (the round-robin store let two mix one stream's dev with another's ino).
// nullptr if every slot is being named right now: the record is dropped.
TornSlot* take_slot() {
  for (int tries = 0; tries < 8; ++tries) {
    TornSlot* oldest = nullptr;
    std::uint64_t least = UINT64_MAX;
    for (TornSlot& t : g_torn->slot) {
      const std::uint32_t st = t.state.load(std::memory_order_acquire);
      if (st == kFree) {
        std::uint32_t free = kFree;
        if (t.state.compare_exchange_strong(free, kFilling, std::memory_order_acquire)) return &t;
      } else if (st == kOpen) {
        const std::uint64_t when = t.stamp.load(std::memory_order_relaxed);
        if (when < least) {
          least = when;
          oldest = &t;
        }
      }
    }
    if (oldest == nullptr) return nullptr;
    std::uint32_t open = kOpen;
    if (oldest->state.compare_exchange_strong(open, kFilling, std::memory_order_acquire)) return oldest;
  }
  return nullptr;
}

void mark_torn(std::uint64_t dev, std::uint64_t ino) {
  const std::uint64_t now = g_torn->clock.fetch_add(1, std::memory_order_relaxed) + 1;
  if (TornSlot* t = torn_of(dev, ino)) {  // torn again: the newest
    t->stamp.store(now, std::memory_order_relaxed);
    return;
  }
  TornSlot* got = take_slot();
  if (got == nullptr) return;
  got->dev.store(dev, std::memory_order_relaxed);
  got->ino.store(ino, std::memory_order_relaxed);
  got->stamp.store(now, std::memory_order_relaxed);
  got->state.store(kOpen, std::memory_order_release);
}

// After a message of n bytes of which `written` went to fd 2, where
// `was_open` said whether its line was open before.
void note_written(std::size_t written, std::size_t n, bool was_open) {
  if (written == n && !was_open) return;
  if (written == 0 && written != n) return;  // none of it: as it was
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  if (!stderr_id(dev, ino)) return;
  if (written == n) {
    // Whole, after the '\n' that ended the open line: this stream's line
    // is whole again (no other stream's record is touched; two writers
    // tearing it at once may have named two slots for it).
    for (TornSlot& t : g_torn->slot) {
      std::uint32_t open = kOpen;
      if (is_open_record_of(t, dev, ino)) t.state.compare_exchange_strong(open, kFree, std::memory_order_release);
    }
  } else {
    mark_torn(dev, ino);
  }
}

// A SIGPIPE pending for this thread itself (SigPnd in
// /proc/thread-self/status), not for the process (ShdPnd), which
// sigpending() reports together. The file is read as a stream: a long
// Groups line puts SigPnd past any fixed buffer (test_attack_fork13,
// ManyGroups...). Unknown: pending.
bool sigpipe_pending_for_this_thread() {
  // Not at fd 2: closed after reading, it closed another thread's dup2 onto
  // 2 meanwhile (test_attack_fork14, ALogLine...Dup2d...). A hole that
  // cannot be filled: unknown.
  if (!stdio_fill::fill_holes()) return true;
  const int fd = ::open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  constexpr std::string_view kKey = "\nSigPnd:";
  char buf[4096];
  std::size_t have = 0;  // bytes in buf: a carried tail, then what was read
  bool found = false;
  std::uint64_t mask = 0;
  for (;;) {
    const ssize_t r = ::read(fd, buf + have, sizeof buf - have);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    have += std::size_t(r);
    const std::string_view all(buf, have);
    const std::size_t at = all.find(kKey);
    if (at != std::string_view::npos) {
      const std::size_t end = all.find('\n', at + kKey.size());
      if (end != std::string_view::npos) {
        for (std::size_t i = at + kKey.size(); i < end; ++i) {
          const char c = all[i];
          if (c >= '0' && c <= '9') mask = mask << 4 | std::uint64_t(c - '0');
          else if (c >= 'a' && c <= 'f') mask = mask << 4 | std::uint64_t(c - 'a' + 10);
        }
        found = true;
        break;
      }
    }
    // Keep a tail long enough for the key and its value.
    constexpr std::size_t kTail = 64;
    const std::size_t keep = at != std::string_view::npos ? have - at : std::min(have, kTail);
    if (keep >= sizeof buf) break;  // no line that long
    std::memmove(buf, buf + have - keep, keep);
    have = keep;
  }
  ::close(fd);
  return !found || (mask >> (SIGPIPE - 1) & 1) != 0;
}

// One message, whole where the pipe allows, else what it took (a closed
// stderr, a non-blocking one that is full, one without a reader: EPIPE).
// SIGPIPE is blocked in this thread meanwhile, and the one this write
// raised is taken back: only a pipe's or a socket's EPIPE raises one (a
// FUSE file's or a driver's does not, and what is pending then is someone
// else's: test_attack_fork12, AKillSigpipeIsNotTakenWhen...), and only if
// none was pending for this thread before (two merge into one; one pending
// for the process is not this write's: ...NotLeftPendingBesideTheProcesss).
// Returns the bytes written.
std::size_t write_all(const char* p, std::size_t n) {
  sigset_t pipe_only;
  sigset_t before;
  sigset_t pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  sigemptyset(&pending);
  ::sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1 && sigpipe_pending_for_this_thread();
  ::pthread_sigmask(SIG_BLOCK, &pipe_only, &before);
  std::size_t written = 0;
  bool broken = false;
  while (written < n) {
    const ssize_t w = ::write(STDERR_FILENO, p + written, n - written);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      broken = w < 0 && errno == EPIPE;
      break;
    }
    written += std::size_t(w);
  }
  struct stat st {};
  if (broken && !was_pending && ::fstat(STDERR_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    const timespec now{};
    while (::sigtimedwait(&pipe_only, nullptr, &now) < 0 && errno == EINTR) {
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
  return written;
}

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
//
// A line is "[2026-12-05T06:10:11.123Z] [hostcache] [warning] [pid 42] text",
// the time in UTC, formatted here from the clock: spdlog's formatter calls
// localtime_r on a sink's first message and once a second, which takes
// glibc's tzset lock; a child forked while another thread held it (glibc's
// fork() does not reset that one) waited for ever on its first message
// (test_attack_fork11, ChildForkedWhileAThreadFormatsANewSecondLogs).
//
// Logging never fails the caller nor changes its errno (test_attack_fork11:
// the first message of a process left ENOTTY from isatty), and a stderr
// whose reader is gone drops the message instead of killing the process
// with SIGPIPE. A message a non-blocking stderr took only part of is ended
// by the next one's newline, so the next line starts whole.
//
// Not for a child of _Fork() or a raw clone of a process with other
// threads: such a child may call only async-signal-safe functions (POSIX),
// and a first message allocates (this process's sink, a long message's
// buffer), where a parent thread may have held malloc's lock at the fork.
// glibc's fork() makes a child that can log.
class PerProcessStderrSink final : public spdlog::sinks::sink {
 public:
  void log(const spdlog::details::log_msg& msg) override {
    const KeepErrno keep;
    try {
      Own& own = own_.get();
      std::lock_guard<std::mutex> lock(own.mutex);
      spdlog::memory_buf_t out;
      const bool was_open = stderr_line_open();
      if (was_open) out.push_back('\n');
      append_prefix(msg, own.color, out);
      out.append(msg.payload.data(), msg.payload.data() + msg.payload.size());
      out.push_back('\n');
      // Part of it: the line is open; none of it: as it was.
      note_written(write_all(out.data(), out.size()), out.size(), was_open);
    } catch (...) {
      // Out of memory (this process's sink, a long message's buffer): the
      // message is dropped. spdlog's own handler would write with stdio and
      // localtime_r (test_attack_fork12, ErrnoIsKeptWhenTheSinkRunsOutOfMemory).
    }
  }
  void flush() override {}  // nothing is buffered
  // The format is fixed (the sinks of forked children are made alike).
  void set_pattern(const std::string&) override {}
  void set_formatter(std::unique_ptr<spdlog::formatter>) override {}

 private:
  struct Own {
    Own() : color(colour_wanted()) {}
    std::mutex mutex;
    const bool color;
  };

  static void append_prefix(const spdlog::details::log_msg& msg, bool color, spdlog::memory_buf_t& out) {
    using namespace std::chrono;
    const auto day = floor<days>(msg.time);
    const year_month_day ymd{day};
    const hh_mm_ss<milliseconds> hms{floor<milliseconds>(msg.time - day)};
    fmt::format_to(fmt::appender(out), "[{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z] [hostcache] [",
                   int(ymd.year()), unsigned(ymd.month()), unsigned(ymd.day()), hms.hours().count(),
                   hms.minutes().count(), hms.seconds().count(), hms.subseconds().count());
    const spdlog::string_view_t level = spdlog::level::to_string_view(msg.level);
    const std::string_view colour = color ? colour_of(msg.level) : std::string_view{};
    out.append(colour.data(), colour.data() + colour.size());
    out.append(level.data(), level.data() + level.size());
    if (!colour.empty()) {
      constexpr std::string_view kReset = "\033[m";
      out.append(kReset.data(), kReset.data() + kReset.size());
    }
    fmt::format_to(fmt::appender(out), "] [pid {}] ", ::getpid());
  }

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
      "hostcache", std::make_shared<PerProcessStderrSink>());
  made->set_level(spdlog::level::warn);
  // A message that could not be formatted is reported in one line of our
  // own: spdlog's default handler takes a static mutex and calls
  // localtime_r and fprintf, the locks a forked child could inherit held.
  made->set_error_handler([](const std::string& what) {
    const KeepErrno keep;
    char line[320];
    const bool was_open = stderr_line_open();
    std::size_t n = was_open ? 1 : 0;
    line[0] = '\n';
    const auto r =
        fmt::format_to_n(line + n, sizeof line - 1 - n, "[hostcache] [error] a log message was dropped: {}", what);
    n += std::min(r.size, sizeof line - 1 - n);
    line[n++] = '\n';
    note_written(write_all(line, n), n, was_open);
  });
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
