// relay.cpp — see relay.h. One thread, two Redis connections: `pub` for
// commands (publish, state) with socket timeouts, `sub` for XREAD BLOCK, whose
// reply is awaited with ppoll() so that the outbox is looked at every
// poll_interval meanwhile.
#include "relay.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <random>

#include <spdlog/spdlog.h>

namespace hostcache::relay {

// ---- ids, endpoints, the resync rule -------------------------------------------

std::string StreamId::str() const { return std::to_string(ms) + "-" + std::to_string(seq); }

std::optional<StreamId> StreamId::parse(std::string_view t) {
  const std::size_t dash = t.find('-');
  if (dash == std::string_view::npos || dash == 0 || dash + 1 >= t.size()) return std::nullopt;
  StreamId id;
  auto r1 = std::from_chars(t.data(), t.data() + dash, id.ms);
  auto r2 = std::from_chars(t.data() + dash + 1, t.data() + t.size(), id.seq);
  if (r1.ec != std::errc() || r1.ptr != t.data() + dash || r2.ec != std::errc() || r2.ptr != t.data() + t.size()) {
    return std::nullopt;
  }
  return id;
}

bool parse_endpoint(std::string_view text, std::string& host, int& port) {
  std::string_view h, p;
  if (!text.empty() && text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    h = text.substr(1, close - 1);
    p = text.substr(close + 2);
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return false;
    h = text.substr(0, colon);
    p = text.substr(colon + 1);
    if (h.find(':') != std::string_view::npos) return false;  // a bare IPv6 address needs brackets
  }
  int value = 0;
  auto r = std::from_chars(p.data(), p.data() + p.size(), value);
  if (h.empty() || p.empty() || r.ec != std::errc() || r.ptr != p.data() + p.size() || value < 1 || value > 65535) {
    return false;
  }
  host.assign(h);
  port = value;
  return true;
}

std::uint64_t nonce_created_ms(std::string_view nonce) {
  const std::size_t dash = nonce.find('-');
  std::uint64_t ms = 0;
  auto r = std::from_chars(nonce.data(), nonce.data() + (dash == std::string_view::npos ? nonce.size() : dash), ms);
  return r.ec == std::errc() ? ms : 0;
}

const char* to_string(Resync r) {
  switch (r) {
    case Resync::fresh: return "fresh";
    case Resync::lost: return "lost";
    case Resync::rolled_back: return "rolled_back";
    case Resync::trimmed: return "trimmed";
    case Resync::replay: return "replay";
  }
  return "?";
}

// The stream reaches back to an entry this relay read (or published) but no
// longer holds it, and no XDEL explains that: Redis went back to a snapshot
// and its clock gave newer events higher ids (a host that reconnected first
// published: the last id was above ours again, and the events lost after
// the snapshot were never missed by anyone: test_attack_relay_liveness6,
// ARollbackHiddenByAPublish...; liveness7, ...FromItsPublisher...), or this
// is another Redis whose nonce is older than our position (liveness6,
// ARedisReplacedByAnother...). Trimming takes entries from the head only,
// so one at or after the first is there unless XDEL took it: an id at or
// below max-deleted-entry-id may be an operator's XDEL, which loses no event
// a host has read (before, one XDEL of the last entry cleared every host:
// liveness7, AnOperatorsXdel...). A snapshot's max-deleted-entry-id is its
// own, below every event lost after it.
bool vanished(StreamId id, bool held, const StreamState& s) {
  return !id.zero() && !held && s.first_entry && *s.first_entry <= id && s.max_deleted < id;
}

StreamId resume_point(const StreamState& s) { return s.last_entry ? *s.last_entry : s.last_generated; }

Resync resync_kind(StreamId ours, StreamId published, std::string_view known_nonce, const StreamState& s) {
  if (ours.zero()) return Resync::fresh;
  // Redis lost its data: the nonce was missing (created now), is not the one
  // this process saw, or was created after the last event we saw (a relay
  // restarted across the loss: it knows no nonce, but its last id is older).
  if (s.nonce_created || (!known_nonce.empty() && known_nonce != s.nonce) ||
      nonce_created_ms(s.nonce) > ours.ms) {
    return Resync::lost;
  }
  if (s.last_generated < std::max(ours, published)) return Resync::rolled_back;
  if (vanished(ours, s.holds_position, s) || vanished(published, s.holds_published, s)) return Resync::rolled_back;
  if (s.first_entry ? *s.first_entry > ours : s.last_generated > ours) return Resync::trimmed;
  return Resync::replay;
}

namespace {

// ---- hiredis, thinly ----------------------------------------------------------

struct ReplyFree {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

timeval to_tv(std::chrono::microseconds d) {
  timeval tv;
  tv.tv_sec = d.count() / 1000000;
  tv.tv_usec = d.count() % 1000000;
  return tv;
}

using Clock = std::chrono::steady_clock;

// SIGCONTs this process received: a relay resumed from SIGSTOP (or a
// debugger) restarts the grace of an overdue proof, whatever call it was
// stopped in. Installed by run() only where SIGCONT has no handler yet.
std::atomic<std::uint64_t> g_continued{0};
void on_sigcont(int) { g_continued.fetch_add(1, std::memory_order_relaxed); }
void watch_sigcont() {
  struct sigaction old {};
  if (::sigaction(SIGCONT, nullptr, &old) != 0 || (old.sa_flags & SA_SIGINFO) != 0 || old.sa_handler != SIG_DFL) return;
  struct sigaction sa {};
  sa.sa_handler = on_sigcont;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGCONT, &sa, nullptr);
}

class Conn {
 public:
  ~Conn() { close(); }
  bool open(const Options& o, std::string& err) {
    close();
    timeout_ = o.io_timeout;
    c_ = redisConnectWithTimeout(o.redis_host.c_str(), o.redis_port, to_tv(o.connect_timeout));
    if (c_ == nullptr || c_->err) {
      err = c_ ? c_->errstr : "out of memory";
      close();
      return false;
    }
    count_objects();
    // Socket timeouts bound every command; keepalive finds a peer that
    // vanished while we were idle (half-open).
    if (redisSetTimeout(c_, to_tv(o.io_timeout)) != REDIS_OK || redisEnableKeepAlive(c_) != REDIS_OK) {
      err = c_->errstr;
      close();
      return false;
    }
    if (!o.password.empty()) {
      Reply r = command({"AUTH", o.password});
      if (!r || r->type == REDIS_REPLY_ERROR) {
        err = r ? std::string(r->str, r->len) : error();
        close();
        return false;
      }
    }
    return true;
  }
  void close() {
    if (c_) redisFree(c_);
    c_ = nullptr;
  }
  bool ok() const { return c_ != nullptr && c_->err == 0; }
  // One command and its whole reply within the io timeout. hiredis's own
  // socket timeout bounds each read() only: a reply trickled a byte at a time
  // held the thread (and the stale bound) for as long as the peer liked
  // (test_attack_relay_liveness, ASlowCommandConnectionMustNotHoldTheStaleBoundOff).
  // On a timeout the connection is marked failed: what is left of the reply
  // would be taken for the next one's.
  Reply command(const std::vector<std::string>& args) {
    if (!send(args)) return nullptr;
    const Clock::time_point deadline = Clock::now() + timeout_;
    std::optional<Clock::time_point> late;  // when the deadline was first found passed
    for (;;) {
      Reply r;
      if (!take(r)) return nullptr;
      if (r) return r;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        // What arrived while this process did not run (a pause inside the
        // command) is read before the deadline counts: for one more timeout
        // at most, so that a trickle cannot stretch it.
        pollfd ready{c_->fd, POLLIN, 0};
        if (!late) late = Clock::now();
        if (Clock::now() - *late < timeout_ && ::poll(&ready, 1, 0) > 0) {
          if (!read_available()) return nullptr;
          continue;
        }
        fail("no whole reply within " + std::to_string(timeout_.count()) + " ms");
        return nullptr;
      }
      pollfd p{c_->fd, POLLIN, 0};
      const int n = ::poll(&p, 1, int(left.count()));
      if (n < 0 && errno == EINTR) {
        // SIGTERM: the relay stops now, not once the timeout is spent.
        if (stop_ != nullptr && stop_->load(std::memory_order_relaxed)) {
          fail("interrupted: stopping");
          return nullptr;
        }
        continue;
      }
      if (n == 0) continue;  // the deadline, checked above
      if (n < 0) {
        fail(std::string("poll: ") + std::strerror(errno));
        return nullptr;
      }
      if (!read_available()) return nullptr;
    }
  }
  bool send(const std::vector<std::string>& args) {
    if (!ok()) return false;
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAppendCommandArgv(c_, int(argv.size()), argv.data(), lens.data()) != REDIS_OK) return false;
    int done = 0;
    while (!done) {
      if (redisBufferWrite(c_, &done) != REDIS_OK) return false;
    }
    return true;
  }
  int fd() const { return c_ ? c_->fd : -1; }
  // Only after poll() said the socket is readable (it is a blocking socket).
  // The most a reply may buffer: a peer streaming one endless string made
  // hiredis buffer 749 MiB of it (test_attack_relay_liveness2, AStreamConnectionFlooded...).
  // The stream connection's replies are COUNT entries of a few hundred bytes;
  // the command connection's largest, the epochs hash, has a field per tag.
  void set_max_reply(std::size_t bytes) { max_reply_ = bytes; }
  // The most objects (elements, at any depth) one reply may make. The byte
  // cap counts what waits unparsed; hiredis 0.14 (no maxelements before 1.0)
  // makes an object of every element as it parses, and a pointer table of
  // the size an array declares: a peer declaring an endless array of small
  // integers grew the relay to 2 GiB in seconds under a 16 MiB byte cap
  // (test_attack_relay_liveness3, AnEndlessArray...).
  void set_max_objects(std::size_t n) { max_objects_ = n; }
  bool read_available() {
    if (!ok() || redisBufferRead(c_) != REDIS_OK) return false;
    if (c_->reader != nullptr && c_->reader->len > max_reply_) {
      fail("a reply of more than " + std::to_string(max_reply_ >> 20) + " MiB");
      return false;
    }
    return true;
  }
  // A complete reply already read (null if none yet); false on a protocol error.
  bool take(Reply& out) {
    void* r = nullptr;
    if (redisGetReplyFromReader(c_, &r) != REDIS_OK) {
      if (objects_ > max_objects_) fail("a reply of more than " + std::to_string(max_objects_) + " elements");
      return false;
    }
    out.reset(static_cast<redisReply*>(r));
    if (r != nullptr) objects_ = 0;  // the next reply counts afresh
    return true;
  }
  std::string error() const { return c_ ? std::string(c_->errstr) : std::string("not connected"); }
  void set_stop(const std::atomic<bool>* stop) { stop_ = stop; }

