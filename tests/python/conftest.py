"""Shared fixtures: unique segment names, fork helpers, Django settings.

Run: PYTHONPATH=build/python /usr/bin/python3 -m pytest -q tests/python
"""
import itertools
import os
import signal
import sys
import time

import pytest

import hostcache

_counter = itertools.count()
RUN = f"pyt{os.getpid()}"
_made = []


def segment_name(tag="s"):
    name = f"{RUN}-{tag}-{next(_counter)}"
    _made.append(name)
    return name


@pytest.fixture
def name():
    return segment_name()


@pytest.fixture
def cache(name):
    c = hostcache.Cache.open(name, capacity="8M")
    yield c
    hostcache.Cache.remove(name)


def fork(fn):
    """Runs fn() in a child; returns its pid. The child exits 0 if fn returns
    normally, 1 if it raised (printed)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait(pid, timeout=30.0):
    """The child's exit status (signal number negated); kills it past the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish in {timeout}s")
        time.sleep(0.005)


# ---- Django ---------------------------------------------------------------------

DJANGO_SEGMENT = f"{RUN}-django"


def pytest_configure(config):
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import django
    from django.conf import settings

    def key_func(key, key_prefix, version):
        return f"kf|{key_prefix}|{version}|{key}"

    settings.configure(
        DEBUG=False,
        SECRET_KEY="hostcache-tests",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "hostcache.django",
                        "tests_python_app"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                        "OPTIONS": {"CAPACITY": "16M"}},
            "ns1": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                    "OPTIONS": {"NAMESPACE": "one"}},
            "ns2": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                    "OPTIONS": {"NAMESPACE": "two"}},
            "prefix": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                       "KEY_PREFIX": "pre", "VERSION": 3, "TIMEOUT": 60},
            "keyfunc": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                        "KEY_FUNCTION": key_func},
            "forever": {"BACKEND": "hostcache.django.HostCache", "LOCATION": DJANGO_SEGMENT,
                        "TIMEOUT": None, "OPTIONS": {"MAX_ENTRIES": 10, "CULL_FREQUENCY": 2}},
            "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                       "LOCATION": "ref"},
        },
        GRAPHQL_METADATA_CACHE={"DEFAULT_TIMEOUT": 600},
        USE_TZ=True,
    )
    sys.path.insert(0, os.path.dirname(__file__))
    django.setup()


def pytest_unconfigure(config):
    for n in _made + [DJANGO_SEGMENT]:
        try:
            hostcache.Cache.remove(n)
        except hostcache.Error:
            pass
