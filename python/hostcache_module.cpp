// hostcache_module.cpp — the `hostcache._hostcache` extension: pybind11 over
// the public C++ API (cache.h, memoize.h), nothing below it.
//
// Conventions (python/hostcache/_hostcache.pyi has the Python signatures):
//  - Keys are str (UTF-8) or bytes; values any bytes-like object. The key and
//    value are passed to C++ as views of the Python objects' own buffers: no
//    copy on the way in. get() copies the value, with the GIL released, into
//    a per-thread buffer and builds the bytes object from it afterwards: the
//    GIL is never waited for inside a lookup, which may hold a stripe lock.
//  - Times are seconds (float). ttl None or 0: the cache's default TTL;
//    math.inf (hostcache.FOREVER): never expires; negative: ValueError.
//  - Foreseeable outcomes are values (None, bool); bad input raises
//    hostcache.InvalidArgument (a ValueError) carrying the Errc name in
//    `.code`; a segment that cannot be used raises the hostcache.Error
//    subclass of its Errc (NotFound, PermissionDenied, Corrupt, ...).
//  - Every call that can wait (a stripe lock, another process's computation)
//    runs with the GIL released; the hooks that must touch Python objects
//    take it back for just that.
#define PY_SSIZE_T_CLEAN
#include <hostcache/cache.h>
#include <hostcache/config.h>
#include <hostcache/errors.h>
#include <hostcache/memoize.h>
#include <hostcache/stats.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <exception>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace py = pybind11;
using namespace std::chrono_literals;
using hostcache::Errc;
using ms = std::chrono::milliseconds;

namespace {

// ---- exceptions ----------------------------------------------------------------

struct Exceptions {
  PyObject* base = nullptr;  // hostcache.Error
  PyObject* invalid = nullptr;
  PyObject* overflow = nullptr;
  PyObject* not_found = nullptr;
  PyObject* already_exists = nullptr;
  PyObject* permission = nullptr;
  PyObject* corrupt = nullptr;
  PyObject* incompatible = nullptr;
  PyObject* busy = nullptr;
  PyObject* io = nullptr;
  PyObject* closed = nullptr;
};
Exceptions exc;

PyObject* class_of(Errc e) {
  switch (e) {
    case Errc::not_found: return exc.not_found;
    case Errc::already_exists: return exc.already_exists;
    case Errc::permission_denied: return exc.permission;
    case Errc::corrupt: return exc.corrupt;
    case Errc::incompatible: return exc.incompatible;
    case Errc::busy: return exc.busy;
    case Errc::io_error: return exc.io;
    case Errc::overflow: return exc.overflow;
    default: return exc.invalid;  // key/value/ttl/tag/name/config/namespace/not_integer...
  }
}

// Raises `cls(message)` with .code = code_name. Returns nullptr for convenience.
void set_python_error(PyObject* cls, const std::string& message, const char* code) {
  PyObject* inst = PyObject_CallFunction(cls, "s#", message.data(), Py_ssize_t(message.size()));
  if (inst == nullptr) return;  // the call's own error stands
  PyObject* c = PyUnicode_FromString(code);
  if (c != nullptr) {
    PyObject_SetAttrString(inst, "code", c);
    Py_DECREF(c);
  }
  PyErr_SetObject(cls, inst);
  Py_DECREF(inst);
}

// A Python error already set, to be propagated through C++.
[[noreturn]] void raise_set() { throw py::error_already_set(); }

[[noreturn]] void raise(Errc e, const std::string& message) {
  set_python_error(class_of(e), message, hostcache::to_string(e));
  raise_set();
}

[[noreturn]] void raise_errc(Errc e, std::string_view what, std::string_view key) {
  std::string m(what);
  m += " '";
  m.append(key.substr(0, 80));
  if (key.size() > 80) m += "...";
  m += "': ";
  m += hostcache::to_string(e);
  raise(e, m);
}

// ---- arguments -------------------------------------------------------------------

// A view of a str (its UTF-8 form, cached by CPython in the object) or bytes
// key; valid while the object lives.
std::string_view key_view(py::handle h) {
  PyObject* o = h.ptr();
  if (PyUnicode_Check(o)) {
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(o, &n);
    if (p == nullptr) raise_set();  // lone surrogates: UnicodeEncodeError (a ValueError)
    return {p, std::size_t(n)};
  }
  if (PyBytes_Check(o)) return {PyBytes_AS_STRING(o), std::size_t(PyBytes_GET_SIZE(o))};
  throw py::type_error("hostcache: a key must be str or bytes, not " +
                       std::string(Py_TYPE(o)->tp_name));
}

std::string_view text_view(py::handle h, const char* what) {
  if (!PyUnicode_Check(h.ptr()) && !PyBytes_Check(h.ptr())) {
    throw py::type_error(std::string("hostcache: ") + what + " must be str or bytes");
  }
  return key_view(h);
}

// A value: any object with the buffer protocol, held for the call. A bytes
// object is held by a reference of its own: the caller's may go while the
// GIL is released (another thread rebinding an element of set_many's list
// pairs freed it under the copy: test_attack_py).
class ValueView {
 public:
  explicit ValueView(py::handle h) {
    PyObject* o = h.ptr();
    if (PyBytes_Check(o)) {
      ref_ = py::reinterpret_borrow<py::object>(h);
      view_ = {PyBytes_AS_STRING(o), std::size_t(PyBytes_GET_SIZE(o))};
      return;
    }
    if (PyUnicode_Check(o)) throw py::type_error("hostcache: a value must be bytes-like, not str");
    if (PyObject_GetBuffer(o, &buf_, PyBUF_CONTIG_RO) != 0) {
      PyErr_Clear();
      throw py::type_error("hostcache: a value must be bytes-like, not " +
                           std::string(Py_TYPE(o)->tp_name));
    }
    held_ = true;
    view_ = {static_cast<const char*>(buf_.buf), std::size_t(buf_.len)};
  }
  ValueView(const ValueView&) = delete;
  ValueView& operator=(const ValueView&) = delete;
  ValueView(ValueView&& o) noexcept : ref_(std::move(o.ref_)), buf_(o.buf_), held_(o.held_), view_(o.view_) {
    o.held_ = false;
  }
  ~ValueView() {
    if (held_) PyBuffer_Release(&buf_);
  }
  std::string_view view() const { return view_; }

