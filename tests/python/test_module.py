"""The hostcache module: the binding of cache.h and memoize.h."""
import math
import os
import pickle
import signal
import sys
import threading
import time

import pytest

import hostcache
from conftest import fork, segment_name, wait


def test_get_set_roundtrip_types(cache):
    assert cache.get("missing") is None
    cache.set("s", b"bytes")
    cache.set(b"b\xff", bytearray(b"ba"))
    cache.set("m", memoryview(b"mv"))
    cache.set("é", b"")
    assert cache.get("s") == b"bytes" and type(cache.get("s")) is bytes
    assert cache.get(b"b\xff") == b"ba"
    assert cache.get("m") == b"mv"
    assert cache.get("é") == b"" and cache.get("é".encode()) == b""  # str keys are their UTF-8
    big = os.urandom(500_000)
    cache.set("big", big)
    assert cache.get("big") == big
    # Around the size get() copies on the stack, then through the heap, and
    # a shorter value after a longer one in the same thread.
    for n in (4095, 4096, 4097, 8192, 100_000, 1, 0, 4096):
        v = os.urandom(n)
        cache.set(f"n{n}", v)
        assert cache.get(f"n{n}") == v, n


def test_bad_input_is_value_error_with_code(cache):
    with pytest.raises(TypeError):
        cache.set(1, b"x")
    with pytest.raises(TypeError):
        cache.set("k", "a str value")
    for call, code in [
        (lambda: cache.set("k" * 2000, b"x"), "key_too_large"),
        (lambda: cache.set("k", b"x" * (2 << 20)), "value_too_large"),
        (lambda: cache.set("k", b"x", ttl=-1), "invalid_ttl"),
        (lambda: cache.set("k", b"x", tags=["a", "b", "c", "d", "e"]), "too_many_tags"),
        (lambda: cache.set("k", b"x", tags=["t" * 300]), "tag_too_large"),
        (lambda: cache.set("", b"x"), "empty_key"),
        (lambda: cache.set("k", b"x", namespace="n" * 100), "invalid_namespace"),
        (lambda: hostcache.Cache.open("bad/name"), "invalid_name"),
        (lambda: hostcache.Cache.open(segment_name(), capacity=4096), "capacity_too_small"),
    ]:
        with pytest.raises(ValueError) as e:
            call()
        assert isinstance(e.value, hostcache.InvalidArgument)
        assert isinstance(e.value, hostcache.Error)
        assert e.value.code == code, (code, str(e.value))
    assert cache.get("k") is None  # nothing stored


def test_segment_errors():
    with pytest.raises(hostcache.NotFound) as e:
        hostcache.Cache.attach(segment_name())
    assert e.value.code == "not_found"
    assert issubclass(hostcache.PermissionDenied, PermissionError)
    assert issubclass(hostcache.Busy, TimeoutError)
    assert hostcache.Cache.remove(segment_name()) is False


