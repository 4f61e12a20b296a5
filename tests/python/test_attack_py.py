"""Adversarial tests of the PrivateSink get() and the Django _key() fast path.

Run:
  cd /tmp/attack23 && PYTHONPATH=/tmp/attack23/build/python /usr/bin/python3 -m pytest -q \
      tests/python/test_attack_py.py -p no:cacheprovider --rootdir tests/python
"""
import gc
import hashlib
import os
import pickle
import random
import resource
import signal
import sys
import threading
import warnings
from unittest import mock

import pytest
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache, CacheKeyWarning
from django.core.cache.backends.locmem import LocMemCache

import hostcache
from hostcache.django import HostCache
from conftest import fork, segment_name, wait


# ---- helpers ---------------------------------------------------------------------

def pattern(tag, n, compressible):
    """n bytes unique to tag; compressible: a repeating text, else pseudo-random."""
    if n == 0:
        return b""
    if compressible:
        unit = (tag + "|").encode()
        return (unit * (n // len(unit) + 1))[:n]
    return hashlib.shake_256(tag.encode()).digest(n)


def run_in_child(fn, timeout=120.0):
    pid = fork(fn)
    return wait(pid, timeout)


# ---- 1. get(): bytes returned --------------------------------------------------------

SIZES = [0, 1, 15, 16, 17, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192, 8193, 65535, 65536,
         65537, 1 << 20]


@pytest.mark.parametrize("compress", [0, 1, 4096])
def test_get_roundtrip_at_every_boundary(compress):
    name = segment_name("rt")
    c = hostcache.Cache.open(name, capacity="64M", max_value_bytes=2 << 20, compress_min_bytes=compress)
    try:
        for comp in (True, False):
            for n in SIZES:
                v = pattern(f"{n}-{comp}", n, comp)
                k = f"k{n}{comp}"
                c.set(k, v)
                got = c.get(k)
                assert type(got) is bytes
                assert got == v, (n, comp, compress)
                # bytes key, str key, same entry
                assert c.get(k.encode()) == v
                assert c.get_many([k])[k] == v
                # overwrite with a size on the other side of 4096 and back
                for m in (4096 - 1, 4096 + 1, 0, n):
                    w = pattern(f"{m}-{comp}-{n}", m, comp)
                    c.set(k, w)
                    assert c.get(k) == w
    finally:
        c.close()
        hostcache.Cache.remove(name)


def test_get_value_exactly_max_value_bytes_and_bytearray_memoryview_inputs():
    name = segment_name("mx")
    c = hostcache.Cache.open(name, capacity="64M", max_value_bytes=4097)
    try:
        for n in (4096, 4097):
            v = os.urandom(n)
            c.set("a", bytearray(v))
            assert c.get("a") == v
            c.set("b", memoryview(v))
            assert c.get("b") == v
        with pytest.raises(hostcache.InvalidArgument):
            c.set("c", b"x" * 4098)
        assert c.get("c") is None
    finally:
        c.close()
        hostcache.Cache.remove(name)


# ---- 2. get(): concurrent overwrites, never torn, never another key's -----------------

def _candidates(nkeys):
    cand = {}
    for i in range(nkeys):
        vals = []
        for j, (n, comp) in enumerate([(0, False), (1, False), (4095, False), (4096, True), (4097, False),
                                        (4097, True), (9000, False), (70000, True), (300000, False)]):
            vals.append(pattern(f"key{i}-cand{j}", n, comp))
        cand[f"key{i}"] = vals
    return cand


@pytest.mark.parametrize("compress", [0, 2048])
def test_concurrent_overwrites_give_whole_values_of_the_right_key(compress):
    name = segment_name("tear")
    c = hostcache.Cache.open(name, capacity="64M", stripes=1, max_value_bytes=1 << 20,
                             compress_min_bytes=compress, lock_timeout=30.0)
    nkeys = 6
    cand = _candidates(nkeys)
    index = {k: {hashlib.sha256(v).digest(): v for v in vs} for k, vs in cand.items()}
    keys = list(cand)
    try:
        for k in keys:
            c.set(k, cand[k][0])

        def writer(seed):
            def run():
                rnd = random.Random(seed)
                for _ in range(6000):
                    k = rnd.choice(keys)
                    if rnd.random() < 0.05:
                        c.delete(k)
                    else:
                        c.set(k, rnd.choice(cand[k]))
            return run

        def check(k, v, bad):
            if v is None:
                return
            if type(v) is not bytes:
                bad.append((k, "type", type(v)))
                return
            w = index[k].get(hashlib.sha256(v).digest())
            if w is None or w != v:
                other = [o for o in keys if hashlib.sha256(v).digest() in index[o]]
                bad.append((k, len(v), other))

        def reader(seed, n, bad):
            rnd = random.Random(seed)
            for _ in range(n):
                k = rnd.choice(keys)
                if rnd.random() < 0.2:
                    ks = rnd.sample(keys, 3)
                    for kk, vv in c.get_many(ks).items():
                        check(kk, vv, bad)
                else:
                    check(k, c.get(k), bad)

        def reader_proc(seed):
            def run():
                bad = []
                reader(seed, 8000, bad)
                assert bad == [], bad[:5]
            return run

        pids = [fork(writer(s)) for s in range(3)] + [fork(reader_proc(100 + s)) for s in range(2)]
        bad = []
        threads = [threading.Thread(target=reader, args=(200 + s, 6000, bad)) for s in range(4)]
        # a thread that also writes, in this process
        threads.append(threading.Thread(target=writer(999)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [wait(p, 300) for p in pids]
        assert bad == [], bad[:5]
        assert codes == [0] * len(pids)
    finally:
        c.close()
        hostcache.Cache.remove(name)


# ---- 3. get(): small thread stacks (the 4 KiB private buffer lives on the stack) -------

@pytest.mark.parametrize("compress", [0, 1024])
def test_get_in_a_thread_with_the_smallest_stack(compress):
    name = segment_name("stk")
    c = hostcache.Cache.open(name, capacity="16M", compress_min_bytes=compress)
    vals = {n: pattern(f"s{n}", n, True) for n in (4095, 4096, 4097, 100000)}
    for n, v in vals.items():
        c.set(f"k{n}", v)

    def child():
        threading.stack_size(32768)  # the minimum CPython allows
        out = []

        def go():
            for n in vals:
                out.append(c.get(f"k{n}") == vals[n])
                out.append(c.get_many([f"k{n}"]).get(f"k{n}") == vals[n])
        t = threading.Thread(target=go)
        t.start()
        t.join()
        assert out == [True] * (2 * len(vals)), out
    try:
        assert run_in_child(child) == 0
    finally:
        c.close()
        hostcache.Cache.remove(name)


# ---- 4. get(): exceptions --------------------------------------------------------------

def test_get_errors_do_not_leak_or_break_the_gil():
    name = segment_name("err")
    c = hostcache.Cache.open(name, capacity="8M", max_key_bytes=64)
    try:
        c.set("k", b"v" * 5000)
        for bad, exc in ((1, TypeError), (None, TypeError), (bytearray(b"k"), TypeError),
                         ("sur\udc80", UnicodeEncodeError), (1.5, TypeError)):
            with pytest.raises(exc):
                c.get(bad)
            with pytest.raises(exc):
                c.get_many(["k", bad])
        assert c.get("") is None
        assert c.get("x" * 65) is None
        assert c.get_many(["", "x" * 65, "k"]) == {"k": b"v" * 5000}
        # the interpreter is still sane: threads run, GIL state intact
        r = []
        t = threading.Thread(target=lambda: r.append(c.get("k")))
        t.start()
        t.join()
        assert r == [b"v" * 5000]
        c2 = hostcache.Cache.attach(name)
        c2.close()
        with pytest.raises(hostcache.Closed):
            c2.get("k")
        with pytest.raises(ValueError):
            c2.get("k")
        assert c.get("k") == b"v" * 5000
    finally:
        c.close()
        hostcache.Cache.remove(name)


def test_close_from_another_thread_while_gets_run():
    name = segment_name("cls")
    v = os.urandom(300000)
    try:
        for _ in range(20):
            c = hostcache.Cache.open(name, capacity="16M")
            c.set("k", v)
            started = threading.Event()
            res = []

            def getter():
                started.set()
                for _ in range(2000):
                    try:
                        g = c.get("k")
                    except hostcache.Closed:
                        res.append("closed")
                        return
                    if g != v:
                        res.append("wrong")
                        return
                res.append("done")
            ts = [threading.Thread(target=getter) for _ in range(3)]
            for t in ts:
                t.start()
            started.wait()
            c.close()
            for t in ts:
                t.join()
            assert all(x in ("closed", "done") for x in res), res
    finally:
        hostcache.Cache.remove(name)


SHM_DUMP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build", "tools", "shm-dump")


def _stripe0(name):
    import json
    import subprocess
    out = subprocess.run([SHM_DUMP, name, "--json", "--limit", "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["stripes"][0]


@pytest.mark.skipif(not os.access(SHM_DUMP, os.X_OK), reason="needs build/tools/shm-dump")
def test_busy_stripe_get_is_a_miss_not_an_exception():
    """A writer stopped (SIGSTOP, alive) while it holds the only stripe's lock:
    get and get_many answer a miss, set raises Busy, nothing else leaks."""
    import time
    name = segment_name("busy")
    c = hostcache.Cache.open(name, capacity="64M", stripes=1, lock_timeout=0.05, max_value_bytes=8 << 20)
    try:
        stay = os.urandom(5000)
        c.set("stay", stay)
        big = os.urandom(4 << 20)
        for _ in range(300):
            pid = fork(lambda: [c.set("big", big) for _ in iter(int, 1)])
            time.sleep(random.uniform(0.001, 0.01))  # where the stop lands, not synchronisation
            os.kill(pid, signal.SIGSTOP)
            os.waitpid(pid, os.WUNTRACED)
            s = _stripe0(name)
            if s["lock_owner_pid"] == pid:
                break
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        else:
            pytest.fail("never stopped a writer holding the lock")
        try:
            got = [c.get("stay") for _ in range(5)]
            many = c.get_many(["stay", "big"])
            with pytest.raises(hostcache.Busy):
                c.set("x", b"y")
            r = []
            t = threading.Thread(target=lambda: r.append(c.get("stay")))
            t.start()
            t.join()
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert got == [None] * 5 or all(g in (None, stay) for g in got)
        assert set(many) <= {"stay", "big"}
        assert r in ([None], [stay])
        assert c.get("stay") == stay  # the dead owner's lock is repaired
    finally:
        c.close()
        hostcache.Cache.remove(name)


# ---- 5. threads + fork ------------------------------------------------------------------

def test_fork_in_a_thread_heavy_process_child_uses_the_parents_handle():
    name = segment_name("fork")
    c = hostcache.Cache.open(name, capacity="64M", stripes=2, max_value_bytes=1 << 20, lock_timeout=5.0)
    vals = [pattern(f"f{n}", n, n % 2 == 0) for n in (0, 4095, 4096, 4097, 200000)]
    idx = {hashlib.sha256(v).digest() for v in vals}
    stop = threading.Event()
    bad = []

    def hammer(seed):
        rnd = random.Random(seed)
        while not stop.is_set():
            k = f"k{rnd.randrange(8)}"
            if rnd.random() < 0.5:
                c.set(k, rnd.choice(vals))
            else:
                g = c.get(k)
                if g is not None and hashlib.sha256(g).digest() not in idx:
                    bad.append(len(g))
    try:
        for i in range(8):
            c.set(f"k{i}", vals[i % len(vals)])
        ts = [threading.Thread(target=hammer, args=(s,)) for s in range(6)]
        for t in ts:
            t.start()

        def child():
            for i in range(200):
                k = f"k{i % 8}"
                g = c.get(k)
                assert g is None or hashlib.sha256(g).digest() in idx
                c.set(k, vals[i % len(vals)])
                assert c.get(k) in vals
                c.get_many([f"k{j}" for j in range(8)])
        codes = []
        for _ in range(40):
            codes.append(wait(fork(child), 60))
        stop.set()
        for t in ts:
            t.join()
        assert codes == [0] * 40
        assert bad == []
    finally:
        stop.set()
        c.close()
        hostcache.Cache.remove(name)


# ---- 6. memory ---------------------------------------------------------------------------

def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


@pytest.mark.parametrize("n", [4097, 1 << 20])
def test_many_gets_of_large_values_do_not_grow_memory(n):
    import tracemalloc
    name = segment_name("mem")
    c = hostcache.Cache.open(name, capacity="64M", max_value_bytes=2 << 20)
    try:
        v = os.urandom(n)
        c.set("k", v)
        for _ in range(500):
            assert c.get("k") == v
        gc.collect()
        before = _rss_kib()
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        for _ in range(4000):
            c.get("k")
            c.get("absent")
            c.get_many(["k", "absent"])
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in snap1.compare_to(snap0, "filename"))
        after = _rss_kib()
        assert grown < 256 * 1024, grown
        assert after - before < 32 * 1024, (before, after)
    finally:
        c.close()
        hostcache.Cache.remove(name)


# ---- 7. the binding's borrowed value views ------------------------------------------------

def test_set_many_pairs_mutated_while_the_gil_is_released():
    """set_many accepts (key, value) pairs; a bytes value is viewed without a
    reference of the binding's own (ValueView). When the pair is a list that
    another thread rebinds while set_many runs without the GIL, the bytes
    object is freed under the copy."""
    name = segment_name("uaf")
    big = 40 << 20

    def child():
        c = hostcache.Cache.open(name, capacity="1G", stripes=1, max_value_bytes=64 << 20)
        pool = [bytes(big) for _ in range(12)]  # calloc'd: made fast, each its own mapping
        pairs = [["a%d" % i, bytes(big)] for i in range(4)] + [["b", pool.pop()]]
        go = threading.Event()
        done = []

        def mutator():
            go.wait()
            # Runs as soon as set_many lets the GIL go: the viewed value's
            # only reference is dropped (and its mapping unmapped).
            pairs[-1][1] = pool.pop()
            done.append(1)
        for _ in range(10):
            done.clear()
            go.clear()
            t = threading.Thread(target=mutator)
            t.start()
            go.set()
            failed = c.set_many(pairs)
            t.join()
            assert failed == [] and done == [1]
            g = c.get("b")
            assert g == bytes(big), (len(g) if g else None)
            if not pool:
                break

    try:
        code = run_in_child(child, 300)
        assert code == 0, f"child exited {code} (negative: killed by that signal)"
    finally:
        try:
            hostcache.Cache.remove(name)
        except hostcache.Error:
            pass


# ---- 8. get_or_compute: Python callbacks never run under a stripe lock ---------------------

def test_get_or_compute_callbacks_run_without_the_stripe_lock():
    """fn, dumps and loads run in Python; none of them may run while this
    process holds the (only) stripe's lock: a writer in another process must
    get through while each is running."""
    name = segment_name("goc")
    c = hostcache.Cache.open(name, capacity="8M", stripes=1, lock_timeout=0.2)

    def other_process_can_write():
        def run():
            assert c.get("probe") is not None or True
            c.set("probe", b"p")  # raises Busy past lock_timeout
            assert c.get("probe") == b"p"
        return wait(fork(run), 30) == 0

    seen = []
    try:
        def fn():
            seen.append(("fn", other_process_can_write()))
            return {"v": 1}

        def dumps(v):
            seen.append(("dumps", other_process_can_write()))
            return pickle.dumps(v)

        def loads(b):
            seen.append(("loads", other_process_can_write()))
            return pickle.loads(b)
        assert c.get_or_compute("k", fn, dumps=dumps, loads=loads) == {"v": 1}
        assert c.get_or_compute("k", fn, dumps=dumps, loads=loads) == {"v": 1}
        # stale-while-revalidate path
        assert c.get_or_compute("s", fn, dumps=dumps, loads=loads, ttl=0.001, stale_while_revalidate=60) == {"v": 1}
        assert all(ok for _, ok in seen), seen
        assert {w for w, _ in seen} == {"fn", "dumps", "loads"}
    finally:
        c.close()
        hostcache.Cache.remove(name)


def test_memoize_key_building_in_threads_while_forking():
    name = segment_name("memo")
    c = hostcache.Cache.open(name, capacity="16M")

    @hostcache.memoize(c, method="m")
    def f(app, model, user=None, x=0):
        return [app, model, user, x]
    stop = threading.Event()
    errs = []

    def loop(s):
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert f("a", "M", s, x=i % 5) == ["a", "M", s, i % 5]
            except Exception as e:  # noqa
                errs.append(repr(e))
    ts = [threading.Thread(target=loop, args=(s,)) for s in range(4)]
    try:
        for t in ts:
            t.start()

        def child():
            for i in range(50):
                assert f("a", "M", 99, x=i % 3) == ["a", "M", 99, i % 3]
        codes = [wait(fork(child), 60) for _ in range(30)]
        stop.set()
        for t in ts:
            t.join()
        assert codes == [0] * 30 and errs == []
    finally:
        stop.set()
        c.close()
        hostcache.Cache.remove(name)


def test_open_segment_in_a_child_forked_while_a_thread_opens():
    """A thread of the parent inside open_segment (holding its module lock,
    here held inside Cache.open) when the process forks: the child has no
    copy of that thread, and must still open segments, not block for ever
    on the lock it inherited."""
    from hostcache.django import backend
    inside, release = threading.Event(), threading.Event()
    real_open = hostcache.Cache.open
    slow, other = segment_name("slow"), segment_name("other")

    def held_open(name, **kw):
        if name == slow:
            inside.set()
            release.wait(60)
        return real_open(name, **kw)
    t = None
    try:
        with mock.patch.object(hostcache.Cache, "open", staticmethod(held_open)):
            t = threading.Thread(target=backend.open_segment, args=(slow,), kwargs={"capacity": "16M"})
            t.start()
            assert inside.wait(60)

            def child():
                c = backend.open_segment(other, capacity="16M")
                c.set("k", b"v")
                assert c.get("k") == b"v"
            pid = fork(child)
            release.set()
            assert wait(pid, 20) == 0
        t.join()
    finally:
        release.set()
        if t is not None:
            t.join()
        for n in (slow, other):
            c = backend._opened.pop(n, None)
            if c is not None:
                c.close()
            hostcache.Cache.remove(n)


# ---- 9. Django _key() ------------------------------------------------------------------------

def old_key(self, key, version=None):
    """The backend's _key() before 01fcfe9."""
    key = self.make_key(key, version=version)
    self.validate_key(key)
    full = self._ns_prefix + key
    b = full.encode("utf-8", "surrogatepass")
    limit = self.raw.max_key_bytes
    if len(b) > limit:
        digest = hashlib.sha256(b).hexdigest()
        full = b[: max(0, limit - 66)] + b"#" + digest.encode()
        return full
    return b


def as_bytes(k):
    return k.encode("utf-8") if isinstance(k, str) else k


def _backend(**kw):
    opts = kw.pop("OPTIONS", {})
    params = {"OPTIONS": opts, **kw}
    return HostCache(segment_name("dj"), params)


def _keys_around(limit, prefix_len):
    """Keys whose made key + prefix is around the limit."""
    made_extra = len(":1:") + prefix_len
    out = []
    for d in (-2, -1, 0, 1, 2):
        n = limit - made_extra + d
        if n > 0:
            out.append("a" * n)
            out.append("\u00e9" + "a" * (n - 1))
            out.append("a" * (n - 1) + "\x7f")
            out.append("a" * (n - 2) + " b" if n > 2 else "x")
    return out


KEYS = ["plain", "", " ", "\t", "\x00", "\x7f", "\x1f", "\x20a", "a\x21", "~", "a:b", "caf\u00e9",
        "\u00e9", "\U0001f600", "sur\udc80", "sur\ud800x", "a" * 246, "a" * 247, "a" * 248,
        "\u00e9" * 247, "\u00e9" * 600, "x" * 2000, "\u200b", "\u00a0", "a\nb", "a\rb", "\x80"]


@pytest.mark.parametrize("opts", [
    {},
    {"NAMESPACE": "ns"},
    {"NAMESPACE": "n\u00e9"},
    {"NAMESPACE": "n s"},
    {"NAMESPACE": "\udc80"},
    {"MAX_KEY_BYTES": 100},
    {"MAX_KEY_BYTES": 100, "NAMESPACE": "ns"},
    {"MAX_KEY_BYTES": 100, "NAMESPACE": "\u00e9\u00e9"},
    {"MAX_KEY_BYTES": 66},
    {"MAX_KEY_BYTES": 65},
])
def test_segment_key_bytes_are_the_old_ones(opts):
    b = _backend(OPTIONS=dict(opts))
    try:
        limit = b.raw.max_key_bytes
    except hostcache.Error as e:
        pytest.skip(f"segment refuses {opts}: {e}")
    ns = len(b._ns_prefix.encode("utf-8", "surrogatepass"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key in KEYS + _keys_around(limit, ns) + _keys_around(limit, 0):
                try:
                    old = old_key(b, key)
                except Exception as e:
                    with pytest.raises(type(e)):
                        b._key(key)
                    continue
                new = b._key(key)
                assert as_bytes(new) == old, (key, opts)
    finally:
        hostcache.Cache.remove(b._segment)


def _warned(cache, key, op="set"):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            if op == "set":
                cache.set(key, key)
            else:
                getattr(cache, op)(key)
        except Exception as e:
            return ("raised", type(e).__name__)
    return [str(x.message) for x in w if issubclass(x.category, CacheKeyWarning)]


def test_warnings_match_locmem_for_every_key_and_operation():
    hc = caches["default"]
    loc = caches["locmem"]
    ops = ["set", "get", "has_key", "delete", "touch"]
    for key in KEYS + ["a" * 250, "a" * 251, "a" * 249 + "\x7f"]:
        for op in ops:
            assert _warned(hc, key, op) == _warned(loc, key, op), (key, op)


def _keyfunc_backends(fn, **extra):
    hc = _backend(KEY_FUNCTION=fn, **extra)
    loc = LocMemCache("attack-" + str(id(fn)), {"KEY_FUNCTION": fn, **extra})
    return hc, loc


@pytest.mark.parametrize("kf", [
    lambda k, p, v: k,                      # the bare key (length <= 250 exactly at 250)
    lambda k, p, v: f"{p}{k}" * 2,
    lambda k, p, v: k.encode(),             # bytes: odd, but what do both backends do?
    lambda k, p, v: 12345,                  # an int
    lambda k, p, v: type("S", (str,), {})(k),  # a str subclass
], ids=["bare", "doubled", "bytes", "int", "strsub"])
def test_custom_key_function_behaves_as_locmem_and_old(kf):
    hc, loc = _keyfunc_backends(kf)
    try:
        for key in ["plain", "a" * 250, "a" * 251, "sp ace", "caf\u00e9"]:
            def outcome(cache):
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    try:
                        cache.set(key, 1)
                        r = cache.get(key)
                    except Exception as e:
                        return ("raised", type(e).__name__)
                return (r, [str(x.message) for x in w if issubclass(x.category, CacheKeyWarning)])
            assert outcome(hc) == outcome(loc), key
    finally:
        hostcache.Cache.remove(hc._segment)


def test_instance_patched_validate_key_is_called():
    """mock.patch.object(cache, 'validate_key') (a test's usual way to make
    keys strict or to observe them): the old backend called it for every key,
    as every Django backend does."""
    b = _backend()
    try:
        with mock.patch.object(b, "validate_key") as v:
            b.set("plain", 1)
            b.get("plain")
        assert v.call_count == 2, v.call_args_list
    finally:
        hostcache.Cache.remove(b._segment)


def test_patched_basecache_validate_key_is_called_as_by_locmem():
    """A project that makes key validation strict by patching
    BaseCache.validate_key (raising instead of warning): LocMemCache honours
    it for every key; HostCache took the patched function for 'stock'."""
    seen = {"hc": [], "loc": []}

    def strict(self, key):
        seen["hc" if isinstance(self, HostCache) else "loc"].append(key)
        if "forbidden" in key:
            raise ValueError("strict: " + key)
    with mock.patch.object(BaseCache, "validate_key", strict):
        b = _backend()
        loc = LocMemCache("attack-strict", {})
        try:
            for cache in (b, loc):
                with pytest.raises(ValueError):
                    cache.set("forbidden", 1)
            assert len(seen["hc"]) == len(seen["loc"]) == 1, seen
        finally:
            hostcache.Cache.remove(b._segment)


def test_class_patched_after_instances_exist():
    b = _backend()
    try:
        b.set("x", 1)
        seen = []
        with mock.patch.object(HostCache, "validate_key", lambda self, key: seen.append(key)):
            b.get("x")
        assert seen == [b.make_key("x")], seen
    finally:
        hostcache.Cache.remove(b._segment)


@pytest.mark.parametrize("opts", [{}, {"NAMESPACE": "ns"}, {"NAMESPACE": "n\u00e9"},
                                  {"MAX_KEY_BYTES": 80}, {"MAX_KEY_BYTES": 80, "NAMESPACE": "\u00e9"}])
def test_every_operation_agrees_between_the_two_paths(opts):
    b = _backend(OPTIONS=dict(opts))
    limit = b.raw.max_key_bytes
    ns = len(b._ns_prefix.encode())
    keys = ["plain", "caf\u00e9", "a b", "a\x7f", "x" * (limit - ns - 3), "x" * (limit - ns - 2),
            "\u00e9" * ((limit - ns - 3) // 2), "\u00e9" * ((limit - ns - 3) // 2 + 1)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = {k: i for i, k in enumerate(keys)}
            assert b.set_many(data) == []
            for k, i in data.items():
                seg = old_key(b, k)
                assert b.raw.get(seg) == str(i).encode(), k
                assert b.get(k) == i and b.has_key(k)
                assert b.incr(k, 10) == i + 10
                assert b.raw.get(seg) == str(i + 10).encode()
                assert b.touch(k, 100)
                assert 0 < b.raw.ttl(seg) <= 100
            assert b.get_many(keys) == {k: i + 10 for k, i in data.items()}
            assert b.get_many(list(keys) + list(keys)) == {k: i + 10 for k, i in data.items()}
            b.delete_many(keys[::2])
            for j, k in enumerate(keys):
                assert b.has_key(k) == (j % 2 == 1)
                assert (b.raw.get(old_key(b, k)) is not None) == (j % 2 == 1)
            # get_or_set: the same segment key
            for k in keys:
                b.get_or_set(k, lambda: 7)
                assert b.raw.get(old_key(b, k)) is not None
    finally:
        hostcache.Cache.remove(b._segment)


def test_namespaced_alias_and_plain_alias_stay_apart():
    """An ASCII key of the default alias must never land on a namespaced
    alias's entry (ns + '|' + key) or the other way round."""
    seg = segment_name("nsa")
    plain = HostCache(seg, {})
    ns = HostCache(seg, {"OPTIONS": {"NAMESPACE": "one"}})
    try:
        plain.set("k", "plain")
        ns.set("k", "ns")
        assert plain.get("k") == "plain" and ns.get("k") == "ns"
        # a plain key that spells the namespaced one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain2 = HostCache(seg, {"KEY_FUNCTION": lambda k, p, v: "one|" + k})
            assert plain2.get(":1:k") == "ns"  # same bytes as before: documented shape
    finally:
        hostcache.Cache.remove(seg)


def test_max_key_bytes_cached_per_instance_across_reopen():
    """_max_key_bytes is read once: an alias whose segment handle changes
    (another alias opened the segment first with another limit) keeps using
    one limit consistently."""
    seg = segment_name("lim")
    a = HostCache(seg, {"OPTIONS": {"MAX_KEY_BYTES": 100}})
    b = HostCache(seg, {"OPTIONS": {"MAX_KEY_BYTES": 300}})
    try:
        assert a.raw is b.raw  # one handle per process
        key = "z" * 150
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b.set(key, 1)
            assert a.get(key) == 1
            assert as_bytes(b._key(key)) == old_key(b, key)
    finally:
        hostcache.Cache.remove(seg)


def test_get_or_compute_loads_interrupt_is_not_swallowed():
    """A KeyboardInterrupt (Ctrl-C) or SystemExit raised while loads() decodes
    a hit is not a 'value written by something else': it must reach the
    caller, not be cleared and answered by recomputing and overwriting."""
    name = segment_name("kbi")
    c = hostcache.Cache.open(name, capacity="8M")
    try:
        assert c.get_or_compute("k", lambda: "cached") == "cached"
        calls = []

        def loads(b):
            raise KeyboardInterrupt

        def fn():
            calls.append(1)
            return "recomputed"
        with pytest.raises(KeyboardInterrupt):
            c.get_or_compute("k", fn, loads=loads)
        assert calls == []
        assert pickle.loads(c.get("k")) == "cached"
    finally:
        c.close()
        hostcache.Cache.remove(name)


def test_a_fork_safe_lock_held_by_another_thread_is_free_in_the_child():
    """hostcache._forksafe.ForkSafeLock (the Django backend's and app's
    module locks): held by another thread of the parent at fork, it is
    unheld in the child, and still held in the parent until that thread
    lets go. A plain threading.Lock in its place stays held in the child
    for ever (the control)."""
    from hostcache._forksafe import ForkSafeLock
    from hostcache.django import backend, metadata

    assert isinstance(backend._opening, ForkSafeLock)
    assert isinstance(metadata._lock, ForkSafeLock)
    for lock, free_in_child in ((ForkSafeLock(), True), (threading.Lock(), False)):
        held, release = threading.Event(), threading.Event()

        def hold():
            with lock:
                held.set()
                release.wait(30)

        t = threading.Thread(target=hold)
        t.start()
        assert held.wait(30)
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    if lock.locked():
                        os._exit(1)
                    with lock:
                        pass
                    os._exit(0)
                finally:
                    os._exit(2)
            status = wait(pid)
            assert lock.locked(), "the parent's lock is its holder's until it lets go"
        finally:
            release.set()
            t.join()
        assert status == (0 if free_in_child else 1)
        assert not lock.locked()
