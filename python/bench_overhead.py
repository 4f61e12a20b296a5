#!/usr/bin/env python3
"""What the Python layer adds to a Cache.get: per-call times of the binding
(hit, miss, set, get_many) next to an interpreter baseline (dict.get through a
bound method), and the Django backend's get. Compare with the C++ get of
bench_cache (build/bench/bench_cache --benchmark_filter=get). Reports only.

    PYTHONPATH=build/python /usr/bin/python3 python/bench_overhead.py
"""
import os
import sys
import time

# This file sits next to the source package (python/hostcache, no extension):
# import the built one from PYTHONPATH instead.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
import hostcache  # noqa: E402


def per_call(fn, n=200_000):
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e9


def main():
    name = f"overhead-{os.getpid()}"
    c = hostcache.Cache.open(name, capacity="64M")
    try:
        small, big = b"x" * 100, os.urandom(4096)
        c.set("small", small)
        c.set("big", big)
        d = {"small": small}
        loop = per_call(lambda: None)
        rows = [
            ("empty lambda (loop cost)", loop),
            ("dict.get (interpreter baseline)", per_call(lambda: d.get("small"))),
            ("Cache.get hit, 100 B", per_call(lambda: c.get("small"))),
            ("Cache.get hit, 4 KiB", per_call(lambda: c.get("big"))),
            ("Cache.get miss", per_call(lambda: c.get("absent"))),
            ("Cache.set 100 B", per_call(lambda: c.set("w", small), 100_000)),
            ("Cache.get_many 16 hits (per call)", per_call(lambda: c.get_many(["small"] * 16), 50_000)),
        ]
        try:
            import django
            from django.conf import settings
            settings.configure(CACHES={"default": {"BACKEND": "hostcache.django.HostCache", "LOCATION": name}})
            django.setup()
            from django.core.cache import cache
            cache.set("dj", "v" * 100)
            rows.append(("Django HostCache.get hit (pickle, make_key)", per_call(lambda: cache.get("dj"), 100_000)))
        except ImportError:
            pass
        print("per call, best of 5 (ns); subtract the loop cost for the call itself")
        for label, ns in rows:
            print(f"  {label:<46} {ns:8.0f}")
    finally:
        hostcache.Cache.remove(name)


if __name__ == "__main__":
    main()
