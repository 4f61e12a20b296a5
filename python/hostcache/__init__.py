"""hostcache: a cache shared by the worker processes of one host.

The cache lives in a named shared-memory segment (/dev/shm/hostcache.NAME)
that every process maps; there is no server. This package is a thin client of
the C++ library (include/hostcache/cache.h, memoize.h):

    import hostcache
    cache = hostcache.Cache.open("myapp", capacity="256M", default_ttl=600)
    cache.set("k", b"v", ttl=30, tags=["app.Model"])
    cache.get("k")                      # b"v", or None on a miss
    cache.invalidate("app.Model")       # O(1), seen by every process

    @hostcache.memoize(cache, method="extract_model_metadata", timeout=1800)
    def extract(app_name, model_name, user=None, **params): ...

Keys are str (UTF-8) or bytes, values bytes-like; TTLs are seconds (None:
the cache's default, hostcache.FOREVER: never). Bad input raises
InvalidArgument (a ValueError); a segment that cannot be used raises another
subclass of hostcache.Error. Every call that can wait releases the GIL.
A Cache opened before os.fork() keeps working in the children.

hostcache.django holds the Django cache backend and the metadata-cache app.
"""
from ._hostcache import (  # noqa: F401
    FOREVER,
    MAX_NAME_BYTES,
    MAX_NAMESPACE_BYTES,
    MAX_TAG_BYTES,
    MAX_TAGS,
    AlreadyExists,
    Busy,
    Cache,
    Closed,
    Corrupt,
    Error,
    Incompatible,
    InvalidArgument,
    IOError,
    NotFound,
    Overflow,
    PermissionDenied,
    model_tag,
    parse_size,
)
from ._memoize import encode_key_part, memoize, user_key  # noqa: F401

__all__ = [
    "Cache", "Error", "InvalidArgument", "Overflow", "NotFound", "AlreadyExists",
    "PermissionDenied", "Corrupt", "Incompatible", "Busy", "IOError", "Closed",
    "FOREVER", "MAX_TAGS", "MAX_TAG_BYTES", "MAX_NAMESPACE_BYTES", "MAX_NAME_BYTES",
    "model_tag", "parse_size", "memoize", "encode_key_part", "user_key",
]