 private:
  void fail(const std::string& why) {
    c_->err = REDIS_ERR_IO;
    std::snprintf(c_->errstr, sizeof c_->errstr, "%s", why.c_str());
  }
  // hiredis's own object functions, wrapped to count a reply's objects: an
  // over-long reply is refused (its create function answers null, which
  // hiredis reports as an error) before its objects or its table are made.
  void count_objects() {
    base_fn_ = c_->reader->fn;
    counted_fn_ = *base_fn_;
    counted_fn_.createString = [](const redisReadTask* t, char* str, std::size_t len) -> void* {
      Conn* c = of(t);
      return c->admit(1) ? c->base_fn_->createString(t, str, len) : nullptr;
    };
    counted_fn_.createArray = [](const redisReadTask* t, int elements) -> void* {
      Conn* c = of(t);
      return c->admit(1 + std::size_t(std::max(elements, 0))) ? c->base_fn_->createArray(t, elements) : nullptr;
    };
    counted_fn_.createInteger = [](const redisReadTask* t, long long v) -> void* {
      Conn* c = of(t);
      return c->admit(1) ? c->base_fn_->createInteger(t, v) : nullptr;
    };
    counted_fn_.createNil = [](const redisReadTask* t) -> void* {
      Conn* c = of(t);
      return c->admit(1) ? c->base_fn_->createNil(t) : nullptr;
    };
    c_->reader->fn = &counted_fn_;
    c_->reader->privdata = this;
    objects_ = 0;
  }
  static Conn* of(const redisReadTask* t) { return static_cast<Conn*>(t->privdata); }
  // An array counts its declared elements when it is made (its table is
  // allocated then); its elements count again as they come: at most twice.
  bool admit(std::size_t n) {
    objects_ += n;
    return objects_ <= max_objects_;
  }
  redisReplyObjectFunctions counted_fn_{};
  const redisReplyObjectFunctions* base_fn_ = nullptr;
  std::size_t objects_ = 0, max_objects_ = std::size_t(1) << 22;
  redisContext* c_ = nullptr;
  std::chrono::milliseconds timeout_{2000};
  const std::atomic<bool>* stop_ = nullptr;
  std::size_t max_reply_ = std::size_t(256) << 20;
};

std::string str_of(const redisReply* r) {
  if (r == nullptr) return {};
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR) {
    return std::string(r->str, r->len);
  }
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  return {};
}