def test_corrupt_segment_is_an_error_not_a_crash():
    n = segment_name()
    with open(f"/dev/shm/hostcache.{n}", "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(b"\x00garbage" * 10000)
    with pytest.raises(hostcache.Error) as e:
        hostcache.Cache.attach(n)
    assert e.value.code in ("corrupt", "incompatible")
    hostcache.Cache.remove(n)


def test_open_attach_share(name):
    a = hostcache.Cache.open(name, capacity="4M", default_ttl=120)
    b = hostcache.Cache.attach(name)
    a.set("k", b"v")
    assert b.get("k") == b"v"
    assert a.name == name and a.default_ttl == 120.0 and b.max_key_bytes == 1024
    assert hostcache.parse_size("256M") == 256 << 20 and hostcache.parse_size("1GiB") == 1 << 30
    a.close()
    assert a.closed and b.get("k") == b"v"
    with pytest.raises(hostcache.Closed):
        a.get("k")
    assert hostcache.Cache.remove(name)


def test_add_delete_touch_ttl(cache):
    assert cache.add("a", b"1", ttl=10)
    assert not cache.add("a", b"2")
    assert cache.get("a") == b"1"
    assert 9 < cache.ttl("a") <= 10
    assert cache.touch("a", hostcache.FOREVER)
    assert cache.ttl("a") == math.inf
    assert not cache.touch("nope", 5)
    assert cache.ttl("nope") is None
    assert cache.delete("a") and not cache.delete("a")
    cache.set("default", b"x")  # ttl=None: the cache's default
    assert abs(cache.ttl("default") - cache.default_ttl) < 1
    cache.set("short", b"x", ttl=0.05)
    time.sleep(0.1)
    assert cache.get("short") is None
    assert cache.add("short", b"y")


def test_incr_decr(cache):
    cache.set("n", b"10")
    assert cache.incr("n") == 11 and cache.incr("n", 5) == 16 and cache.decr("n", 20) == -4
    assert cache.get("n") == b"-4"
    with pytest.raises(ValueError) as e:
        cache.incr("missing")
    assert e.value.code == "not_found"
    cache.set("s", b"abc")
    with pytest.raises(ValueError) as e:
        cache.incr("s")
    assert e.value.code == "not_integer"
    cache.set("max", str(2 ** 63 - 1).encode())
    with pytest.raises(OverflowError):
        cache.incr("max")
    assert cache.get("max") == str(2 ** 63 - 1).encode()


def test_many_clear_namespace_invalidate(cache):
    assert cache.set_many({"a": b"1", "b": b"2", "big": b"x" * (2 << 20)}) == ["big"]
    assert cache.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"2"}
    cache.set("n1", b"v", namespace="one")
    cache.set("n2", b"v", namespace="two")
    cache.set("t", b"v", tags=["app.Model"])
    cache.clear(namespace="one")
    assert cache.get("n1") is None and cache.get("n2") == b"v" and cache.get("a") == b"1"
    cache.invalidate("app.Model")
    assert cache.get("t") is None and cache.get("n2") == b"v"
    cache.clear()
    assert cache.get_many(["a", "b", "n2"]) == {}
    s = cache.stats()
    for k in ("gets", "hits", "misses", "sets", "entries", "bytes_used", "capacity_bytes", "hit_ratio"):
        assert k in s
    assert s["capacity_bytes"] == 8 << 20 and 0 <= s["hit_ratio"] <= 1


def test_fork_children_share_the_parent_handle(cache):
    cache.set("from-parent", b"p")

    def child(i):
        def run():
            assert cache.get("from-parent") == b"p"
            cache.set(f"from-child-{i}", str(i).encode())
            for _ in range(200):
                cache.incr("counter") if cache.get("counter") else cache.add("counter", b"0") or cache.incr("counter")
        return run

    cache.set("counter", b"0")
    pids = [fork(child(i)) for i in range(4)]
    assert [wait(p) for p in pids] == [0] * 4
    assert all(cache.get(f"from-child-{i}") == str(i).encode() for i in range(4))
    assert cache.get("counter") == b"800"


def test_get_or_compute_caches_and_propagates_errors(cache):
    calls = []

    def compute():
        calls.append(1)
        return {"x": [1, 2]}

    assert cache.get_or_compute("k", compute, ttl=30, tags=["a.B"]) == {"x": [1, 2]}
    assert cache.get_or_compute("k", compute) == {"x": [1, 2]}
    assert len(calls) == 1
    assert pickle.loads(cache.get("k")) == {"x": [1, 2]}
    assert cache.get_or_compute("none", lambda: None) is None
    assert cache.get_or_compute("none", lambda: 1 / 0) is None  # a stored None is a hit

    class Boom(Exception):
        pass

    def fail():
        raise Boom("no")

    with pytest.raises(Boom):
        cache.get_or_compute("f", fail)
    assert cache.get("f") is None  # nothing cached
    assert cache.get_or_compute("f", lambda: 5) == 5
    cache.invalidate("a.B")
    assert cache.get_or_compute("k", lambda: "new") == "new"
    with pytest.raises(ValueError):
        cache.get_or_compute("", lambda: 1)
    # custom encoders
    assert cache.get_or_compute("raw", lambda: 42, dumps=lambda v: str(v).encode(), loads=int) == 42
    assert cache.get("raw") == b"42"