 private:
  py::object ref_;  // a bytes value
  Py_buffer buf_{};
  bool held_ = false;
  std::string_view view_;
};

// Seconds (None, a number, math.inf) as the C++ TTL. None and 0: the default.
ms ttl_of(py::handle h, const char* what = "ttl") {
  if (h.is_none()) return ms(0);
  const double s = py::cast<double>(h);
  if (std::isnan(s)) raise(Errc::invalid_ttl, std::string(what) + " is NaN");
  if (s < 0) raise(Errc::invalid_ttl, std::string(what) + " must be >= 0 (got " + std::to_string(s) + ")");
  if (std::isinf(s) || s * 1000.0 >= double(std::numeric_limits<std::int64_t>::max() / 2)) {
    return hostcache::kNoExpiry;
  }
  if (s == 0) return ms(0);
  const auto m = std::int64_t(std::ceil(s * 1000.0));  // never shorter than asked; 0.0001 is 1 ms
  return ms(m < 1 ? 1 : m);
}

double seconds_of(ms t) {
  if (t == hostcache::kNoExpiry) return std::numeric_limits<double>::infinity();
  return double(t.count()) / 1000.0;
}

// The tags and namespace of a write, kept alive (they view Python objects).
struct WriteOptions {
  py::object tags_seq;  // holds the tuple the views point into
  hostcache::SetOptions set;

  WriteOptions(py::handle ttl, py::handle tags, py::handle ns) {
    set.ttl = ttl_of(ttl);
    if (!tags.is_none()) {
      if (PyUnicode_Check(tags.ptr()) || PyBytes_Check(tags.ptr())) {
        throw py::type_error("hostcache: tags must be a sequence of str, not one str");
      }
      tags_seq = py::reinterpret_steal<py::object>(PySequence_Tuple(tags.ptr()));
      if (!tags_seq) raise_set();
      for (py::handle t : tags_seq) set.tags.push_back(text_view(t, "a tag"));
    }
    if (!ns.is_none()) {
      set.ns = text_view(ns, "namespace");
      if (set.ns.empty()) raise(Errc::invalid_namespace, "namespace must not be empty");
    }
  }
};

// ---- the handle ------------------------------------------------------------------

// Releases the GIL for its scope. The hooks called inside take it back with Reacquire.
struct Released {
  PyThreadState* ts;
  Released() : ts(PyEval_SaveThread()) {}
  ~Released() { PyEval_RestoreThread(ts); }
  Released(const Released&) = delete;
  Released& operator=(const Released&) = delete;
};
struct Reacquire {
  PyThreadState* ts;
  explicit Reacquire(PyThreadState* t) : ts(t) { PyEval_RestoreThread(ts); }
  ~Reacquire() { PyEval_SaveThread(); }
  Reacquire(const Reacquire&) = delete;
  Reacquire& operator=(const Reacquire&) = delete;
};

class PyCache {
 public:
  explicit PyCache(hostcache::Cache c) : c_(std::make_shared<hostcache::Cache>(std::move(c))) {}

