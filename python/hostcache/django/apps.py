"""The hostcache Django app: the metadata cache's startup and signals."""
from django.apps import AppConfig


class HostCacheConfig(AppConfig):
    name = "hostcache.django"
    label = "hostcache"
    verbose_name = "hostcache (shared-memory metadata cache)"
    default = True

    def ready(self):
        from . import metadata, signals

        signals.connect()
        metadata.on_startup()
