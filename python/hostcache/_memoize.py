"""memoize(): the seed's metadata decorator over the C++ single flight.

A decorated function is called as fn(app, model, user=None, *params,
**kwparams) (a method's self/cls is skipped). Its results are cached under the
key the C++ key builder makes (memoize.h: detail::build_key):

    metadata_{method}_{app}_{model}_{user_hash}_{params}

tagged "{app}.{model}" (cache.invalidate(model_tag(app, model)) drops every
method's entries for that model), computed once per host when several
processes miss at once (Cache.get_or_compute), and counted per method in the
segment (Cache.method_stats(), shared with the C++ tools).
"""
from __future__ import annotations

import functools
import inspect
import json
import pickle

from ._hostcache import model_tag

_APP_NAMES = ("app_name", "app_label", "app")
_MODEL_NAMES = ("model_name", "model")
_USER_NAMES = ("user",)


def user_key(user):
    """A user as the key builder takes it: None and anonymous users are
    "anonymous"; a Django user is its pk (an int stays an int: the key builder
    types it, so the string "42" and the integer 42 are different users)."""
    if user is None:
        return "anonymous"
    if isinstance(user, (str, int, bytes)):
        return user
    if getattr(user, "is_authenticated", True) is False or getattr(user, "is_anonymous", False):
        return "anonymous"
    pk = getattr(user, "pk", None)
    if pk is None:
        return "anonymous"
    return pk if isinstance(pk, (str, int)) else str(pk)


def _canonical(x):
    if isinstance(x, dict):
        return {"__d": sorted(([_canonical(k), _canonical(v)] for k, v in x.items()), key=repr)}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return {"__s": sorted((_canonical(v) for v in x), key=repr)}
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return {"__r": type(x).__qualname__, "v": repr(x)}


def encode_key_part(x):
    """str, int and bool go to the key builder as they are (escaped, typed);
    anything else as bytes of a canonical encoding, which the builder hashes
    with the segment's secret (dicts and sets in sorted order: equal
    arguments give equal keys in every process)."""
    if isinstance(x, (str, bool, int)):
        return x
    if isinstance(x, bytes):
        return b"b" + x
    try:
        return b"j" + json.dumps(_canonical(x), sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError):
        return b"p" + pickle.dumps(x, 4)


def _model_parts(app, model):
    # A Django model class (or instance) passed as `model`: its app_label and model_name.
    meta = getattr(model, "_meta", None)
    if meta is not None:
        return meta.app_label, meta.object_name
    return app, model


class _Spec:
    """How a decorated function's arguments map to the key's parts."""

    def __init__(self, fn):
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        self.skip_first = bool(params) and params[0].name in ("self", "cls")
        names = [p.name for p in params]
        self.sig = sig
        self.app = next((n for n in _APP_NAMES if n in names), None)
        self.model = next((n for n in _MODEL_NAMES if n in names), None)
        self.user = next((n for n in _USER_NAMES if n in names), None)
        positional = [p.name for p in params[1 if self.skip_first else 0:]]
        if self.app is None and positional:
            self.app = positional[0]
        if self.model is None and len(positional) > 1:
            self.model = positional[1]

    def parts(self, args, kwargs):
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = dict(bound.arguments)
        if self.skip_first:
            a.pop(next(iter(self.sig.parameters)), None)
        app = a.pop(self.app, "") if self.app else ""
        model = a.pop(self.model, "") if self.model else ""
        user = a.pop(self.user, None) if self.user else None
        app, model = _model_parts(app, model)
        params = []
        for name in sorted(a):
            v = a[name]
            kind = self.sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                params.extend(encode_key_part(x) for x in v)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                for k in sorted(v):
                    params.extend((k, encode_key_part(v[k])))
            else:
                params.extend((name, encode_key_part(v)))
        return app, model, user, params


def memoize(cache, method=None, timeout=None, user_specific=True, tags=None,
            key_prefix="metadata", lease=30.0, stale_while_revalidate=0.0,
            namespace=None, enabled=True):
    """Decorates fn(app, model, user=None, ...) as the seed's cache_metadata.

    cache: a hostcache.Cache, or a callable returning one (resolved at call
      time: a Django setting read late).
    method: the key's and the statistics' name (default: fn.__name__).
    timeout: seconds (None: the cache's default; hostcache.FOREVER: never).
    user_specific: False shares one entry between users.
    tags: extra invalidation tags: a list of str, or a callable of the bound
      arguments (app, model, user, params dict) returning one; "{app}.{model}"
      is always there (at most hostcache.MAX_TAGS in all).
    An exception raised by fn reaches the caller and nothing is cached.
    The wrapper has .key(*args, **kwargs) (the key a call uses) and .method.
    """
    def decorate(fn):
        spec = _Spec(fn)
        name = method or fn.__name__

        def resolve():
            return cache() if callable(cache) and not hasattr(cache, "get_or_compute") else cache

        def key_and_tags(c, args, kwargs):
            app, model, user, params = spec.parts(args, kwargs)
            user_part = encode_key_part(user_key(user)) if user_specific else None
            key = c.build_key(key_prefix, name, encode_key_part(app), encode_key_part(model),
                              user_part, params)
            all_tags = [model_tag(str(app), str(model))]
            if tags:
                extra = tags(app, model, user, params) if callable(tags) else tags
                all_tags.extend(t for t in extra if t not in all_tags)
            return key, all_tags

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            c = resolve()
            if c is None or not enabled or (callable(enabled) and not enabled()):
                return fn(*args, **kwargs)
            key, all_tags = key_and_tags(c, args, kwargs)
            return c.get_or_compute(key, lambda: fn(*args, **kwargs), ttl=timeout,
                                    tags=all_tags, namespace=namespace() if callable(namespace) else namespace,
                                    lease=lease, method=name,
                                    stale_while_revalidate=stale_while_revalidate)

        wrapper.key = lambda *a, **k: key_and_tags(resolve(), a, k)[0]
        wrapper.method = name
        wrapper.__wrapped__ = fn
        return wrapper

    return decorate