  // The handle for one call: a reference kept across the released GIL, so
  // that close() from another thread cannot unmap under it.
  std::shared_ptr<hostcache::Cache> handle() const {
    std::shared_ptr<hostcache::Cache> c = c_;
    if (!c) {
      PyErr_SetString(exc.closed, "hostcache: this Cache was closed");
      raise_set();
    }
    return c;
  }
  void close() { c_.reset(); }
  bool closed() const { return !c_; }

 private:
  std::shared_ptr<hostcache::Cache> c_;
};

// Runs `f` with the GIL released, turning hostcache::Error into its Python class.
template <class F>
auto unlocked(F&& f) -> decltype(f()) {
  std::optional<hostcache::Error> err;
  std::exception_ptr other;
  using R = decltype(f());
  if constexpr (std::is_void_v<R>) {
    {
      Released r;
      try {
        f();
        return;
      } catch (const hostcache::Error& e) {
        err.emplace(e);
      } catch (...) {
        other = std::current_exception();
      }
    }
    if (other) std::rethrow_exception(other);
    raise(err->code(), err->what());
  } else {
    std::optional<R> result;
    {
      Released r;
      try {
        result.emplace(f());
      } catch (const hostcache::Error& e) {
        err.emplace(e);
      } catch (...) {
        other = std::current_exception();
      }
    }
    if (other) std::rethrow_exception(other);
    if (err) raise(err->code(), err->what());
    return std::move(*result);
  }
}

// get(): the value is copied, with the GIL released, into private memory (on
// the stack up to kStackValueBytes, else a heap buffer), and the bytes object
// is built from it once the GIL is back. A sink that took the GIL back to
// allocate the bytes object would wait for it inside the lookup, and a lookup
// that fell back to the stripe lock (a writer kept the stripe busy) would
// hold that lock, which every process's writers of the stripe wait for, for
// as long as another thread of this interpreter keeps the GIL (its switch
// interval, 5 ms by default, or a C call that does not release it). The
// price is one memcpy the size of the value.
struct PrivateSink {
  static constexpr std::size_t kStackValueBytes = 4096;  // small enough for any thread stack
  alignas(16) char stack[kStackValueBytes];
  std::string heap;
  const char* data = nullptr;
  std::size_t size = 0;

  static char* sink(void* ctx, std::size_t n) {  // no Python, no GIL
    auto& self = *static_cast<PrivateSink*>(ctx);
    self.size = n;
    if (n <= kStackValueBytes) return const_cast<char*>(self.data = self.stack);
    self.heap.resize(n);
    return const_cast<char*>(self.data = self.heap.data());
  }
};

py::object get(const PyCache& self, py::handle key) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  PrivateSink s;
  bool hit = false;
  {
    std::optional<hostcache::Error> err;
    PyThreadState* ts = PyEval_SaveThread();
    try {
      hit = c->get_into(k, &PrivateSink::sink, &s);
    } catch (const hostcache::Error& e) {
      err.emplace(e);
    } catch (...) {
      PyEval_RestoreThread(ts);
      throw;
    }
    PyEval_RestoreThread(ts);
    if (err) raise(err->code(), err->what());
  }
  if (!hit) return py::none();
  PyObject* out = PyBytes_FromStringAndSize(s.data, Py_ssize_t(s.size));
  if (out == nullptr) throw py::error_already_set();  // MemoryError
  return py::reinterpret_steal<py::object>(out);
}

void check_set(Errc e, std::string_view key) {
  if (e != Errc::ok) raise_errc(e, "set", key);
}

void set(const PyCache& self, py::handle key, py::handle value, py::handle ttl, py::handle tags,
         py::handle ns) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  ValueView v(value);
  WriteOptions o(ttl, tags, ns);
  check_set(unlocked([&] { return c->set(k, v.view(), o.set); }), k);
}

bool add(const PyCache& self, py::handle key, py::handle value, py::handle ttl, py::handle tags,
         py::handle ns) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  ValueView v(value);
  WriteOptions o(ttl, tags, ns);
  const Errc e = unlocked([&] { return c->add(k, v.view(), o.set); });
  if (e == Errc::already_exists) return false;
  check_set(e, k);
  return true;
}

