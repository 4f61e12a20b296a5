// backend_redis.cpp — Redis through hiredis: one round trip per op ("redis"),
// or `pipeline` ops per round trip ("redis-pipelined"). Compiled only when
// hiredis was found.
#include <hiredis/hiredis.h>

#include <stdexcept>
#include <string>

#include "backends.h"

namespace hcbench {
namespace {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

class RedisBackend final : public Backend {
 public:
  RedisBackend(const BackendOptions& opts, unsigned pipeline)
      : ttl_ms_(opts.ttl_ms), pipeline_(pipeline) {
    timeval timeout{10, 0};  // a server that stops answering fails the run, never hangs it
    ctx_ = redisConnectWithTimeout(opts.host.c_str(), opts.port, timeout);
    if (ctx_ == nullptr || ctx_->err) {
      const std::string why = ctx_ ? ctx_->errstr : "out of memory";
      if (ctx_) redisFree(ctx_);
      throw std::runtime_error("redis: cannot connect to " + opts.host + ":" +
                               std::to_string(opts.port) + ": " + why);
    }
    redisSetTimeout(ctx_, timeout);
  }
  ~RedisBackend() override { redisFree(ctx_); }

  bool get(std::string_view key, std::string& value) override {
    Reply r(static_cast<redisReply*>(redisCommand(ctx_, "GET %b", key.data(), key.size())));
    return take_get(r.get(), value);
  }

  void set(std::string_view key, std::string_view value, std::string_view) override {
    append_set(key, value);
    check_set(next_reply().get());
  }

  void run(std::span<Op> ops) override {
    if (pipeline_ <= 1) return Backend::run(ops);
    // All commands out in one write, then all replies: one round trip.
    for (const Op& op : ops) {
      if (op.kind == Op::Kind::get) {
        redisAppendCommand(ctx_, "GET %b", op.key.data(), op.key.size());
      } else {
        append_set(op.key, op.value);
      }
    }
    for (Op& op : ops) {
      Reply r = next_reply();
      if (op.kind == Op::Kind::get) {
        op.hit = take_get(r.get(), *op.out);
      } else {
        check_set(r.get());
      }
    }
  }

  void clear() override {
    Reply r(static_cast<redisReply*>(redisCommand(ctx_, "FLUSHDB")));
    if (!r || r->type == REDIS_REPLY_ERROR) fail("FLUSHDB");
  }

 private:
  void append_set(std::string_view key, std::string_view value) {
    if (ttl_ms_ > 0) {
      redisAppendCommand(ctx_, "SET %b %b PX %lld", key.data(), key.size(), value.data(),
                         value.size(), static_cast<long long>(ttl_ms_));
    } else {
      redisAppendCommand(ctx_, "SET %b %b", key.data(), key.size(), value.data(), value.size());
    }
  }
  Reply next_reply() {
    void* raw = nullptr;
    if (redisGetReply(ctx_, &raw) != REDIS_OK) fail("reply");
    return Reply(static_cast<redisReply*>(raw));
  }
  bool take_get(redisReply* r, std::string& value) {
    if (r == nullptr) fail("GET");
    if (r->type == REDIS_REPLY_NIL) return false;
    if (r->type != REDIS_REPLY_STRING) fail("GET (unexpected reply type)");
    value.assign(r->str, r->len);
    return true;
  }
  void check_set(redisReply* r) {
    if (r == nullptr || r->type != REDIS_REPLY_STATUS) fail("SET");
  }
  [[noreturn]] void fail(const char* what) {
    throw std::runtime_error(std::string("redis: ") + what +
                             " failed: " + (ctx_->err ? ctx_->errstr : "error reply"));
  }

  redisContext* ctx_ = nullptr;
  std::int64_t ttl_ms_;
  unsigned pipeline_;
};

}  // namespace

std::unique_ptr<Backend> make_redis(const BackendOptions& opts, Role role) {
  // The prefill always pipelines: it is setup, not measurement.
  const unsigned depth = role == Role::setup                 ? 64u
                         : opts.backend == "redis-pipelined" ? std::max(opts.pipeline, 2u)
                                                             : 1u;
  return std::make_unique<RedisBackend>(opts, depth);
}

}  // namespace hcbench
