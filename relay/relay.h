// relay.h — hostcache-relay: one process per host between its segment's
// outbox and a Redis Stream (DESIGN.md, "Layers above the core").
//
// Outbound: local clear()/clear(ns)/invalidate(tag) events are read from the
// outbox (outbox::poll from RelayStatus::cursor) and published with one Lua
// script per batch: XADD stream MAXLEN ~ N * host <id> kind <k> name <n> and
// HSET of the epochs hash (field g / t:<tag> / n:<ns> -> the stream id of its
// last event), atomically. A lap lost in the outbox, or a slot stuck pending
// for longer than Options::pending_timeout, is published as one global clear.
//
// Inbound: XREAD BLOCK from the last stream id seen (its timeout doubles as
// the heartbeat); events of other hosts are applied with outbox::apply (a bump
// that writes no event: a remote invalidation is never published again), then
// the id is saved in the segment (a replay after a crash costs a spurious
// miss, never a missed invalidation).
//
// Resync, on every (re)connect (resync_kind() decides, from state read in one
// script): Redis lost its data (the boot nonce is missing, changed, or newer
// than our last id) or rolled back (its last id is below ours): clear
// locally, once; we were trimmed past (our last id is below the stream's first
// entry): bump the tags/namespaces whose epoch is newer than our last id;
// otherwise replay from our last id. A fresh segment starts at the stream's
// current id and the outbox's head, bumping nothing.
//
// Staleness: a whole XREAD reply (the heartbeat, or a batch shorter than
// COUNT) proves this host current as of when that XREAD was sent. Once the
// proof is older than max(stale_bound, 2 block + 3 io_timeout), the relay
// asks for a fresh one (no BLOCK; disconnected: it reconnects at once) and,
// if none comes within block + 2 io_timeout (counted again from a SIGCONT),
// clears the local cache (docs/hostcache-relay.md, "Bounded staleness").
//
// Thread-safety: a Relay is driven by one thread (run()).
#pragma once

#include <hostcache/cache.h>
#include <hostcache/outbox.h>

#include <atomic>
#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hostcache::relay {

// A Redis Stream id "ms-seq". {0,0} means none (a fresh segment).
struct StreamId {
  std::uint64_t ms = 0, seq = 0;
  bool zero() const { return ms == 0 && seq == 0; }
  std::string str() const;
  static std::optional<StreamId> parse(std::string_view text);
  friend auto operator<=>(const StreamId&, const StreamId&) = default;
};

struct Options {
  std::string segment;                    // the hostcache segment NAME
  std::string redis_host = "127.0.0.1";
  int redis_port = 6379;
  std::string stream = "hostcache:invalidations";  // also <stream>:epochs and <stream>:nonce
  std::uint64_t maxlen = 100000;          // XADD MAXLEN ~
  std::chrono::milliseconds stale_bound{30000};  // 0: clear as soon as the connection drops
  std::chrono::milliseconds block{1000};  // XREAD BLOCK: the heartbeat period
  std::chrono::milliseconds io_timeout{2000};    // socket timeouts; a reply later than this is a dead link
  std::chrono::milliseconds connect_timeout{1000};
  std::chrono::microseconds poll_interval{500};  // how often the outbox is looked at
  std::chrono::milliseconds pending_timeout{100};  // a stuck outbox slot becomes a global clear
  std::chrono::milliseconds reconnect_min{50}, reconnect_max{1000};
  std::size_t read_count = 512;           // XREAD COUNT
  std::string password;                   // AUTH when not empty
};

// "host:port" (or "[v6]:port"); false on anything else.
bool parse_endpoint(std::string_view text, std::string& host, int& port);

// What a (re)connect finds, read in one script.
struct StreamState {
  std::string nonce;             // "<created_ms>-<random>"
  bool nonce_created = false;    // this call created it (it was missing, or was rotated)
  StreamId last_generated;       // XINFO last-generated-id; {0,0} when the stream does not exist
  std::optional<StreamId> first_entry;
  std::uint64_t length = 0;
  std::uint64_t lag = 0;         // entries after the position given (at most 1000 counted)
  std::vector<std::pair<std::string, StreamId>> epochs;  // when asked for
  std::string epochs_nonce;      // the epochs hash's mark (field "nonce"): the boot it was written in
  bool holds_position = true;    // the stream holds an entry at the position given (false when it does not exist)
  bool holds_published = true;   // ... and at the last id this relay published
  StreamId max_deleted;          // XINFO max-deleted-entry-id (Redis 7): the highest id XDEL removed
  std::optional<StreamId> last_entry;  // XINFO last-entry's id (below last_generated after an XSETID)
};

// Where a host resumes reading after a resync: the stream's last entry, or
// its last-generated id if it holds none. Not last-generated itself: after
// an operator's XSETID into the future no entry holds that id, and a
// position that the stream reaches back to but does not hold reads as a
// rollback (test_attack_relay_liveness9, AHostJoiningAfterAnXsetid...).
// Nothing lies between the two: XREAD from either returns the same.
StreamId resume_point(const StreamState& s);

// Whether the stream reaches back to `id` (read or published here) but no
// longer holds it, where no XDEL explains it: a rollback.
bool vanished(StreamId id, bool held, const StreamState& s);

// The created_ms part of a nonce (0 if it has none).
std::uint64_t nonce_created_ms(std::string_view nonce);

enum class Resync { fresh, lost, rolled_back, trimmed, replay };
const char* to_string(Resync r);

// The resync rule, as a pure function. `ours` is the last stream id seen (read
// back) by this host, `published` the last id this process published (it may
// not have been read back yet), `known_nonce` the nonce this process last saw
// ("" after a restart).
Resync resync_kind(StreamId ours, StreamId published, std::string_view known_nonce, const StreamState& s);

// The relay loop. Its state lives in the segment (outbox::RelayStatus).
class Relay {
 public:
  // The cache must outlive the relay. Reads RelayStatus to resume.
  Relay(Cache& cache, Options options);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  // Runs until `stop` becomes true (a command in flight is cut short when a
  // signal interrupts it with `stop` set). Returns 0. Installs a SIGCONT
  // handler if the process has none (SIG_DFL), to tell a resume from a
  // stop (the staleness grace starts again).
  int run(const std::atomic<bool>& stop);

  // Log sink (default: stderr through spdlog); tests may silence it.
  using LogFn = std::function<void(int level, const std::string&)>;  // 0 info, 1 warn, 2 error
  void set_log(LogFn fn);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace hostcache::relay