bool erase(const PyCache& self, py::handle key) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  return unlocked([&] { return c->erase(k); });
}

bool touch(const PyCache& self, py::handle key, py::handle ttl) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  const ms t = ttl_of(ttl);
  return unlocked([&] { return c->touch(k, t); });
}

std::int64_t incr(const PyCache& self, py::handle key, std::int64_t delta) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  std::int64_t result = 0;
  const Errc e = unlocked([&] { return c->incr(k, delta, result); });
  if (e == Errc::not_found) {
    set_python_error(exc.invalid, "Key '" + std::string(k.substr(0, 200)) + "' not found",
                     "not_found");
    raise_set();
  }
  if (e != Errc::ok) raise_errc(e, "incr", k);
  return result;
}

std::int64_t decr(const PyCache& self, py::handle key, std::int64_t delta) {
  if (delta == std::numeric_limits<std::int64_t>::min()) {
    raise(Errc::overflow, "decr: delta -2**63 cannot be negated");
  }
  return incr(self, key, -delta);
}

py::object ttl(const PyCache& self, py::handle key) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  auto t = unlocked([&] { return c->ttl(k); });
  if (!t) return py::none();
  return py::float_(seconds_of(*t));
}

py::dict get_many(const PyCache& self, py::handle keys) {
  auto c = self.handle();
  py::object seq = py::reinterpret_steal<py::object>(PySequence_Tuple(keys.ptr()));
  if (!seq) raise_set();
  std::vector<std::string_view> views;
  views.reserve(py::len(seq));
  for (py::handle k : seq) views.push_back(key_view(k));
  auto found = unlocked([&] { return c->get_many(views); });
  py::dict out;
  std::size_t i = 0;
  for (py::handle k : seq) {
    auto& v = found[i++];
    if (v) out[k] = py::bytes(v->data(), v->size());
  }
  return out;
}

// Returns the keys that were not stored (Django's set_many contract).
py::list set_many(const PyCache& self, py::handle mapping, py::handle ttl, py::handle tags,
                  py::handle ns) {
  auto c = self.handle();
  py::object items = py::reinterpret_steal<py::object>(
      PyMapping_Check(mapping.ptr()) && PyObject_HasAttrString(mapping.ptr(), "items")
          ? PySequence_Tuple(py::handle(mapping).attr("items")().ptr())
          : PySequence_Tuple(mapping.ptr()));
  if (!items) raise_set();
  WriteOptions o(ttl, tags, ns);
  std::vector<py::object> keys;
  std::vector<ValueView> values;
  std::vector<std::pair<std::string_view, std::string_view>> pairs;
  const std::size_t n = py::len(items);
  keys.reserve(n);
  values.reserve(n);
  pairs.reserve(n);
  for (py::handle it : items) {
    py::tuple kv = py::reinterpret_borrow<py::object>(it).cast<py::tuple>();
    if (kv.size() != 2) throw py::value_error("set_many: items must be (key, value) pairs");
    keys.push_back(kv[0]);
    values.emplace_back(kv[1]);
    pairs.emplace_back(key_view(kv[0]), values.back().view());
  }
  auto results = unlocked([&] { return c->set_many(pairs, o.set); });
  py::list failed;
  for (std::size_t i = 0; i < n; ++i) {
    if (results[i] != Errc::ok) failed.append(keys[i]);
  }
  return failed;
}

void clear(const PyCache& self, py::handle ns) {
  auto c = self.handle();
  if (ns.is_none()) return unlocked([&] { c->clear(); });
  const std::string_view n = text_view(ns, "namespace");
  if (n.empty()) raise(Errc::invalid_namespace, "namespace must not be empty");
  unlocked([&] { c->clear(n); });
}

void invalidate(const PyCache& self, py::handle tag) {
  auto c = self.handle();
  const std::string_view t = text_view(tag, "a tag");
  if (t.empty() || t.size() > hostcache::kMaxTagBytes) {
    raise(Errc::tag_too_large, "invalidate: a tag is 1..255 bytes");
  }
  unlocked([&] { c->invalidate(t); });
}

