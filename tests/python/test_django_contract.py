"""Django's documented cache API, method by method, on HostCache; the same
tests run on LocMemCache as the reference semantics."""
import math
import pickle
import time
import warnings

import pytest
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, CacheKeyWarning

import hostcache
from conftest import fork, wait


@pytest.fixture(params=["default", "locmem"])
def c(request):
    cache = caches[request.param]
    cache.clear()
    yield cache
    cache.clear()


@pytest.fixture
def hc():
    cache = caches["default"]
    cache.clear()
    return cache


class Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


VALUES = [None, 0, 1, -5, 2 ** 70, True, False, 1.5, "str", b"bytes", [1, "a"], {"k": (1, 2)},
          {1, 2}, ("t",), object.__class__.__name__]


def test_get_set_values(c):
    for i, v in enumerate(VALUES):
        c.set(f"v{i}", v)
        assert c.get(f"v{i}", "MISS") == v
        assert type(c.get(f"v{i}", "MISS")) is type(v)
    assert c.get("absent") is None
    assert c.get("absent", "dflt") == "dflt"


def test_stored_none_is_not_a_miss(c):
    c.set("none", None)
    assert c.get("none", "MISS") is None
    assert c.has_key("none")
    assert "none" in c
    assert c.get_many(["none", "absent"]) == {"none": None}
    assert c.add("none", 1) is False


def test_unpicklable_raises_pickle_error(c):
    with pytest.raises(pickle.PickleError if c is caches["default"] else Exception):
        c.set("u", Unpicklable())
    with pytest.raises(Exception):
        c.set("u", lambda: 1)
    assert c.get("u") is None


def test_timeouts(c):
    c.set("default", 1)  # DEFAULT_TIMEOUT: the alias's 300 s
    c.set("forever", 1, timeout=None)
    c.set("short", 1, timeout=0.2)
    c.set("zero", 1)
    c.set("zero", 2, timeout=0)  # not stored, and the old value is gone
    c.set("neg", 1)
    c.set("neg", 2, timeout=-1)
    assert c.get("zero") is None and c.get("neg") is None
    assert c.get("default") == 1 and c.get("forever") == 1 and c.get("short") == 1
    assert c.add("zero", 1, timeout=0) is True  # absent: "added", nothing stored
    assert c.get("zero") is None
    c.set("frac", 1, timeout=0.25)
    time.sleep(0.3)
    assert c.get("short") is None and c.get("frac") is None
    assert c.get("forever") == 1


def test_hostcache_timeout_mapping(hc):
    hc.set("default", 1)
    assert 299 < hc.ttl("default") <= 300
    hc.set("forever", 1, timeout=None)
    assert hc.ttl("forever") == math.inf
    assert caches["forever"].default_timeout is None
    caches["forever"].set("f", 1)
    assert caches["forever"].ttl("f") == math.inf
    assert caches["prefix"].default_timeout == 60
    caches["prefix"].set("p", 1)
    assert 59 < caches["prefix"].ttl("p") <= 60
    hc.set("t", 1, timeout=DEFAULT_TIMEOUT)
    assert hc.ttl("t") > 299


def test_add(c):
    assert c.add("a", 1) is True
    assert c.add("a", 2) is False
    assert c.get("a") == 1
    c.set("exp", 1, timeout=0.2)
    time.sleep(0.3)
    assert c.add("exp", 2) is True and c.get("exp") == 2


def test_delete_returns_bool(c):
    c.set("d", 1)
    assert c.delete("d") is True
    assert c.delete("d") is False
    assert c.get("d") is None
    c.set("exp", 1, timeout=0.2)
    time.sleep(0.3)
    if c is caches["default"]:  # LocMemCache answers True for an expired key; memcached and we, False
        assert c.delete("exp") is False


def test_touch(c):
    c.set("t", 1, timeout=0.2)
    assert c.touch("t", 10) is True
    time.sleep(0.3)
    assert c.get("t") == 1
    assert c.touch("t", None) is True
    assert c.touch("absent") is False
    assert c.touch("t", 0) is True  # expires it now
    assert c.get("t") is None
    assert c.touch("t") is False


def test_get_set_many_delete_many(c):
    assert c.set_many({"a": 1, "b": "two", "c": None}) == []
    assert c.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": "two", "c": None}
    assert c.get_many(iter(["a"])) == {"a": 1}
    c.delete_many(["a", "b", "nope"])
    assert c.get_many(["a", "b", "c"]) == {"c": None}
    c.set_many({"x": 1}, timeout=0)
    assert c.get("x") is None
    c.set_many({"y": 1}, timeout=None)
    assert c.get("y") == 1


def test_has_key(c):
    c.set("h", 0)
    assert c.has_key("h") and not c.has_key("nope")
    c.set("e", 1, timeout=0.2)
    time.sleep(0.3)
    assert not c.has_key("e")


def test_incr_decr(c):
    c.set("n", 1)
    assert c.incr("n") == 2
    assert c.incr("n", 10) == 12
    assert c.decr("n") == 11
    assert c.decr("n", 20) == -9
    assert c.get("n") == -9 and type(c.get("n")) is int
    with pytest.raises(ValueError):
        c.incr("absent")
    with pytest.raises(ValueError):
        c.decr("absent")
    c.set("f", 1.5)
    assert c.incr("f") == 2.5
    c.set("big", 2 ** 63 - 1)
    assert c.incr("big") == 2 ** 63
    assert c.get("big") == 2 ** 63


def test_incr_keeps_ttl(hc):
    hc.set("n", 1, timeout=100)
    hc.incr("n")
    assert 98 < hc.ttl("n") <= 100


