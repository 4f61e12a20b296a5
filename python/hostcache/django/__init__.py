"""hostcache for Django.

As a cache backend (settings.CACHES):

    CACHES = {"default": {
        "BACKEND": "hostcache.django.HostCache",
        "LOCATION": "mysite",                 # the segment name
        "TIMEOUT": 300,
        "OPTIONS": {"CAPACITY": "256M", "NAMESPACE": "default"},
    }}

As an app (INSTALLED_APPS += ["hostcache.django"]): the metadata cache
(hostcache.django.metadata: cache_metadata, invalidate_metadata_cache,
warm_metadata_cache, get_cache_stats), its startup clear and invalidation
signals, and the management commands hostcache_stats, hostcache_clear,
hostcache_invalidate and hostcache_warm.
"""


def __getattr__(name):
    # Lazy: importing the app package (INSTALLED_APPS) must not import the
    # backend's Django modules before settings are read, nor the reverse.
    if name == "HostCache":
        from .backend import HostCache
        return HostCache
    raise AttributeError(name)

