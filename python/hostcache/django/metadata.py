"""The seed's metadata cache, on hostcache: decorator, invalidation, warming, stats.

Settings (all optional):

    GRAPHQL_METADATA_CACHE = {
        "ENABLED": True,
        "DEFAULT_TIMEOUT": 1800,          # seconds, per decorated method unless given
        "USER_SPECIFIC": True,
        "AUTO_WARM_ON_STARTUP": False,    # run the registered warmers once per server start
        "INVALIDATE_ON_STARTUP": True,    # clear the metadata once per server start
        "INVALIDATE_ON_MODEL_CHANGE": True,  # post_migrate and schema-affecting changes
        "CACHE_ALIAS": "default",         # a hostcache.django.HostCache alias whose segment holds it
        "SEGMENT": "django-metadata",     # else: this segment, opened with CAPACITY
        "CAPACITY": "64M",
    }

Every metadata entry is tagged "{app}.{model}" (invalidate_metadata_cache(model,
app) drops that model's entries from every method, O(1)) and
"hostcache.metadata" (invalidate_metadata_cache() drops them all, O(1),
leaving the alias's other keys alone).

Once per server start: INVALIDATE_ON_STARTUP and AUTO_WARM_ON_STARTUP run in
the first process of a server to reach ready(), not in each worker: that
process adds a marker keyed by the server's identity (the topmost ancestor
with the same command line, e.g. the gunicorn master: pid and start time),
and only the process whose add() succeeds clears and warms. A worker
respawned later (a crash, --max-requests) finds the marker and clears
nothing. HOSTCACHE_SERVER_ID in the environment names the server instead.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from django.conf import settings

import hostcache
from hostcache._forksafe import ForkSafeLock

log = logging.getLogger("hostcache.django")

METADATA_TAG = "hostcache.metadata"
_DEFAULTS = {
    "ENABLED": True,
    "DEFAULT_TIMEOUT": 1800,
    "USER_SPECIFIC": True,
    "AUTO_WARM_ON_STARTUP": False,
    "INVALIDATE_ON_STARTUP": True,
    "INVALIDATE_ON_MODEL_CHANGE": True,
    "CACHE_ALIAS": "default",
    "SEGMENT": "django-metadata",
    "CAPACITY": "64M",
}
_registry = []  # (wrapper, method) of every cache_metadata function
_warmers = []
_lock = ForkSafeLock()  # fresh in a forked child, as backend's _opening
_segment = None


def config():
    c = dict(_DEFAULTS)
    c.update(getattr(settings, "GRAPHQL_METADATA_CACHE", {}) or {})
    return c


def metadata_cache():
    """The hostcache.Cache holding the metadata (the alias's segment)."""
    global _segment
    if _segment is not None:
        return _segment
    with _lock:
        if _segment is None:
            cfg = config()
            from django.core.cache import caches
            from .backend import HostCache, open_segment

            alias = cfg.get("CACHE_ALIAS")
            backend = None
            if alias and alias in settings.CACHES:
                backend = caches[alias]
            if isinstance(backend, HostCache):
                _segment = backend.raw
            else:
                _segment = open_segment(cfg["SEGMENT"], capacity=cfg["CAPACITY"])
    return _segment


def _enabled():
    return bool(config()["ENABLED"])


def cache_metadata(timeout=None, user_specific=None, method=None, tags=None):
    """The seed's decorator: caches fn(app, model, user=None, **params) per
    method, app, model, user and params, for `timeout` seconds (default
    DEFAULT_TIMEOUT), computed once per host on concurrent misses. The key is
    metadata_{method}_{app}_{model}_{user_hash}_{params}; `tags` adds
    invalidation tags (e.g. the related model: ["app.Other"], or a callable of
    (app, model, user, params))."""
    def extra_tags(app, model, user, params):
        extra = [METADATA_TAG]
        if tags:
            extra.extend(tags(app, model, user, params) if callable(tags) else tags)
        return extra

    def decorate(fn):
        cfg_timeout = timeout if timeout is not None else config()["DEFAULT_TIMEOUT"]
        us = config()["USER_SPECIFIC"] if user_specific is None else user_specific
        wrapper = hostcache.memoize(metadata_cache, method=method or fn.__name__, timeout=cfg_timeout,
                                    user_specific=us, tags=extra_tags, enabled=_enabled)(fn)
        _registry.append(wrapper)
        return wrapper

    return decorate


def _model_label(model_name, app_name):
    if model_name and "." in model_name and not app_name:
        app_name, model_name = model_name.split(".", 1)
    if model_name and app_name:
        from django.apps import apps
        try:  # the model's own spelling (object_name), as the decorator keys it
            model_name = apps.get_model(app_name, model_name)._meta.object_name
        except LookupError:
            pass
    return model_name, app_name


def invalidate_metadata_cache(model_name=None, app_name=None):
    """Drops cached metadata: of one model (model_name "app.Model", or with
    app_name), of every model of an app, or all of it. O(1) per tag."""
    c = metadata_cache()
    model_name, app_name = _model_label(model_name, app_name)
    if model_name and app_name:
        c.invalidate(hostcache.model_tag(app_name, model_name))
        return [f"{app_name}.{model_name}"]
    if app_name:
        from django.apps import apps
        done = []
        for m in apps.get_app_config(app_name).get_models():
            c.invalidate(hostcache.model_tag(m._meta.app_label, m._meta.object_name))
            done.append(m._meta.label)
        return done
    c.invalidate(METADATA_TAG)
    return ["*"]


def register_warmer(fn):
    """fn(models) -> None fills the cache for those models (or all of them if
    None); warm_metadata_cache() runs every registered warmer. Usable as a
    decorator."""
    _warmers.append(fn)
    return fn


def warm_metadata_cache(models=None):
    """Runs the warmers for `models` (Django model classes or "app.Model"
    labels; None: every installed model). Returns {"warmers", "models",
    "seconds", "failed"}; a warmer that raises is logged and counted."""
    from django.apps import apps
    if models is not None:
        models = [apps.get_model(m) if isinstance(m, str) else m for m in models]
    start = time.perf_counter()
    failed = 0
    for w in list(_warmers):
        try:
            w(models)
        except Exception:
            failed += 1
            log.exception("hostcache: metadata warmer %r failed", w)
    return {"warmers": len(_warmers), "failed": failed,
            "models": None if models is None else [m._meta.label for m in models],
            "seconds": round(time.perf_counter() - start, 3)}


def get_cache_stats(method=None):
    """The seed's report, summed over every process of the host (and over
    every decorated method, or only `method`): total_requests, cache_hits,
    cache_misses, hit_ratio (percent), avg_response_time_cached and
    avg_response_time_uncached (ms), performance_improvement (percent: how
    much faster a hit is), cache_size_mb (the segment's bytes in use), and
    methods (the same per method)."""
    c = metadata_cache()
    per = [m for m in c.method_stats() if method is None or m["method"] == method]
    req = sum(m["requests"] for m in per)
    hits = sum(m["hits"] for m in per)
    misses = sum(m["misses"] for m in per)
    hit_ns = sum(m["hit_ns"] for m in per)
    miss_ns = sum(m["miss_ns"] for m in per)
    cached = hit_ns / hits / 1e6 if hits else 0.0
    uncached = miss_ns / misses / 1e6 if misses else 0.0
    s = c.stats()
    return {
        "total_requests": req,
        "cache_hits": hits,
        "cache_misses": misses,
        "hit_ratio": round(100.0 * hits / req, 2) if req else 0.0,
        "avg_response_time_cached": round(cached, 4),
        "avg_response_time_uncached": round(uncached, 4),
        "performance_improvement": round(100.0 * (1 - cached / uncached), 2) if hits and misses and uncached else 0.0,
        "cache_size_mb": round(s["bytes_used"] / (1 << 20), 3),
        "methods": {m["method"]: {
            "total_requests": m["requests"], "cache_hits": m["hits"], "cache_misses": m["misses"],
            "hit_ratio": round(100.0 * m["hit_ratio"], 2),
            "avg_response_time_cached": round(m["mean_hit_ms"], 4),
            "avg_response_time_uncached": round(m["mean_miss_ms"], 4),
            "performance_improvement": round(m["improvement_percent"], 2),
            "bytes_stored": m["bytes"]} for m in per},
    }


# ---- once per server start ----------------------------------------------------

def _proc(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        return cmd, int(fields[1]), fields[19].decode()  # ppid, starttime
    except (OSError, ValueError, IndexError):
        return None


def server_id():
    """The server this process belongs to: HOSTCACHE_SERVER_ID, else the pid
    and start time of the topmost ancestor running the same command line
    (a prefork master and its workers share it; a new start gets a new one)."""
    env = os.environ.get("HOSTCACHE_SERVER_ID")
    if env:
        return env
    pid = os.getpid()
    me = _proc(pid)
    if me is None:
        return f"{pid}"
    cmd, ppid, start = me
    while ppid > 1:
        parent = _proc(ppid)
        if parent is None or parent[0] != cmd:
            break
        pid, (cmd, ppid, start) = ppid, parent
    return f"{pid}.{start}"


def on_startup():
    cfg = config()
    if not cfg["ENABLED"]:
        return False
    if not (cfg["INVALIDATE_ON_STARTUP"] or cfg["AUTO_WARM_ON_STARTUP"]):
        return False
    if "pytest" in sys.modules and not os.environ.get("HOSTCACHE_STARTUP_IN_TESTS"):
        return False  # test runs clear explicitly
    try:
        c = metadata_cache()
        # The marker carries no tag or namespace: clearing the metadata keeps it.
        won = c.add(f"hostcache:startup:{server_id()}", str(os.getpid()).encode(), ttl=7 * 86400)
    except hostcache.Error:
        log.exception("hostcache: startup marker")
        return False
    if not won:
        return False
    if cfg["INVALIDATE_ON_STARTUP"]:
        c.invalidate(METADATA_TAG)
        log.info("hostcache: metadata cleared at server start (pid %d)", os.getpid())
    if cfg["AUTO_WARM_ON_STARTUP"]:
        warm_metadata_cache()
    return True