py::dict stats(const PyCache& self) {
  auto c = self.handle();
  const hostcache::Stats s = unlocked([&] { return c->stats(); });
  py::dict d;
  d["gets"] = s.gets;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["sets"] = s.sets;
  d["erases"] = s.erases;
  d["evictions"] = s.evictions;
  d["expired"] = s.expired;
  d["stale"] = s.stale;
  d["recoveries"] = s.recoveries;
  d["resets"] = s.resets;
  d["entries"] = s.entries;
  d["bytes_used"] = s.bytes_used;
  d["capacity_bytes"] = s.capacity_bytes;
  d["compressed_in"] = s.compressed_in;
  d["compressed_out"] = s.compressed_out;
  d["hit_ratio"] = s.hit_ratio();
  return d;
}

py::list method_stats(const PyCache& self) {
  auto c = self.handle();
  auto all = unlocked([&] { return hostcache::method_stats(*c); });
  py::list out;
  for (const auto& m : all) {
    py::dict d;
    d["method"] = m.method;
    d["requests"] = m.requests;
    d["hits"] = m.hits;
    d["misses"] = m.misses;
    d["hit_ns"] = m.hit_ns;
    d["miss_ns"] = m.miss_ns;
    d["bytes"] = m.bytes;
    d["hit_ratio"] = m.hit_ratio();
    d["mean_hit_ms"] = m.mean_hit_ms();
    d["mean_miss_ms"] = m.mean_miss_ms();
    d["mean_call_ms"] = m.mean_call_ms();
    d["improvement_percent"] = m.improvement_percent();
    out.append(d);
  }
  return out;
}

// ---- get_or_compute ----------------------------------------------------------------

// The Python half of one get_or_compute: encode/decode with dumps/loads
// (pickle by default), call fn. Runs inside the GIL-released core and takes
// the GIL back in each hook; a Python exception from fn travels through the
// core as PyFailure (so that the core releases the flight and caches
// nothing) and is re-raised once the GIL is ours again.
struct PyFailure {};

struct PyCompute {
  PyThreadState* ts = nullptr;
  py::handle fn, dumps, loads;
  py::object result;
  std::optional<py::error_already_set> error;

  static bool accept(void* c, std::string_view bytes) {
    auto& self = *static_cast<PyCompute*>(c);
    Reacquire gil(self.ts);
    PyObject* b = PyBytes_FromStringAndSize(bytes.data(), Py_ssize_t(bytes.size()));
    if (b == nullptr) {
      PyErr_Clear();
      return false;
    }
    PyObject* v = PyObject_CallOneArg(self.loads.ptr(), b);
    Py_DECREF(b);
    if (v == nullptr) {
      // An Exception: bytes written by something else, recomputed and
      // overwritten. Anything else (KeyboardInterrupt, SystemExit) is the
      // caller's, raised once the core has released what it holds.
      if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        self.error.emplace();
        throw PyFailure{};
      }
      PyErr_Clear();
      return false;
    }
    self.result = py::reinterpret_steal<py::object>(v);
    return true;
  }

  static void compute(void* c, std::string& out) {
    auto& self = *static_cast<PyCompute*>(c);
    bool failed = false;
    {
      Reacquire gil(self.ts);
      try {
        self.result = self.fn();
        py::object b = self.dumps(self.result);
        if (!PyBytes_Check(b.ptr())) throw py::type_error("get_or_compute: dumps() must return bytes");
        out.assign(PyBytes_AS_STRING(b.ptr()), std::size_t(PyBytes_GET_SIZE(b.ptr())));
      } catch (py::error_already_set& e) {
        self.error.emplace(std::move(e));
        failed = true;
      } catch (const py::builtin_exception& e) {
        e.set_error();
        self.error.emplace();
        failed = true;
      }
    }
    if (failed) throw PyFailure{};
  }
};