std::uint64_t int_of(const redisReply* r) {
  if (r == nullptr) return 0;
  if (r->type == REDIS_REPLY_INTEGER) return r->integer < 0 ? 0 : std::uint64_t(r->integer);
  std::uint64_t v = 0;
  const std::string s = str_of(r);
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

// ---- the scripts ---------------------------------------------------------------

// KEYS: stream, epochs, nonce. ARGV: maxlen, host, nonce we resynced against,
// then kind, name pairs. Refuses (NONCE) if Redis is not the data set we
// resynced against: the caller resyncs first and publishes again.
// A script is not rolled back when a command in it fails: one HSET comes
// first (a field nobody reads; never the boot's mark, whose absence tells a
// lost hash), so that a Redis refusing HSET (an ACL) refuses before the
// first XADD. Before, every retry XADDed the batch again and a lapped
// outbox's global clear cleared the other hosts every 200 ms
// (test_attack_relay_liveness4, HsetRefused). Under maxmemory, Redis
// refuses a script at its first write, never halfway.
constexpr const char* kPublishLua = R"lua(
local n = redis.call('GET', KEYS[3])
if n ~= ARGV[3] then return {err = 'NONCE changed'} end
redis.call('HSET', KEYS[2], 'probe', '')
local ids = {}
for i = 4, #ARGV, 2 do
  local kind, name = ARGV[i], ARGV[i + 1]
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'host', ARGV[2], 'kind', kind, 'name', name)
  local field = 'g'
  if kind == 'tag' then field = 't:' .. name elseif kind == 'ns' then field = 'n:' .. name end
  redis.call('HSET', KEYS[2], field, id)
  ids[#ids + 1] = id
end
return ids
)lua";

// KEYS: stream, epochs, nonce, alive. ARGV: maxlen, host, random,
// rotate_from ('': no), position for the lag count ('': none), '1' to return
// the epochs, the position they are wanted since (whose entry the reply says
// the stream holds, or not), the most epochs fields to scan, the last id
// this relay published (the same said of it). The reply ends with the
// stream's max-deleted-entry-id (Redis 7: the highest id XDEL removed).
// Only the epochs newer than that position come back (and the boot's mark),
// scanned in steps: a host trimmed past needs no more, and a hash of a field
// per tag, millions of them, made a reply over the relay's caps, refused at
// every reconnect (test_attack_relay_liveness4, BigEpochs). More than
// 100,000 newer ones come back as one global epoch: a clear; so does a hash
// of more than 100,000 fields, unscanned (HLEN is O(1)): a scan of F fields
// inside the script holds Redis for everyone, 4 s for 2.5 M, past the
// relay's timeout, and the trimmed host never resynced while its scans made
// the others drop their links (test_attack_relay_liveness5, ATrimmedResync
// AgainstMillionsOfTags...). A scan is at most 100,000 fields, ~0.2 s.
// First it writes as a publish does: one XADD to the alive stream (its one
// entry replaced) and one HSET (the publish script's probe field). A Redis
// that refuses either (maxmemory under noeviction, an ACL, a read-only
// replica) cannot carry any host's invalidations either: the script fails,
// and the relay has no proof, as with Redis gone. Before, such a Redis read
// fine, every host stayed "current", and another host's refused publishes
// were served stale for as long as it lasted (test_attack_relay_liveness3,
// PublishRefused).
// Creates the nonce when it is missing (or equals rotate_from), with a "boot"
// entry in the stream so that its last id is never 0-0 afterwards, and
// writes it into the epochs hash too (field "nonce"): a hash without it was
// lost (evicted, deleted) since the boot, and with it the epochs a trimmed
// host needs.
constexpr const char* kStateLua = R"lua(
redis.call('XADD', KEYS[4], 'MAXLEN', '1', '*', 'host', ARGV[2])
redis.call('HSET', KEYS[2], 'probe', '')
local nonce = redis.call('GET', KEYS[3])
local created = 0
if (not nonce) or (ARGV[4] ~= '' and nonce == ARGV[4]) then
  local t = redis.call('TIME')
  nonce = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) .. '-' .. ARGV[3]
  redis.call('SET', KEYS[3], nonce)
  redis.call('HSET', KEYS[2], 'nonce', nonce)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'host', ARGV[2], 'kind', 'boot', 'name', '')
  created = 1
end
local last, first, len, lag, at, at_pub, deleted, last_entry = '0-0', '', 0, 0, 0, 0, '0-0', ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    local k, v = info[i], info[i + 1]
    if k == 'last-generated-id' then last = v
    elseif k == 'length' then len = v
    elseif k == 'first-entry' and v then first = v[1]
    elseif k == 'last-entry' and v then last_entry = v[1]
    elseif k == 'max-deleted-entry-id' then deleted = v end
  end
  if ARGV[5] ~= '' then
    lag = #redis.call('XRANGE', KEYS[1], '(' .. ARGV[5], '+', 'COUNT', 1000)
  end
  if ARGV[7] ~= '0-0' then
    at = #redis.call('XRANGE', KEYS[1], ARGV[7], ARGV[7], 'COUNT', 1)
  end
  if ARGV[9] ~= '0-0' then
    at_pub = #redis.call('XRANGE', KEYS[1], ARGV[9], ARGV[9], 'COUNT', 1)
  end