def test_get_or_compute_namespace_stores_after_clear(cache):
    # A namespaced computation is stamped with the namespace's generation:
    # after clear(namespace) the next result is cached again.
    cache.clear(namespace="ns")
    assert cache.get_or_compute("k", lambda: 1, namespace="ns") == 1
    assert cache.get_or_compute("k", lambda: 2, namespace="ns") == 1


def test_gil_released_while_waiting_for_another_process(cache):
    """A child computes slowly; the parent's waiter blocks in C++ without the
    GIL, so a parent thread keeps running, and the result is computed once."""
    cache.set("computations", b"0")
    r, w = os.pipe()

    def child():
        def slow():
            os.write(w, b"x")
            time.sleep(0.5)
            cache.incr("computations")
            return "child"
        cache.get_or_compute("slow", slow)

    pid = fork(child)
    os.read(r, 1)  # the child holds the flight
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.01)

    t = threading.Thread(target=ticker)
    t.start()
    start = time.monotonic()
    v = cache.get_or_compute("slow", lambda: cache.incr("computations") and "parent")
    waited = time.monotonic() - start
    stop.set()
    t.join()
    assert wait(pid) == 0
    assert v == "child" and cache.get("computations") == b"1"
    assert waited > 0.2 and len(ticks) > 10  # the thread ran while we waited


def test_single_flight_across_8_processes(cache):
    cache.set("computations", b"0")
    cache.set("go", b"0")

    def child():
        while cache.get("go") != b"1":
            time.sleep(0.001)

        def compute():
            cache.incr("computations")
            time.sleep(0.2)
            return "v"
        assert cache.get_or_compute("cold", compute, method="sf") == "v"

    pids = [fork(child) for _ in range(8)]
    time.sleep(0.1)
    cache.set("go", b"1")
    assert [wait(p) for p in pids] == [0] * 8
    assert cache.get("computations") == b"1"
    m = {s["method"]: s for s in cache.method_stats()}["sf"]
    assert m["requests"] == 8 and m["misses"] == 1 and m["hits"] == 7


def test_killed_computer_is_taken_over(cache):
    r, w = os.pipe()

    def child():
        def hang():
            os.write(w, b"x")
            time.sleep(60)
        cache.get_or_compute("k", hang, lease=30)

    pid = fork(child)
    os.read(r, 1)
    os.kill(pid, signal.SIGKILL)
    assert wait(pid) == -signal.SIGKILL
    start = time.monotonic()
    assert cache.get_or_compute("k", lambda: "mine", lease=30) == "mine"
    assert time.monotonic() - start < 5  # a dead owner is detected, not waited out


def test_memoize_decorator_key_shape_and_stats(cache):
    calls = []

    @hostcache.memoize(cache, method="extract_model_metadata", timeout=60)
    def extract(app_name, model_name, user=None, depth=1):
        calls.append((app_name, model_name, user, depth))
        return {"model": model_name, "depth": depth}

    assert extract("shop", "Order", 7) == {"model": "Order", "depth": 1}
    assert extract("shop", "Order", 7) == {"model": "Order", "depth": 1}
    assert extract("shop", "Order", 8)["model"] == "Order"  # another user
    assert extract("shop", "Order", "7")["model"] == "Order"  # "7" is not 7
    assert extract("shop", "Order", 7, depth=2)["depth"] == 2
    assert len(calls) == 4
    key = extract.key("shop", "Order", 7)
    assert key.startswith("metadata_extract%5Fmodel%5Fmetadata_shop_Order_u") or \
        key.startswith("metadata_extract_model_metadata_shop_Order_u"), key
    assert key.endswith("_depth_i:1")
    cache.invalidate(hostcache.model_tag("shop", "Order"))
    extract("shop", "Order", 7)
    assert len(calls) == 5
    m = {s["method"]: s for s in cache.method_stats()}["extract_model_metadata"]
    assert m["requests"] == 6 and m["hits"] == 1 and m["misses"] == 5

    class Extractor:
        @hostcache.memoize(cache, user_specific=False)
        def fields(self, app_name, model_name, user=None):
            calls.append("fields")
            return [app_name, model_name]

    e = Extractor()
    assert e.fields("a", "M", user=1) == ["a", "M"] and e.fields("a", "M", user=2) == ["a", "M"]
    assert calls.count("fields") == 1


