"""hostcache.django.HostCache: a Django cache backend over a hostcache segment.

Django's semantics, on the core's atomic operations:
  - timeouts: DEFAULT_TIMEOUT -> the alias's TIMEOUT; None -> never expires
    (hostcache.FOREVER, the core's kNoExpiry); 0 or negative -> the value is
    not stored and any earlier one is deleted (set, set_many), add() stores
    nothing, touch() expires the key.
  - values: ints (not bools) are stored as decimal text, so that incr/decr
    are the core's atomic Cache.incr; everything else is pickled
    (PICKLE_PROTOCOL, default pickle.HIGHEST_PROTOCOL). A stored None is a hit
    whose value is None; an unpicklable value raises pickle.PickleError.
  - keys: make_key (KEY_PREFIX, VERSION, KEY_FUNCTION) and validate_key's
    CacheKeyWarning as in every Django backend; a key longer than the
    segment's key limit is stored under its prefix and a SHA-256.
  - incr/decr raise ValueError on a miss; a value that is not a 64-bit
    decimal integer (a float, an int beyond 2**63) falls back to read, add,
    write (not atomic, as BaseCache's).
  - get_or_set runs a callable default once per host: concurrent misses in
    any process share one call (the core's single flight).
  - OPTIONS: CAPACITY ("256M", or bytes), NAMESPACE (aliases that share a
    segment each clear() only their own namespace, in O(1)), MAX_KEY_BYTES,
    MAX_VALUE_BYTES, STRIPES, MODE, LOCK_TIMEOUT, COMPRESS_MIN_BYTES,
    PICKLE_PROTOCOL, LEASE (single-flight lease, seconds). MAX_ENTRIES and
    CULL_FREQUENCY are accepted and ignored: the segment is bounded by its
    byte CAPACITY and evicts the coldest entries itself.
  - close() keeps the mapping (Django calls it after every request); the
    segment is opened once per process and shared by every alias and thread
    naming it, and keeps working in processes forked after it was opened.
"""
from __future__ import annotations

import hashlib
import logging
import pickle

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

import hostcache
from hostcache._forksafe import ForkSafeLock

log = logging.getLogger("hostcache.django")

_opened = {}
# Fresh in a forked child: a thread of the parent may have held it (inside
# Cache.open) as another forked.
_opening = ForkSafeLock()


def open_segment(name, **config):
    """The process's one handle on segment NAME (opened on first use)."""
    c = _opened.get(name)
    if c is not None:
        return c
    with _opening:
        c = _opened.get(name)
        if c is None:
            c = hostcache.Cache.open(name, **config)
            _opened[name] = c
        return c