py::object get_or_compute(const PyCache& self, py::handle key, py::handle fn, py::handle ttl,
                          py::handle tags, py::handle ns, double lease, py::handle method,
                          double stale_while_revalidate, py::handle dumps, py::handle loads) {
  auto c = self.handle();
  const std::string_view k = key_view(key);
  WriteOptions o(ttl, tags, ns);
  hostcache::ComputeOptions co;
  co.set = o.set;
  if (!(lease > 0)) raise(Errc::invalid_ttl, "get_or_compute: lease must be > 0");
  co.lease = std::isinf(lease) ? ms(std::chrono::hours(24 * 365)) : ms(std::int64_t(std::ceil(lease * 1000)));
  if (stale_while_revalidate < 0) raise(Errc::invalid_ttl, "stale_while_revalidate must be >= 0");
  co.stale_while_revalidate = ms(std::int64_t(std::ceil(stale_while_revalidate * 1000)));
  if (!method.is_none()) co.method = text_view(method, "method");
  py::object pickle;
  py::object d = py::reinterpret_borrow<py::object>(dumps), l = py::reinterpret_borrow<py::object>(loads);
  if (d.is_none() || l.is_none()) pickle = py::module_::import("pickle");
  if (d.is_none()) {
    d = py::cpp_function([p = pickle.attr("dumps")](py::object v) { return p(v, -1); });
  }
  if (l.is_none()) l = pickle.attr("loads");

  PyCompute pc;
  pc.fn = fn;
  pc.dumps = d;
  pc.loads = l;
  hostcache::detail::ComputeHooks hooks{&pc, &PyCompute::accept, &PyCompute::compute};
  std::optional<hostcache::Error> err;
  bool failed = false;
  std::exception_ptr other;
  pc.ts = PyEval_SaveThread();
  try {
    hostcache::detail::get_or_compute(*c, k, co, hooks);
  } catch (const PyFailure&) {
    failed = true;
  } catch (const hostcache::Error& e) {
    err.emplace(e);
  } catch (...) {
    other = std::current_exception();
  }
  PyEval_RestoreThread(pc.ts);
  if (other) std::rethrow_exception(other);
  if (failed) {
    if (pc.error) throw *pc.error;
    raise_set();
  }
  if (err) raise(err->code(), err->what());
  return pc.result;
}

// ---- the key builder ---------------------------------------------------------------

// str: text; bool: boolean; int: integer; bytes: packed (the caller's
// canonical encoding of anything else, hashed with the segment's secret).
hostcache::detail::KeyArg key_arg(py::handle h) {
  using K = hostcache::detail::KeyArg::Kind;
  PyObject* o = h.ptr();
  if (PyUnicode_Check(o)) return {K::text, std::string(key_view(h))};
  if (PyBool_Check(o)) return {K::boolean, o == Py_True ? "true" : "false"};
  if (PyLong_Check(o)) return {K::integer, py::str(h).cast<std::string>()};
  if (PyBytes_Check(o)) return {K::packed, std::string(key_view(h))};
  throw py::type_error("hostcache: a key part must be str, int, bool or bytes (encode others)");
}

std::string build_key(const PyCache& self, std::string_view prefix, std::string_view method,
                      py::handle app, py::handle model, py::handle user, py::handle params) {
  auto c = self.handle();
  const auto a = key_arg(app), m = key_arg(model);
  std::optional<hostcache::detail::KeyArg> u;
  if (!user.is_none()) u = key_arg(user);
  std::vector<hostcache::detail::KeyArg> ps;
  for (py::handle p : params) ps.push_back(key_arg(p));
  return hostcache::detail::build_key(*c, {prefix, method, &a, &m, u ? &*u : nullptr, &ps});
}

// ---- sizes --------------------------------------------------------------------------

// 1048576, "64M", "256MB", "1GiB", "512k": a byte count.
std::size_t size_of(py::handle h) {
  if (PyLong_Check(h.ptr())) {
    const long long v = h.cast<long long>();
    if (v <= 0) raise(Errc::invalid_config, "a size must be > 0");
    return std::size_t(v);
  }
  std::string s = py::str(h).cast<std::string>();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  std::size_t start = i;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == start) raise(Errc::invalid_config, "not a size: '" + s + "'");
  const double n = std::stod(s.substr(start, i - start));
  std::string unit;
  for (; i < s.size(); ++i) {
    if (!std::isspace(static_cast<unsigned char>(s[i]))) unit.push_back(char(std::toupper(s[i])));
  }
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else raise(Errc::invalid_config, "not a size: '" + s + "' (use K, M, G or T)");
  const double v = n * mult;
  if (!(v >= 1) || v > 1e15) raise(Errc::invalid_config, "size out of range: '" + s + "'");
  return std::size_t(v);
}

PyObject* new_exception(py::module_& m, const char* name, const char* doc, std::vector<PyObject*> bases) {
  py::tuple b(bases.size());
  for (std::size_t i = 0; i < bases.size(); ++i) b[i] = py::reinterpret_borrow<py::object>(bases[i]);
  std::string full = std::string("hostcache.") + name;
  PyObject* e = PyErr_NewExceptionWithDoc(full.c_str(), doc, b.ptr(), nullptr);
  if (e == nullptr) raise_set();
  m.add_object(name, py::reinterpret_borrow<py::object>(e));
  return e;
}

}  // namespace