def test_python_overhead_is_reported(cache, capsys):
    """Reports (never asserts) what a Python get costs; python/bench_overhead.py measures more."""
    cache.set("k", b"x" * 100)
    n = 100_000
    g = cache.get
    t = time.perf_counter()
    for _ in range(n):
        g("k")
    per = (time.perf_counter() - t) / n * 1e9
    with capsys.disabled():
        print(f"\n  [info] Python Cache.get of a 100-byte hit: {per:.0f} ns per call")


def _shm_dump():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.environ.get("HOSTCACHE_SHM_DUMP",
                          os.path.join(here, "..", "..", "build", "tools", "shm-dump"))
    return path if os.access(path, os.X_OK) else None


def _stripe0(name):
    import json
    import subprocess
    out = subprocess.run([_shm_dump(), name, "--json", "--limit", "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["stripes"][0]


@pytest.mark.skipif(_shm_dump() is None, reason="needs build/tools/shm-dump (or HOSTCACHE_SHM_DUMP)")
def test_a_get_under_the_stripe_lock_never_waits_for_the_gil(name):
    """A get that falls back to the stripe lock (here: to repair after a
    writer killed mid-write) copies the value while holding the lock, which
    every process's writers of the stripe wait for. That copy must not wait
    for the GIL: while another thread of the reader keeps the GIL, a writer
    in another process still gets the stripe."""
    import mmap
    import random
    c = hostcache.Cache.open(name, capacity="128M", stripes=1, max_value_bytes=8 << 20, lock_timeout=30.0)
    try:
        stay = os.urandom(1 << 20)
        big = os.urandom(4 << 20)
        c.set("stay", stay)
        # Entries for the repair to check, so that this thread has the GIL
        # back long before the reader's copy starts.
        assert c.set_many({f"fill-{i}": os.urandom(200) for i in range(100_000)}) == []
        # A writer killed holding the lock with the stripe's sequence odd:
        # lockless reads then cannot succeed, and a get takes the lock.
        for _ in range(500):
            pid = fork(lambda: [c.set("big", big) for _ in iter(int, 1)])
            time.sleep(random.uniform(0.002, 0.02))  # where the kill lands, not synchronisation
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            s = _stripe0(name)
            if s["lock_owner_pid"] == pid and s["seq"] % 2 == 1:
                break
        else:
            pytest.fail("no writer was killed inside its write in 500 tries")

        flags = mmap.mmap(-1, 2)  # [0]: go, [1]: the other process's touch: 1 done, 2 failed
        def toucher():
            while flags[0] == 0:
                time.sleep(0.001)
            ok = False
            try:
                ok = c.touch("stay", 3600)
            finally:
                flags[1] = 1 if ok else 2  # one store: the reader never sees a passing value
        other = fork(toucher)

        entered, got = [], []
        def reader():
            entered.append(1)
            got.append(c.get("stay"))
        t = threading.Thread(target=reader)
        old = sys.getswitchinterval()
        t.start()
        while not entered:
            time.sleep(0)
        # This thread keeps the GIL from here: no sleep, no I/O, and a switch
        # interval longer than the wait.
        sys.setswitchinterval(60.0)
        try:
            flags[0] = 1
            deadline = time.monotonic() + 10.0
            while flags[1] == 0 and time.monotonic() < deadline:
                pass
            touched = flags[1]
        finally:
            sys.setswitchinterval(old)
        t.join()
        assert wait(other) == 0
        assert touched == 1, ("the other process could not take the stripe while the reader waited for the GIL",
                              touched, got == [stay], c.stats()["recoveries"])
        assert got == [stay]
        assert c.stats()["recoveries"] == 1  # the reader did take the lock, and repaired
    finally:
        c.close()
        hostcache.Cache.remove(name)