_DJANGO_VALIDATE_KEY = BaseCache.validate_key  # as imported: a later patch of it is not Django's
_PICKLE_MARK = 0x80  # every pickle of protocol >= 2 starts with PROTO (0x80)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class HostCache(BaseCache):
    def __init__(self, location, params):
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        self._segment = location or options.get("NAME") or "django"
        if isinstance(self._segment, (list, tuple)):
            self._segment = self._segment[0]
        self._namespace = options.get("NAMESPACE") or None
        self._protocol = int(options.get("PICKLE_PROTOCOL", pickle.HIGHEST_PROTOCOL))
        self._lease = float(options.get("LEASE", 30.0))
        config = {"capacity": options.get("CAPACITY", "64M")}
        for opt, arg in (("MAX_KEY_BYTES", "max_key_bytes"), ("MAX_VALUE_BYTES", "max_value_bytes"),
                         ("STRIPES", "stripes"), ("MODE", "mode"), ("LOCK_TIMEOUT", "lock_timeout"),
                         ("COMPRESS_MIN_BYTES", "compress_min_bytes")):
            if opt in options:
                config[arg] = options[opt]
        self._config = config
        self._cache = None
        self._ns_prefix = (self._namespace + "|") if self._namespace else ""
        self._max_key_bytes = None  # the segment's, once it is open

    # ---- plumbing ------------------------------------------------------------

    @property
    def raw(self):
        """The hostcache.Cache under this alias (opened on first use)."""
        c = self._cache
        if c is None:
            c = self._cache = open_segment(self._segment, **self._config)
        return c

    @property
    def namespace(self):
        return self._namespace

    def _key(self, key, version=None):
        key = self.make_key(key, version=version)
        # Django's own validate_key (memcached's rules: at most 250
        # characters, none below 33 nor 127) cannot warn about a printable
        # ASCII str without spaces: such keys skip its per-character scan.
        # Any other validate_key (a subclass's, one patched on the class, on
        # BaseCache or on this instance) is always called.
        plain = type(key) is str and key.isascii()
        if not (plain and len(key) <= 250 and key.isprintable() and " " not in key
                and type(self).validate_key is _DJANGO_VALIDATE_KEY and "validate_key" not in self.__dict__):
            self.validate_key(key)
        full = self._ns_prefix + key
        limit = self._max_key_bytes
        if limit is None:
            limit = self._max_key_bytes = self.raw.max_key_bytes
        if plain and len(full) <= limit and (not self._ns_prefix or full.isascii()):
            return full  # ASCII: its UTF-8 is itself, and the binding reads it in place
        b = full.encode("utf-8", "surrogatepass")
        if len(b) > limit:  # prefix + hash: any Django key fits
            digest = hashlib.sha256(b).hexdigest()
            full = b[: max(0, limit - 66)] + b"#" + digest.encode()
            return full
        return b

    def _timeout(self, timeout):
        """Seconds for the core, or None for 'do not store'."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return hostcache.FOREVER
        timeout = float(timeout)
        if timeout <= 0:
            return None
        return timeout

    def get_backend_timeout(self, timeout=DEFAULT_TIMEOUT):
        # BaseCache's meaning (an absolute time, None: forever), for callers that use it.
        return super().get_backend_timeout(timeout)

    def _encode(self, value):
        if type(value) is int and _INT64[0] <= value <= _INT64[1]:
            return str(value).encode()
        try:
            return pickle.dumps(value, self._protocol)
        except pickle.PickleError:
            raise
        except Exception as e:  # TypeError, AttributeError: "cannot pickle ..."
            raise pickle.PicklingError(f"hostcache: cannot pickle {type(value).__name__}: {e}") from e

    def _decode(self, data):
        if data and data[0] == _PICKLE_MARK:
            return pickle.loads(data)
        return int(data)

    def _decode_or_miss(self, data, default):
        try:
            return self._decode(data)
        except Exception:  # bytes some other writer put there: a miss for Django
            log.warning("hostcache: undecodable value ignored (%d bytes)", len(data))
            return default

    def _store(self, k, data, ttl):
        c = self.raw
        try:
            c.set(k, data, ttl=ttl, namespace=self._namespace)
            return True
        except hostcache.InvalidArgument as e:
            if e.code != "value_too_large":
                raise
        except hostcache.Busy:
            pass
        # Like Django's memcached backends: a value that cannot be stored
        # leaves no older one behind.
        log.warning("hostcache: value of %d bytes not stored", len(data))
        try:
            c.delete(k)
        except hostcache.Busy:
            pass
        return False

    # ---- the BaseCache contract ---------------------------------------------

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        k = self._key(key, version)
        ttl = self._timeout(timeout)
        data = self._encode(value)
        if ttl is None:
            return self.raw.ttl(k) is None  # Django: True when absent, nothing stored
        try:
            return self.raw.add(k, data, ttl=ttl, namespace=self._namespace)
        except hostcache.InvalidArgument as e:
            if e.code != "value_too_large":
                raise
            return False

    def get(self, key, default=None, version=None):
        data = self.raw.get(self._key(key, version))
        if data is None:
            return default
        return self._decode_or_miss(data, default)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        k = self._key(key, version)
        ttl = self._timeout(timeout)
        data = self._encode(value)
        if ttl is None:
            self.raw.delete(k)
            return
        self._store(k, data, ttl)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        k = self._key(key, version)
        ttl = self._timeout(timeout)
        if ttl is None:
            present = self.raw.ttl(k) is not None
            self.raw.delete(k)
            return present
        return self.raw.touch(k, ttl)

    def delete(self, key, version=None):
        k = self._key(key, version)
        if self.raw.ttl(k) is None:  # an expired or hidden entry is not "there" for Django
            self.raw.delete(k)
            return False
        return self.raw.delete(k)

    def get_many(self, keys, version=None):
        keys = list(keys)
        made = {self._key(key, version): key for key in keys}
        found = self.raw.get_many(list(made))
        out = {}
        missing = object()
        for k, data in found.items():
            v = self._decode_or_miss(data, missing)
            if v is not missing:
                out[made[k]] = v
        return out

    def has_key(self, key, version=None):
        return self.raw.ttl(self._key(key, version)) is not None

    def incr(self, key, delta=1, version=None):
        k = self._key(key, version)
        try:
            return self.raw.incr(k, delta)
        except hostcache.Overflow:
            pass
        except hostcache.InvalidArgument as e:
            if e.code == "not_found":
                raise ValueError("Key '%s' not found" % key) from None
            if e.code != "not_integer":
                raise
        except (TypeError, OverflowError):  # delta not a 64-bit int
            pass
        # Not a 64-bit decimal: BaseCache's read-add-write, keeping the TTL.
        data = self.raw.get(k)
        if data is None:
            raise ValueError("Key '%s' not found" % key)
        new = self._decode(data) + delta
        left = self.raw.ttl(k)
        self._store(k, self._encode(new), left if left else hostcache.FOREVER)
        return new

    def decr(self, key, delta=1, version=None):
        return self.incr(key, -delta, version=version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        ttl = self._timeout(timeout)
        made = {}
        for key, value in data.items():
            made[self._key(key, version)] = (key, self._encode(value))
        if ttl is None:
            for k in made:
                self.raw.delete(k)
            return []
        failed = self.raw.set_many({k: v[1] for k, v in made.items()}, ttl=ttl,
                                   namespace=self._namespace)
        for k in failed:
            try:
                self.raw.delete(k)
            except hostcache.Busy:
                pass
        return [made[k][0] for k in failed]

    def delete_many(self, keys, version=None):
        for key in keys:
            self.raw.delete(self._key(key, version))

    def get_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        ttl = self._timeout(timeout)
        if not callable(default) or ttl is None:
            return super().get_or_set(key, default, timeout=timeout, version=version)
        k = self._key(key, version)
        return self.raw.get_or_compute(k, default, ttl=ttl, namespace=self._namespace,
                                       lease=self._lease, dumps=self._encode, loads=self._decode)

    def clear(self):
        """O(1). With NAMESPACE, only this alias's namespace; else the whole segment."""
        if self._namespace:
            self.raw.clear(namespace=self._namespace)
        else:
            self.raw.clear()

    def close(self, **kwargs):
        """Keeps the mapping: Django calls close() after every request."""

    # ---- beyond Django --------------------------------------------------------

    def stats(self):
        return self.raw.stats()

    def ttl(self, key, version=None):
        """Seconds left (math.inf: never expires), None on a miss."""
        return self.raw.ttl(self._key(key, version))
