// backend_lmdb.cpp — LMDB as a shared-memory key-value peer: the environment
// lives in /dev/shm, opened MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP (no
// durability asked, as for a cache), one write transaction per set (writers
// serialize on LMDB's single writer lock), readers reuse one read-only
// transaction per process with mdb_txn_reset/renew (LMDB's fast read path).
// LMDB has no TTL and no eviction: the map is sized for the whole key set.
// Compiled only when LMDB was found.
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

#include "backends.h"

namespace hcbench {
namespace {

void check(int rc, const char* what) {
  if (rc != MDB_SUCCESS)
    throw std::runtime_error(std::string("lmdb: ") + what + ": " + mdb_strerror(rc));
}

class LmdbBackend final : public Backend {
 public:
  explicit LmdbBackend(const BackendOptions& opts) {
    ::mkdir(opts.dir.c_str(), 0700);
    check(mdb_env_create(&env_), "env_create");
    check(mdb_env_set_mapsize(env_, opts.lmdb_map_bytes), "set_mapsize");
    check(mdb_env_set_maxreaders(env_, 512), "set_maxreaders");
    const int rc =
        mdb_env_open(env_, opts.dir.c_str(), MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP, 0600);
    if (rc != MDB_SUCCESS) {
      mdb_env_close(env_);
      check(rc, "env_open");
    }
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    check(mdb_dbi_open(txn, nullptr, 0, &dbi_), "dbi_open");
    check(mdb_txn_commit(txn), "txn_commit");
  }
  ~LmdbBackend() override {
    if (read_txn_ != nullptr) mdb_txn_abort(read_txn_);
    mdb_env_close(env_);
  }

  bool get(std::string_view key, std::string& value) override {
    if (read_txn_ == nullptr) {
      check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &read_txn_), "read txn_begin");
    } else {
      check(mdb_txn_renew(read_txn_), "txn_renew");
    }
    MDB_val k{key.size(), const_cast<char*>(key.data())}, v{};
    const int rc = mdb_get(read_txn_, dbi_, &k, &v);
    if (rc == MDB_SUCCESS) value.assign(static_cast<const char*>(v.mv_data), v.mv_size);
    // Reset releases the snapshot so that writers can reuse pages; renew is
    // cheaper than a fresh begin.
    mdb_txn_reset(read_txn_);
    if (rc == MDB_NOTFOUND) return false;
    check(rc, "get");
    return true;
  }

  void set(std::string_view key, std::string_view value, std::string_view) override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    MDB_val k{key.size(), const_cast<char*>(key.data())};
    MDB_val v{value.size(), const_cast<char*>(value.data())};
    const int rc = mdb_put(txn, dbi_, &k, &v, 0);
    if (rc != MDB_SUCCESS) {
      mdb_txn_abort(txn);
      check(rc, "put");
    }
    check(mdb_txn_commit(txn), "txn_commit");
  }

  // The prefill: many sets per write transaction (setup, not measurement).
  void run(std::span<Op> ops) override {
    bool all_sets = true;
    for (const Op& op : ops) all_sets = all_sets && op.kind == Op::Kind::set;
    if (!all_sets || ops.size() < 2) return Backend::run(ops);
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    for (const Op& op : ops) {
      MDB_val k{op.key.size(), const_cast<char*>(op.key.data())};
      MDB_val v{op.value.size(), const_cast<char*>(op.value.data())};
      const int rc = mdb_put(txn, dbi_, &k, &v, 0);
      if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        check(rc, "put");
      }
    }
    check(mdb_txn_commit(txn), "txn_commit");
  }

  void clear() override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "txn_begin");
    check(mdb_drop(txn, dbi_, 0), "drop");  // O(pages): LMDB walks the tree to free it
    check(mdb_txn_commit(txn), "txn_commit");
  }

 private:
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
  MDB_txn* read_txn_ = nullptr;
};

}  // namespace

std::unique_ptr<Backend> make_lmdb(const BackendOptions& opts, Role) {
  return std::make_unique<LmdbBackend>(opts);
}

void destroy_lmdb(const BackendOptions& opts) {
  ::unlink((opts.dir + "/data.mdb").c_str());
  ::unlink((opts.dir + "/lock.mdb").c_str());
  ::rmdir(opts.dir.c_str());
}

}  // namespace hcbench
