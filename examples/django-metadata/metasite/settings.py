"""The example: a GraphQL metadata service whose extractor is memoized in hostcache.

Environment: HOSTCACHE_SEGMENT (the segment, default "django-metadata"),
EXAMPLE_DB (the sqlite file), METADATA_CACHE=0 (turn the metadata cache off),
EXTRACT_MS (the simulated extraction cost, default 50).
"""
import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "graphene_django",
    "hostcache.django",
    "catalog",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "metasite.urls"
WSGI_APPLICATION = "metasite.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("EXAMPLE_DB", os.path.join(BASE_DIR, "db.sqlite3"))}}
SEGMENT = os.environ.get("HOSTCACHE_SEGMENT", "django-metadata")
CACHES = {
    "default": {
        "BACKEND": "hostcache.django.HostCache",
        "LOCATION": SEGMENT,
        "TIMEOUT": 300,
        "OPTIONS": {"CAPACITY": "64M", "NAMESPACE": "default"},
    },
}
GRAPHQL_METADATA_CACHE = {
    "ENABLED": os.environ.get("METADATA_CACHE", "1") != "0",
    "DEFAULT_TIMEOUT": 1800,
    "USER_SPECIFIC": True,
    "AUTO_WARM_ON_STARTUP": False,
    "INVALIDATE_ON_STARTUP": True,
    "INVALIDATE_ON_MODEL_CHANGE": True,
}
GRAPHENE = {"SCHEMA": "catalog.schema.schema"}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"console": {"class": "logging.StreamHandler"}},
           "loggers": {"hostcache": {"handlers": ["console"], "level": "INFO"}}}