end
local epochs = {}
if ARGV[6] == '1' then
  local bms, bseq = string.match(ARGV[7], '^(%d+)-(%d+)$')
  bms, bseq = tonumber(bms) or 0, tonumber(bseq) or 0
  local mark, newer, cursor = redis.call('HGET', KEYS[2], 'nonce'), 0, '0'
  local cap = tonumber(ARGV[8]) or 100000
  if redis.call('HLEN', KEYS[2]) > cap + 2 then cursor = nil; newer = cap + 1 end
  while cursor do
    local r = redis.call('HSCAN', KEYS[2], cursor, 'COUNT', 1000)
    cursor = r[1]
    local kv = r[2]
    for i = 1, #kv, 2 do
      local f, v = kv[i], kv[i + 1]
      local ms, seq = string.match(v, '^(%d+)-(%d+)$')
      if f ~= 'nonce' and ms and (tonumber(ms) > bms or (tonumber(ms) == bms and tonumber(seq) > bseq)) then
        newer = newer + 1
        if newer <= cap then
          epochs[#epochs + 1] = f
          epochs[#epochs + 1] = v
        end
      end
    end
    if cursor == '0' then cursor = nil end
  end
  if newer > cap then epochs = {'g', last} end
  if mark then
    epochs[#epochs + 1] = 'nonce'
    epochs[#epochs + 1] = mark
  end
end
return {nonce, created, last, first, len, lag, epochs, at, at_pub, deleted, last_entry}
)lua";

// The most epochs fields one state script scans: 100,000, fewer where the
// timeout cannot wait for so many (250 a millisecond, a quarter of what the
// review's 2-core VM scanned). A scan past the timeout was refused at every
// reconnect: with --timeout-ms 60 and 100,000 fields (~100 ms) the trimmed
// host never resynced and cleared every S + G with Redis fine
// (test_attack_relay_liveness6, HashAtTheLimit); past the cap it clears once.
std::uint64_t epochs_scan_cap(std::chrono::milliseconds io_timeout) {
  const auto ms = std::uint64_t(std::max<std::int64_t>(0, io_timeout.count()));
  return std::clamp<std::uint64_t>(ms * 250, 1000, 100000);
}

const char* kind_name(outbox::Kind k) {
  switch (k) {
    case outbox::Kind::clear: return "clear";
    case outbox::Kind::tag: return "tag";
    case outbox::Kind::ns: return "ns";
  }
  return "clear";
}

std::optional<outbox::Kind> kind_of(std::string_view s) {
  if (s == "clear") return outbox::Kind::clear;
  if (s == "tag") return outbox::Kind::tag;
  if (s == "ns") return outbox::Kind::ns;
  return std::nullopt;  // "boot" and anything newer: not an invalidation
}

std::string random_hex() {
  std::random_device rd;
  std::uint64_t v = (std::uint64_t(rd()) << 32) ^ rd();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int shift = 60; shift >= 0; shift -= 4) out.push_back(kHex[(v >> shift) & 15]);
  return out;
}

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// ---- the relay -------------------------------------------------------------------

struct Relay::State {
  Cache& cache;
  Options o;
  LogFn log;
  std::string host;
  std::string k_stream, k_epochs, k_nonce, k_alive;
  outbox::RelayStatus st;
  Conn pub, sub;
  bool connected = false;
  std::string known_nonce;
  StreamId pos;        // the last stream id seen (== st.last_id)
  StreamId published;  // the last id this process published
  // The saved ids were of another --stream (or of none known): this host
  // starts afresh here, and clears once, for it missed what this stream
  // carried before it came.
  bool moved = false;
  std::pair<StreamId, StreamId> moved_from;  // while moved: the ids saved for the old stream (position, published)
  std::uint64_t stream_hash = 0;  // of o.stream
  std::string sha_publish, sha_state;
  bool xread_out = false;
  bool xread_blocks = true;  // the XREAD in flight has BLOCK (else Redis answers at once)
  // last_contact: the time as of which this host is proven current: when the
  // XREAD that proved it was sent (a reply may have waited in the socket while
  // this process did not run), or the resync that brought it up to date.
  Clock::time_point xread_sent{}, last_contact{}, last_state_check{}, last_save{}, next_attempt{};
  // The proof older than soft_bound(): since when (or since the process ran
  // again after a pause, whichever is later).
  std::optional<Clock::time_point> overdue_since;
  Clock::time_point resumed_at{};
  std::uint64_t continued_seen = 0;
  // The proof (last_contact) for which a resume already restarted the grace:
  // once per proof, or a SIGCONT every G, or a relay stopped and run in
  // turn, held the clear off for ever with Redis down (test_attack_relay_liveness3).
  std::optional<Clock::time_point> extended_for;
  // The proof a start or a resume (of this relay or an earlier one) was
  // given its one grace for.
  std::optional<Clock::time_point> start_grace_for;
  // When this process's resume marked the grace as given (start_grace_for),
  // for the exit to take an unspent one back.
  std::optional<Clock::time_point> resume_marked_at;
  std::chrono::milliseconds backoff{0};
  std::uint64_t pending_seq = ~std::uint64_t(0);
  Clock::time_point pending_since{};
  // A publish Redis refused (OOM under maxmemory, an ACL): retried from
  // here, with a backoff, on a link kept open (its reads still prove).
  Clock::time_point publish_retry_at{};
  std::chrono::milliseconds publish_backoff{0};
  std::uint64_t publish_refusals = 0, state_refusals = 0;
  std::uint64_t failed_attempts = 0;

  State(Cache& c, Options opt) : cache(c), o(std::move(opt)) {
    host = outbox::host_id(cache);
    k_stream = o.stream;
    k_epochs = o.stream + ":epochs";
    k_nonce = o.stream + ":nonce";
    k_alive = o.stream + ":alive";
    st = outbox::relay_status(cache);
    pos = StreamId{st.last_id_ms, st.last_id_seq};
    // What an earlier relay of this host published: a rollback that lost
    // its last publish, read by nobody, was forgotten with its restart
    // (test_attack_relay_liveness8, ARollbackOfAnUnreadPublish...).
    published = StreamId{st.published_id_ms, st.published_id_seq};
    // Ids saved for another stream are not this one's: read as this
    // stream's, they looked like its rollback, and every host already here
    // cleared (test_attack_relay_liveness9, AHostMovedToAnotherStream...).
    stream_hash = outbox::hash_stream_key(o.stream);
    // Until its resync has cleared, saves keep the old stream's hash, so
    // that a relay killed before that still clears after its restart.
    const bool any = !(pos.zero() && published.zero());
    if (st.stream_hash != 0 ? st.stream_hash != stream_hash : any) {
      moved = true;
      moved_from = {pos, published};
      pos = {};
      published = {};
    }
  }

  void say(int level, const std::string& m) {
    if (log) {
      log(level, m);
      return;
    }
    if (level == 0) spdlog::info("{}", m);
    else if (level == 1) spdlog::warn("{}", m);
    else spdlog::error("{}", m);
  }

  void save() {
    st.heartbeat_ms = outbox::now_ms();
    st.proven_ms = st.heartbeat_ms - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - last_contact).count();
    // Its parity says whether a restart was given its grace for this proof.
    st.proven_ms = (st.proven_ms & ~std::int64_t{1}) | (start_grace_for == last_contact ? 1 : 0);
    st.connected = connected;
    // Until then the old stream's ids stay too, whole: a relay moved back
    // before it had resynced here resumes there where it was (saving 0-0
    // under the old hash read as a fresh start there, and the invalidations
    // published meanwhile were lost: test_attack_relay_liveness10,
    // MovedAndBack; the same for ids saved without a hash, IdsWithoutAHash).
    const StreamId& saved_pos = moved ? moved_from.first : pos;
    const StreamId& saved_published = moved ? moved_from.second : published;
    st.last_id_ms = saved_pos.ms;
    st.last_id_seq = saved_pos.seq;
    st.published_id_ms = saved_published.ms;
    st.published_id_seq = saved_published.seq;
    if (!moved) st.stream_hash = stream_hash;
    outbox::set_relay_status(cache, st);
    last_save = Clock::now();
  }

  void clear_local() { outbox::apply(cache, outbox::Kind::clear, ""); }

  bool apply_remote(outbox::Kind k, const std::string& name) {
    try {
      outbox::apply(cache, k, name);
      ++st.applied;
      return true;
    } catch (const std::exception& e) {
      // A name this host could not have used (over its limits): no entry
      // here carries it.
      say(1, std::string("skipping a remote event: ") + e.what());
      return false;
    }
  }

  // EVALSHA, falling back to EVAL when the script cache was flushed.
  Reply eval(const std::string& sha, const char* body, std::vector<std::string> args) {
    std::vector<std::string> cmd{"EVALSHA", sha};
    cmd.insert(cmd.end(), args.begin(), args.end());
    Reply r = pub.command(cmd);
    if (r && r->type == REDIS_REPLY_ERROR && std::string_view(r->str, r->len).starts_with("NOSCRIPT")) {
      cmd[0] = "EVAL";
      cmd[1] = body;
      r = pub.command(cmd);
    }
    return r;
  }

  bool load_scripts() {
    Reply a = pub.command({"SCRIPT", "LOAD", kPublishLua});
    between_commands();  // two commands that may each take a timeout
    Reply b = pub.command({"SCRIPT", "LOAD", kStateLua});
    if (!a || !b || a->type != REDIS_REPLY_STRING || b->type != REDIS_REPLY_STRING) return false;
    sha_publish = str_of(a.get());
    sha_state = str_of(b.get());
    return true;
  }

  std::optional<StreamState> state_call(const std::string& rotate_from, bool want_epochs, bool want_lag) {
    Reply r = eval(sha_state, kStateLua,
                   {"4", k_stream, k_epochs, k_nonce, k_alive, std::to_string(o.maxlen), host, random_hex(), rotate_from,
                    want_lag ? pos.str() : std::string(), want_epochs ? "1" : "0", pos.str(),
                    std::to_string(epochs_scan_cap(o.io_timeout)), published.str()});
    if (!r) return std::nullopt;
    if (r->type == REDIS_REPLY_ERROR) {
      if (state_refusals++ % 20 == 0) {
        say(2, "state script refused (" + std::to_string(state_refusals) +
                   " so far; a Redis that takes no writes proves nothing): " + str_of(r.get()));
      }
      return std::nullopt;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 11) {
      say(2, "state script: unexpected reply " + str_of(r.get()));
      return std::nullopt;
    }
    StreamState s;
    s.nonce = str_of(r->element[0]);
    s.nonce_created = int_of(r->element[1]) != 0;
    s.last_generated = StreamId::parse(str_of(r->element[2])).value_or(StreamId{});
    if (const std::string f = str_of(r->element[3]); !f.empty()) s.first_entry = StreamId::parse(f);
    s.length = int_of(r->element[4]);
    s.lag = int_of(r->element[5]);
    s.holds_position = int_of(r->element[7]) != 0;
    s.holds_published = int_of(r->element[8]) != 0;
    s.max_deleted = StreamId::parse(str_of(r->element[9])).value_or(StreamId{});
    if (const std::string l = str_of(r->element[10]); !l.empty()) s.last_entry = StreamId::parse(l);
    const redisReply* ep = r->element[6];
    if (ep->type == REDIS_REPLY_ARRAY) {
      for (std::size_t i = 0; i + 1 < ep->elements; i += 2) {
        if (str_of(ep->element[i]) == "nonce") {
          s.epochs_nonce = str_of(ep->element[i + 1]);
        } else if (auto id = StreamId::parse(str_of(ep->element[i + 1]))) {
          s.epochs.emplace_back(str_of(ep->element[i]), *id);
        }
      }
    }
    return s;
  }

  // The resync rule of relay.h, against what Redis holds now.
  bool resync() {
    const Clock::time_point asked = Clock::now();
    if (xread_out) {
      // An XREAD from the old position is in flight on `sub`: its reply would
      // start from there, not from where the resync leaves us. Drop it with
      // its connection (the next XREAD reads from the new position).
      std::string err;
      xread_out = false;
      if (!sub.open(o, err)) return false;
    }
    auto s = state_call("", false, false);
    if (!s) return false;
    Resync k = resync_kind(pos, published, known_nonce, *s);
    if (k == Resync::trimmed) {  // again, with the epochs, read atomically with the stream's state
      s = state_call("", true, false);
      if (!s) return false;
      k = resync_kind(pos, published, known_nonce, *s);
      // The epochs are whole only in a hash of this boot. Without its mark,
      // the hash was lost with the stream (an allkeys eviction, a DEL): a
      // trimmed host bumped what the new hash held and missed the rest,
      // silently (test_attack_relay_liveness3, KeysEvicted). Rotated: every
      // host clears once, as when Redis loses everything.
      if (k == Resync::trimmed && s->epochs_nonce != s->nonce) {
        say(1, "resync: the epochs hash is gone or not of this stream's boot; every host clears once");
        k = Resync::rolled_back;
      }
    }
    const StreamId before = pos;
    switch (k) {
      case Resync::fresh:
        if (s->last_generated.zero()) {  // the nonce outlived the stream: start a new boot
          s = state_call(s->nonce, false, false);
          if (!s) return false;
        }
        pos = resume_point(*s);
        if (moved) {
          say(1, "resync: the saved position is of another stream; this host clears once");
          clear_local();
          ++st.resync_lost;
        }
        break;
      case Resync::rolled_back: {
        // Rotate the nonce (only if nobody did yet): every other host then
        // sees "lost", even one whose own last id is below the snapshot's.
        const std::string seen = s->nonce;
        s = state_call(seen, false, false);
        if (!s) return false;
        [[fallthrough]];
      }
      case Resync::lost:
        clear_local();
        ++st.resync_lost;
        pos = resume_point(*s);
        published = {};
        break;
      case Resync::trimmed: {
        bool global = false;
        for (const auto& [field, id] : s->epochs) global = global || (field == "g" && id > before);
        if (global) {
          apply_remote(outbox::Kind::clear, "");
        } else {
          for (const auto& [field, id] : s->epochs) {
            if (id <= before || field.size() < 2) continue;
            if (field.starts_with("t:")) apply_remote(outbox::Kind::tag, field.substr(2));
            else if (field.starts_with("n:")) apply_remote(outbox::Kind::ns, field.substr(2));
          }
        }
        ++st.resync_trimmed;
        pos = resume_point(*s);
        break;
      }
      case Resync::replay:
        // Nothing after `pos` has been read yet: the XREAD that reads it is
        // the proof. A link that fails on every XREAD (or an ACL that denies
        // it) reconnects and replays for ever without one, and the stale
        // bound holds (test_attack_relay_liveness, AStreamConnectionThatDiesOnEveryXread...).
        ++st.resync_replay;
        break;
    }
    moved = false;
    if (k != Resync::replay) prove(asked);  // cleared, bumped, or started afresh: current as of the state read
    known_nonce = s->nonce;
    save();
    say(0, std::string("resync: ") + to_string(k) + " (from " + before.str() + ", stream at " +
               s->last_generated.str() + ")");
    return true;
  }

  bool connect() {
    std::string err;
    const auto step = [&](bool ok) {
      between_commands();
      return ok;
    };
    if (!step(pub.open(o, err)) || !step(sub.open(o, err)) || !step(load_scripts())) {
      if (err.empty()) err = pub.error();
      if (failed_attempts++ % 20 == 0) {
        say(1, "cannot reach redis " + o.redis_host + ":" + std::to_string(o.redis_port) + ": " + err);
      }
      pub.close();
      sub.close();
      return false;
    }
    if (!step(resync())) {
      if (failed_attempts++ % 20 == 0) {
        const std::string why = pub.error();
        say(1, "resync failed: " + (why.empty() ? std::string("Redis refused the state script (logged above)") : why));
      }
      pub.close();
      sub.close();
      return false;
    }
    connected = true;
    failed_attempts = 0;
    backoff = std::chrono::milliseconds(0);
    xread_out = false;
    last_state_check = Clock::now();
    save();
    return true;
  }

  void drop(const std::string& why) {
    const bool was = connected;
    if (was) say(1, "connection lost: " + why);
    connected = false;
    xread_out = false;
    pub.close();
    sub.close();
    backoff = std::clamp(backoff * 2, o.reconnect_min, o.reconnect_max);
    next_attempt = Clock::now() + backoff;
    if (was && o.stale_bound.count() == 0) stale_clear(Clock::now());
    save();
  }

  void stale_clear(Clock::time_point now) {
    clear_local();
    ++st.stale_clears;
    last_contact = now;
    overdue_since.reset();
    say(1, "redis unreachable past the stale bound: cleared the local cache");
    save();
  }

  // Between the commands of a reconnect, each of which may take a timeout:
  // the bound is checked there too (a reconnect of slow commands stretched
  // it: test_attack_relay_liveness2). With --stale-bound 0 the loop's
  // stale_tick, once a second, is enough.
  void between_commands() {
    if (o.stale_bound.count() != 0) staleness(Clock::now());
  }

  void stale_tick(Clock::time_point now) {  // --stale-bound 0, disconnected: once a second while down
    if (now - last_contact >= std::chrono::milliseconds(1000)) stale_clear(now);
  }

  // The age the proof may reach before the relay insists on a fresh one: the
  // bound, but never less than a healthy link's proof reaches (a heartbeat's
  // is dated at its send: on a link slow but within the timeout, up to two
  // heartbeats and three timeouts old, a state check in between). Below
  // that, a paused or slightly slow relay cleared with Redis fine
  // (test_attack_relay_liveness2, OddBound, SlowRedis).
  std::chrono::milliseconds soft_bound() const { return std::max(o.stale_bound, 2 * o.block + 3 * o.io_timeout); }
  // How long an overdue proof has to come: the XREAD in flight, a command
  // ahead of the next one, and that one.
  std::chrono::milliseconds grace() const { return o.block + 2 * o.io_timeout; }

  void prove(Clock::time_point as_of) {
    last_contact = std::max(last_contact, as_of);
    if (Clock::now() - last_contact < soft_bound()) overdue_since.reset();
  }

  // Once the last proof is older than soft_bound() the relay is overdue:
  // connected, its next XREAD asks for an answer at once (no BLOCK);
  // disconnected, it reconnects at once (no backoff). If no proof comes
  // within grace() of becoming overdue (or of resuming, after a pause), it
  // clears the local cache. Called every loop and between a reconnect's commands (a
  // reconnect of slow commands stretched the bound: test_attack_relay_liveness2).
  void staleness(Clock::time_point now) {
    if (const std::uint64_t c = g_continued.load(std::memory_order_relaxed); c != continued_seen) {
      continued_seen = c;
      resumed(now);
    }
    if (now - last_contact < soft_bound()) {
      overdue_since.reset();
      return;
    }
    if (!overdue_since) {
      // Counted from when it became overdue, not from when this was noticed
      // (between the commands of a slow reconnect: seconds later).
      overdue_since = std::max(last_contact + soft_bound(), resumed_at);
      next_attempt = std::min(next_attempt, now);
    }
    if (now - *overdue_since >= grace()) {
      stale_clear(now);
    }
  }

  // A wait that took far longer than asked: this process did not run (it
  // was stopped, or starved). The grace of an overdue proof could not be
  // used meanwhile, and starts again: a relay resumed past the bound with
  // Redis fine reads what waited, reconnects if its links were closed, and
  // catches up without clearing (test_attack_relay_liveness2).
  void after_wait(Clock::time_point before, std::chrono::microseconds asked) {
    const Clock::time_point now = Clock::now();
    if (now - before > asked + std::chrono::milliseconds(100)) resumed(now);
  }

  // This process ran again after a stop: the grace starts again, once per proof.
  // A resume before the proof is overdue (a stray SIGCONT, the one a
  // supervisor sends with SIGTERM, a wait 100 ms late) extends nothing and
  // spends nothing: before, it took the proof's one grace, and a stop past
  // the bound soon after cleared on its resume, Redis fine
  // (test_attack_relay_liveness5, HiccupThenPause). One that extends the
  // proof is saved (the proof's odd millisecond), as a start's grace is: a
  // relay resumed and then restarted got a second grace for one proof,
  // S + 3G (test_attack_relay_liveness4, SigcontThenRestart).
  void resumed(Clock::time_point now) {
    if (extended_for == last_contact || now - last_contact < soft_bound()) return;
    extended_for = last_contact;
    start_grace_for = last_contact;
    resume_marked_at = now;
    resumed_at = now;
    if (overdue_since) overdue_since = now;
  }

  // At exit: what is left of the grace a resume of this process gave the
  // proof goes to the next start, and no more. The proof is saved dated S
  // before the resume and marked given, so that the next start's grace ends
  // where the resume's did: a relay stopped past the bound and sent SIGTERM
  // with SIGCONT still catches up by replay after its restart, without a
  // clear (test_attack_relay_liveness5, StoppedThenRestarted/Sigterm).
  // Before, the exit took an unspent-looking grace back whole (within one
  // timeout of the resume), and the next start gave a fresh G: one proof
  // bought S + 2G and two timeouts against a hung Redis
  // (test_attack_relay_liveness6, ASigtermWithinATimeoutOfAResume...).
  void hand_over_grace() {
    if (!resume_marked_at || start_grace_for != last_contact) return;
    const Clock::time_point dated = *resume_marked_at - soft_bound();
    if (dated <= last_contact) return;
    last_contact = dated;
    start_grace_for = extended_for = last_contact;
  }

  bool publish_pending(Clock::time_point now) {
    if (now < publish_retry_at) return true;  // refused: not yet again
    const outbox::Polled p = outbox::poll(cache, st.cursor, 256);
    std::vector<std::pair<const char*, std::string>> batch;
    std::uint64_t next = p.next, overflows = 0;
    if (p.lost) {
      batch.emplace_back("clear", "");
      overflows = 1;
    } else {
      for (const auto& e : p.events) batch.emplace_back(kind_name(e.kind), e.name);
      if (p.pending) {
        if (pending_seq != p.next) {
          pending_seq = p.next;
          pending_since = now;
        } else if (now - pending_since > o.pending_timeout) {
          batch.emplace_back("clear", "");  // its writer died halfway: what it was, nobody knows
          next = p.next + 1;
          overflows = 1;
        }
      }
    }
    if (batch.empty()) return true;
    std::vector<std::string> args{"3", k_stream, k_epochs, k_nonce, std::to_string(o.maxlen), host, known_nonce};
    for (auto& [k, n] : batch) {
      args.emplace_back(k);
      args.push_back(std::move(n));
    }
    Reply r = eval(sha_publish, kPublishLua, std::move(args));
    if (!r) return false;
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string e = str_of(r.get());
      if (e.find("NONCE") != std::string::npos) return resync();  // publish again on the next round
      // Refused, not lost: the events stay in the outbox (its cursor is not
      // moved) and go once Redis takes writes again. The link stays: it
      // still reads, and a reconnect per refusal (every 50 ms) kept this host
      // from reading at all, so that it cleared itself every S + G with its
      // reads fine (test_attack_relay_liveness3, PublishRefused).
      if (publish_refusals++ % 20 == 0) {
        say(2, "publish refused (" + std::to_string(publish_refusals) + " so far; the events wait in the outbox): " + e);
      }
      publish_backoff = std::clamp(publish_backoff * 2, o.reconnect_min, o.reconnect_max);
      publish_retry_at = now + publish_backoff;
      return true;
    }
    publish_backoff = std::chrono::milliseconds(0);
    publish_retry_at = {};
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
      if (auto id = StreamId::parse(str_of(r->element[r->elements - 1]))) published = *id;
    }
    if (overflows) {
      say(1, p.lost ? "outbox lap lost: published one global clear"
                    : "outbox slot stuck: published one global clear");
      pending_seq = ~std::uint64_t(0);
    }
    st.published += batch.size();
    st.overflow_clears += overflows;
    st.cursor = next;
    save();
    return true;
  }

  bool send_xread() {
    const bool block = !overdue_since.has_value();
    std::vector<std::string> cmd{"XREAD"};
    if (block) {
      cmd.emplace_back("BLOCK");
      cmd.push_back(std::to_string(o.block.count()));
    }
    for (std::string a : {std::string("COUNT"), std::to_string(o.read_count), std::string("STREAMS"), k_stream,
                          pos.str()}) {
      cmd.push_back(std::move(a));
    }
    const Clock::time_point sent = Clock::now();
    if (!sub.send(cmd)) return false;
    xread_out = true;
    xread_blocks = block;
    xread_sent = sent;
    return true;
  }

  // When the XREAD in flight is overdue: a link that has not answered by then is dead.
  std::chrono::milliseconds xread_deadline() const { return xread_blocks ? o.block + o.io_timeout : o.io_timeout; }

  // True: we may have been trimmed past since `prev` (or Redis changed under
  // us): the caller resyncs instead of applying the batch.
  bool suspicious(StreamId prev, std::optional<StreamState>& s) {
    s = state_call("", false, false);
    if (!s) return true;
    if (s->nonce != known_nonce) return true;
    return s->first_entry ? *s->first_entry > prev : s->last_generated > prev;
  }

  bool handle_xread(const redisReply* r) {
    xread_out = false;
    if (r->type == REDIS_REPLY_NIL) {  // the BLOCK timeout (the heartbeat), or nothing new at once
      prove(xread_sent);
      return true;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      say(2, "XREAD: " + str_of(r));
      return false;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_ARRAY ||
        r->element[0]->elements < 2 || r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
      say(2, "XREAD: unexpected reply");
      return false;
    }
    const redisReply* entries = r->element[0]->element[1];
    const StreamId prev = pos;
    // Trimmed past? Then every remaining entry is newer than prev, and a
    // stream trimmed with MAXLEN ~ N keeps at least N: the batch is full.
    if (entries->elements >= std::min<std::size_t>(o.read_count, o.maxlen)) {
      std::optional<StreamState> s;
      if (suspicious(prev, s)) {
        if (!s) return false;
        say(1, "a full batch behind a trimmed stream: resync");
        return resync();
      }
    }
    std::int64_t newest_ms = -1;
    for (std::size_t i = 0; i < entries->elements; ++i) {
      const redisReply* e = entries->element[i];
      if (e->type != REDIS_REPLY_ARRAY || e->elements < 2) continue;
      auto id = StreamId::parse(str_of(e->element[0]));
      if (!id) continue;
      const redisReply* f = e->element[1];
      std::string h, kind, name;
      if (f->type == REDIS_REPLY_ARRAY) {
        for (std::size_t j = 0; j + 1 < f->elements; j += 2) {
          const std::string key = str_of(f->element[j]);
          if (key == "host") h = str_of(f->element[j + 1]);
          else if (key == "kind") kind = str_of(f->element[j + 1]);
          else if (key == "name") name = str_of(f->element[j + 1]);
        }
      }
      if (h != host) {
        if (auto k = kind_of(kind)) {
          apply_remote(*k, name);
          newest_ms = std::int64_t(id->ms);
        }
      }
      pos = std::max(pos, *id);
    }
    if (newest_ms >= 0) st.lag_ms = std::max<std::int64_t>(0, wall_ms() - newest_ms);
    // A batch cut at COUNT may have more behind it: only a shorter one proves
    // this host current (as of when the XREAD was sent).
    if (entries->elements < o.read_count) prove(xread_sent);
    save();  // apply, then save the id: a crash in between replays (a spurious miss)
    return true;
  }

  // Reads what the stream connection has and handles every whole reply in
  // it. False (the link dropped) on an error.
  bool read_replies() {
    if (!sub.read_available()) {
      drop("read: " + sub.error());
      return false;
    }
    for (;;) {
      Reply r;
      if (!sub.take(r) || (r && !handle_xread(r.get()))) {
        drop("stream read failed: " + sub.error());
        return false;
      }
      if (!r) return true;
    }
  }

  bool state_check() {
    auto s = state_call("", false, true);
    if (!s) return false;
    st.lag_events = s->lag;
    if (s->nonce != known_nonce || s->last_generated < pos || vanished(pos, s->holds_position, *s) ||
        vanished(published, s->holds_published, *s)) {
      say(1, "redis changed under a live connection: resync");
      return resync();
    }
    return true;
  }

  int run(const std::atomic<bool>& stop) {
    pub.set_stop(&stop);
    sub.set_stop(&stop);
    sub.set_max_reply(std::max<std::size_t>(std::size_t(16) << 20, o.read_count * 4096));
    // An entry of an XREAD reply is 9 objects (entry, id, fields, 3 pairs):
    // twice that per entry, counted twice (see admit), with room to spare.
    sub.set_max_objects(std::max<std::size_t>(std::size_t(1) << 16, o.read_count * 64));
    watch_sigcont();
    continued_seen = g_continued.load(std::memory_order_relaxed);
    // A relay ran on this segment before: the proof it saved is where this
    // one counts from, so that restarts (a crash loop under systemd) cannot
    // wipe a missing proof; unknown, or not in the past (garbage, or another
    // time namespace's clock), it is overdue at once. (Its heartbeat was
    // used before: a disconnected relay keeps saving one, and every restart
    // gave itself a fresh bound: test_attack_relay_liveness3.)
    const Clock::time_point start = Clock::now();
    const std::int64_t now_ms = outbox::now_ms();
    if (st.pid == 0) {
      last_contact = start;  // the first relay of this segment
    } else if (st.proven_ms > 0 && st.proven_ms <= now_ms) {
      last_contact = start - std::chrono::milliseconds(now_ms - st.proven_ms);
      // Down past the bound (an upgrade, a crash and the supervisor's delay):
      // one grace G from this start, in which a replay catches the host up
      // without a clear (before, it cleared before it connected:
      // test_attack_relay_liveness3, RestartWithRedisFine). Once per proof,
      // as a resume's: the proof's odd millisecond, saved, tells every later
      // start that it was given, so that a crash loop cannot hold the clear
      // off (test_attack_relay_liveness2, RestartLoop).
      const bool given = (st.proven_ms & 1) != 0;
      if (given || start - last_contact >= soft_bound()) {
        start_grace_for = extended_for = last_contact;
        if (!given) resumed_at = start;
      }
    } else {
      last_contact = start - soft_bound();
    }
    st.pid = std::uint32_t(::getpid());
    if (pos.zero() && st.cursor == 0) st.cursor = outbox::head(cache);  // fresh: history is not published
    next_attempt = start;
    connected = false;
    save();
    while (!stop.load(std::memory_order_relaxed)) {
      Clock::time_point now = Clock::now();
      if (!connected) {
        const auto tick = [&](Clock::time_point t) {
          if (o.stale_bound.count() == 0) stale_tick(t);
          else staleness(t);
        };
        tick(now);
        if (now >= next_attempt) {
          if (connect()) continue;
          backoff = std::clamp(backoff * 2, o.reconnect_min, o.reconnect_max);
          next_attempt = Clock::now() + backoff;
          tick(Clock::now());
        }
        const auto wait = std::clamp(std::chrono::duration_cast<std::chrono::microseconds>(next_attempt - Clock::now()),
                                     std::chrono::microseconds(1000), std::chrono::microseconds(50000));
        timespec ts{time_t(wait.count() / 1000000), long(wait.count() % 1000000) * 1000};
        const Clock::time_point before = Clock::now();
        ::ppoll(nullptr, 0, &ts, nullptr);
        after_wait(before, wait);
        if (Clock::now() - last_save > std::chrono::milliseconds(100)) save();
        continue;
      }
      staleness(now);
      if (!publish_pending(now)) {
        drop("publish: " + pub.error());
        continue;
      }
      if (!connected) continue;  // a resync inside publish failed
      if (!xread_out && !send_xread()) {
        drop("XREAD: " + sub.error());
        continue;
      }
      pollfd pfd{sub.fd(), POLLIN, 0};
      timespec ts{time_t(o.poll_interval.count() / 1000000), long(o.poll_interval.count() % 1000000) * 1000};
      const Clock::time_point before = Clock::now();
      const int n = ::ppoll(&pfd, 1, &ts, nullptr);
      after_wait(before, o.poll_interval);
      now = Clock::now();
      if (n > 0 && !read_replies()) continue;
      if (!connected) continue;
      if (xread_out && now - xread_sent > xread_deadline()) {
        // The deadline may have passed while this process did not run (it
        // was stopped, or descheduled, and ppoll came back with EINTR or 0):
        // a reply that arrived meanwhile is read first, once, and the link
        // is not taken for dead (test_relay, ARelayPausedPastTheStaleBoundCatchesUpByReplay).
        // Bytes that do not make a whole reply by the deadline (a trickle,
        // a reply cut short) do not keep it alive: test_attack_relay_liveness.
        // Everything readable is read (a reply of more than hiredis's 16 KiB
        // read, waiting after a pause, was dropped half read:
        // test_attack_relay_liveness2, ABigXreadReplyWaitingAfterAPause...),
        // for one timeout at most: a peer streaming bytes without end does
        // not keep it alive either.
        const Clock::time_point until = Clock::now() + o.io_timeout;
        pollfd again{sub.fd(), POLLIN, 0};
        while (connected && xread_out && Clock::now() < until && ::poll(&again, 1, 0) > 0) {
          if (!read_replies()) break;
        }
        if (!connected) continue;
        if (xread_out) {
          drop("no whole reply to XREAD within " + std::to_string(xread_deadline().count()) +
               " ms (half-open connection?)");
          continue;
        }
      }
      if (now - last_state_check >= o.block) {
        last_state_check = now;
        if (!state_check()) {
          drop("state check: " + pub.error());
          continue;
        }
      }
      if (now - last_save >= std::chrono::milliseconds(100)) save();
    }
    connected = false;
    pub.close();
    sub.close();
    hand_over_grace();
    save();
    return 0;
  }
};

Relay::Relay(Cache& cache, Options options) : s_(std::make_unique<State>(cache, std::move(options))) {}
Relay::~Relay() = default;
int Relay::run(const std::atomic<bool>& stop) { return s_->run(stop); }
void Relay::set_log(LogFn fn) { s_->log = std::move(fn); }

}  // namespace hostcache::relay