PYBIND11_MODULE(_hostcache, m) {
  m.doc() = "hostcache: a cache shared by the processes of one host (shared memory, no server).";

  exc.base = new_exception(m, "Error", "A hostcache error; .code is the Errc name.", {PyExc_Exception});
  exc.invalid = new_exception(m, "InvalidArgument",
                              "Bad input (a key, value, TTL, tag, name, namespace or config): nothing changed.",
                              {exc.base, PyExc_ValueError});
  exc.overflow = new_exception(m, "Overflow", "incr/decr: the result does not fit a signed 64-bit integer.",
                               {exc.base, PyExc_OverflowError});
  exc.not_found = new_exception(m, "NotFound", "attach: no segment of that name.", {exc.base});
  exc.already_exists = new_exception(m, "AlreadyExists", "The name is taken.", {exc.base});
  exc.permission = new_exception(m, "PermissionDenied", "The segment's owner or mode refused access.",
                                 {exc.base, PyExc_PermissionError});
  exc.corrupt = new_exception(m, "Corrupt", "The segment fails validation.", {exc.base});
  exc.incompatible = new_exception(m, "Incompatible", "Another layout version or format stamp.", {exc.base});
  exc.busy = new_exception(m, "Busy", "A stripe stayed locked by a live process past lock_timeout.",
                           {exc.base, PyExc_TimeoutError});
  exc.io = new_exception(m, "IOError", "An OS failure (shm_open, ftruncate, mmap).", {exc.base, PyExc_OSError});
  exc.closed = new_exception(m, "Closed", "The Cache handle was closed.", {exc.base, PyExc_ValueError});

  // C++ errors escaping elsewhere (constructors): their Python class.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const hostcache::Error& e) {
      set_python_error(class_of(e.code()), e.what(), hostcache::to_string(e.code()));
    }
  });

  m.attr("FOREVER") = py::float_(std::numeric_limits<double>::infinity());
  m.attr("MAX_TAGS") = hostcache::kMaxTags;
  m.attr("MAX_TAG_BYTES") = hostcache::kMaxTagBytes;
  m.attr("MAX_NAMESPACE_BYTES") = hostcache::kMaxNamespaceBytes;
  m.attr("MAX_NAME_BYTES") = hostcache::kMaxNameBytes;

  m.def("parse_size", &size_of, py::arg("size"), "A byte count from an int or '256M', '1G', '512KiB'.");
  m.def(
      "model_tag",
      [](py::handle app, py::handle model) {
        auto render = [](py::handle h) -> std::string {
          if (PyUnicode_Check(h.ptr())) return std::string(key_view(h));
          if (PyBool_Check(h.ptr())) return h.ptr() == Py_True ? "true" : "false";
          if (PyLong_Check(h.ptr())) return py::str(h).cast<std::string>();
          if (PyBytes_Check(h.ptr())) return hostcache::detail::hash_token(key_view(h));
          throw py::type_error("model_tag: app and model must be str, int or bytes");
        };
        return hostcache::detail::join_model_tag(render(app), render(model));
      },
      py::arg("app"), py::arg("model"),
      "The tag memoized entries of (app, model) carry: '{app}.{model}'.");

  py::class_<PyCache>(m, "Cache", "A handle on a named shared-memory segment (see cache.h).")
      .def_static(
          "open",
          [](const std::string& name, py::handle capacity, py::handle default_ttl, unsigned stripes,
             unsigned mode, std::size_t max_key_bytes, std::size_t max_value_bytes, double lock_timeout,
             std::size_t compress_min_bytes, int compress_level, bool allow_foreign, bool enabled) {
            hostcache::Config cfg;
            cfg.name = name;
            cfg.capacity_bytes = size_of(capacity);
            const ms d = ttl_of(default_ttl, "default_ttl");
            if (d.count() > 0) cfg.default_ttl = d;
            cfg.stripes = stripes;
            cfg.mode = mode;
            cfg.max_key_bytes = max_key_bytes;
            cfg.max_value_bytes = max_value_bytes;
            if (!(lock_timeout >= 0)) raise(Errc::invalid_config, "lock_timeout must be >= 0");
            cfg.lock_timeout = ms(std::int64_t(std::min(lock_timeout, 86400.0) * 1000));
            cfg.compress_min_bytes = compress_min_bytes;
            cfg.compress_level = compress_level;
            cfg.allow_foreign = allow_foreign;
            cfg.enabled = enabled;
            return PyCache(unlocked([&] { return hostcache::Cache::open(cfg); }));
          },
          py::arg("name"), py::arg("capacity") = 64u << 20, py::arg("default_ttl") = 1800.0,
          py::arg("stripes") = 0u, py::arg("mode") = 0600u, py::arg("max_key_bytes") = 1024u,
          py::arg("max_value_bytes") = 1u << 20, py::arg("lock_timeout") = 2.0,
          py::arg("compress_min_bytes") = 0u, py::arg("compress_level") = 1,
          py::arg("allow_foreign") = false, py::arg("enabled") = true,
          "Creates the segment NAME or attaches to it (validated).")
      .def_static(
          "attach",
          [](const std::string& name, bool allow_foreign) {
            return PyCache(unlocked([&] { return hostcache::Cache::attach(name, allow_foreign); }));
          },
          py::arg("name"), py::arg("allow_foreign") = false, "Attaches to an existing segment only.")
      .def_static(
          "remove",
          [](const std::string& name) { return unlocked([&] { return hostcache::Cache::remove(name); }); },
          py::arg("name"), "Unlinks the name; mappings keep working. False if there was none.")
      .def("get", &get, py::arg("key"), "The value (bytes), or None on a miss.")
      .def("set", &set, py::arg("key"), py::arg("value"), py::arg("ttl") = py::none(),
           py::arg("tags") = py::tuple(), py::arg("namespace") = py::none())
      .def("add", &add, py::arg("key"), py::arg("value"), py::arg("ttl") = py::none(),
           py::arg("tags") = py::tuple(), py::arg("namespace") = py::none(),
           "Stores only if KEY has no valid entry; True if it stored.")
      .def("delete", &erase, py::arg("key"), "True if an entry was there.")
      .def("touch", &touch, py::arg("key"), py::arg("ttl") = py::none(), "A new TTL; False on a miss.")
      .def("incr", &incr, py::arg("key"), py::arg("delta") = 1)
      .def("decr", &decr, py::arg("key"), py::arg("delta") = 1)
      .def("ttl", &ttl, py::arg("key"), "Seconds left (math.inf: never expires), None on a miss.")
      .def("get_many", &get_many, py::arg("keys"), "{key: value} for the hits.")
      .def("set_many", &set_many, py::arg("mapping"), py::arg("ttl") = py::none(),
           py::arg("tags") = py::tuple(), py::arg("namespace") = py::none(),
           "Stores each pair; returns the keys that were not stored.")
      .def("clear", &clear, py::arg("namespace") = py::none(),
           "O(1): hides every entry (or every entry of NAMESPACE).")
      .def("invalidate", &invalidate, py::arg("tag"), "O(1): hides every entry carrying TAG.")
      .def("stats", &stats, "Counters summed over every process.")
      .def("method_stats", &method_stats, "Per-method memoize statistics summed over every process.")
      .def("get_or_compute", &get_or_compute, py::arg("key"), py::arg("fn"), py::arg("ttl") = py::none(),
           py::arg("tags") = py::tuple(), py::arg("namespace") = py::none(), py::arg("lease") = 30.0,
           py::arg("method") = py::none(), py::arg("stale_while_revalidate") = 0.0,
           py::arg("dumps") = py::none(), py::arg("loads") = py::none(),
           "The value cached under KEY, or fn() stored; one fn() per key across the host.")
      .def("build_key", &build_key, py::arg("prefix"), py::arg("method"), py::arg("app"),
           py::arg("model"), py::arg("user"), py::arg("params") = py::tuple(),
           "The memoize key prefix_method_app_model_user[_params] (user None: not user specific).")
      .def("close", &PyCache::close, "Drops this handle's mapping (other handles are unaffected).")
      .def_property_readonly("closed", &PyCache::closed)
      .def_property_readonly("name", [](const PyCache& s) { return std::string(s.handle()->name()); })
      .def_property_readonly("default_ttl", [](const PyCache& s) { return seconds_of(s.handle()->default_ttl()); })
      .def_property_readonly("max_key_bytes", [](const PyCache& s) { return s.handle()->max_key_bytes(); })
      .def_property_readonly("max_value_bytes", [](const PyCache& s) { return s.handle()->max_value_bytes(); })
      .def_property_readonly("enabled", [](const PyCache& s) { return s.handle()->enabled(); })
      .def("__enter__", [](py::object s) { return s; })
      .def("__exit__", [](PyCache& s, py::args) { s.close(); })
      .def("__repr__", [](const PyCache& s) {
        return s.closed() ? std::string("<hostcache.Cache closed>")
                          : "<hostcache.Cache '" + std::string(s.handle()->name()) + "'>";
      });
}