def test_incr_is_atomic_across_processes(hc):
    hc.set("ctr", 0)
    pids = [fork(lambda: [hc.incr("ctr") for _ in range(500)]) for _ in range(4)]
    assert [wait(p) for p in pids] == [0] * 4
    assert hc.get("ctr") == 2000


def test_get_or_set(c):
    assert c.get_or_set("g", "v") == "v"
    assert c.get_or_set("g", "other") == "v"
    calls = []
    assert c.get_or_set("gc", lambda: calls.append(1) or 42) == 42
    assert c.get_or_set("gc", lambda: calls.append(1) or 43) == 42
    assert len(calls) == 1
    assert c.get("gc") == 42
    assert c.get_or_set("z", lambda: 7, timeout=0) == 7
    assert c.get("z") is None
    assert c.get_or_set("none", None) is None
    c.set("stored-none", None)
    assert c.get_or_set("stored-none", lambda: 1) is None


def test_get_or_set_int_is_incrementable(hc):
    assert hc.get_or_set("gi", lambda: 5) == 5
    assert hc.incr("gi") == 6


def test_get_or_set_once_per_host(hc):
    hc.set("computations", 0)
    hc.set("go", 0)

    def child():
        while hc.get("go") != 1:
            time.sleep(0.001)

        def compute():
            hc.incr("computations")
            time.sleep(0.2)
            return "value"
        assert hc.get_or_set("cold", compute) == "value"

    pids = [fork(child) for _ in range(6)]
    time.sleep(0.1)
    hc.set("go", 1)
    assert [wait(p) for p in pids] == [0] * 6
    assert hc.get("computations") == 1


def test_versions(c):
    c.set("v", "one", version=1)
    c.set("v", "two", version=2)
    assert c.get("v") == "one" and c.get("v", version=2) == "two"
    assert c.incr_version("v") == 2
    assert c.get("v") is None and c.get("v", version=2) == "one"
    assert c.decr_version("v", version=2) == 1
    assert c.get("v", version=1) == "one" and c.get("v", version=2) is None
    with pytest.raises(ValueError):
        c.incr_version("absent")


def test_key_prefix_version_and_key_function(hc):
    p, k = caches["prefix"], caches["keyfunc"]
    p.set("x", "prefixed")
    k.set("x", "keyfunc")
    hc.set("x", "plain")
    assert p.get("x") == "prefixed" and k.get("x") == "keyfunc" and hc.get("x") == "plain"
    assert p.make_key("x") == "pre:3:x" and k.make_key("x") == "kf||1|x"
    assert hc.raw.get(b"pre:3:x") is not None and hc.raw.get(b"kf||1|x") is not None
    assert p.get("x", version=1) is None


def test_key_warnings(c):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c.set("a" * 251, 1)
        c.set("with space", 2)
    assert sum(issubclass(x.category, CacheKeyWarning) for x in w) == 2
    assert c.get("a" * 251) == 1 and c.get("with space") == 2


def test_key_warnings_are_djangos_for_every_kind_of_key(hc):
    """The backend skips validate_key's scan for keys it cannot warn about:
    each key below gets exactly LocMemCache's warnings, and is stored under
    its UTF-8 bytes either way."""
    keys = ["plain", "a" * 246, "a" * 247, "with space", "tab\tkey", "del\x7fkey", "nul\x00key",
            "caf\u00e9", "caf\u00e9 space", "\u00e9" * 247, "\u00e9" * 248, "~!@#$%^&*()_+", "",
            "surrogate\udc80"]

    def warned(cache, key):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            cache.set(key, key)
        return [str(x.message) for x in w if issubclass(x.category, CacheKeyWarning)]

    loc = caches["locmem"]
    for key in keys:
        assert warned(hc, key) == warned(loc, key), repr(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert hc.get(key) == key, repr(key)
        made = hc.make_key(key).encode("utf-8", "surrogatepass")
        if len(made) <= hc.raw.max_key_bytes:
            assert pickle.loads(hc.raw.get(made)) == key, repr(key)


def test_a_subclass_validate_key_is_always_called(hc):
    from hostcache.django import HostCache
    seen = []

    class Strict(HostCache):
        def validate_key(self, key):
            seen.append(key)

    s = Strict(hc._segment, {})
    s.set("plain", 1)
    assert s.get("plain") == 1 and seen == [s.make_key("plain")] * 2


def test_very_long_keys_fit(hc):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        long1, long2 = "k" * 5000 + "1", "k" * 5000 + "2"
        hc.set(long1, 1)
        hc.set(long2, 2)
        assert hc.get(long1) == 1 and hc.get(long2) == 2


def test_value_too_large_leaves_nothing(hc):
    hc.set("big", "small")
    hc.set("big", b"x" * (2 << 20))
    assert hc.get("big") is None
    assert hc.set_many({"ok": 1, "big": b"x" * (2 << 20)}) == ["big"]


def test_namespaces_share_a_segment_and_clear_alone(hc):
    one, two = caches["ns1"], caches["ns2"]
    one.set("k", "one")
    two.set("k", "two")
    hc.set("k", "plain")
    assert one.get("k") == "one" and two.get("k") == "two" and hc.get("k") == "plain"
    assert one.raw is two.raw is hc.raw  # one mapping per process
    one.clear()
    assert one.get("k") is None and two.get("k") == "two" and hc.get("k") == "plain"


def test_close_keeps_working(c):
    c.set("k", 1)
    c.close()
    assert c.get("k") == 1


def test_max_entries_accepted_and_ignored():
    f = caches["forever"]
    for i in range(50):
        f.set(f"e{i}", i)
    assert all(f.get(f"e{i}") == i for i in range(50))


def test_str_and_bytes_keys_distinct_from_hostcache_errors(hc):
    with pytest.raises(hostcache.InvalidArgument):
        hc.raw.set("", b"")
