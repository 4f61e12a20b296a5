"""The metadata extractor the seed memoizes: model fields, relationships,
filters, per user. The real one costs 50-100 ms; EXTRACT_MS simulates it."""
import os
import time

from django.apps import apps
from django.core.cache import caches

from hostcache.django.metadata import cache_metadata, register_warmer

EXTRACT_S = float(os.environ.get("EXTRACT_MS", "50")) / 1000.0
COUNTER = "example:computations"


def _count():
    raw = caches["default"].raw  # one counter for the whole host, atomic in the core
    if not raw.add(COUNTER, b"1", ttl=float("inf")):
        raw.incr(COUNTER)


def computations():
    v = caches["default"].raw.get(COUNTER)
    return int(v) if v else 0


class MetadataExtractor:
    @cache_metadata(timeout=1800, user_specific=True)
    def extract_model_metadata(self, app_name, model_name, user=None):
        _count()
        time.sleep(EXTRACT_S)
        model = apps.get_model(app_name, model_name)
        return {
            "app": app_name,
            "model": model._meta.object_name,
            "fields": [{"name": f.name, "type": f.get_internal_type(), "null": f.null}
                       for f in model._meta.get_fields() if hasattr(f, "get_internal_type")],
            "user": user,
        }

    @cache_metadata(timeout=900, user_specific=False,
                    tags=lambda app, model, user, params: [
                        f"{r.related_model._meta.app_label}.{r.related_model._meta.object_name}"
                        for r in apps.get_model(app, model)._meta.get_fields()
                        if r.is_relation and r.related_model][:2])
    def extract_relationships(self, app_name, model_name, user=None):
        _count()
        time.sleep(EXTRACT_S)
        model = apps.get_model(app_name, model_name)
        return [{"name": f.name, "related": f.related_model._meta.label}
                for f in model._meta.get_fields() if f.is_relation and f.related_model]


extractor = MetadataExtractor()


@register_warmer
def warm(models):
    for m in models or apps.get_app_config("catalog").get_models():
        extractor.extract_model_metadata(m._meta.app_label, m._meta.object_name)
        extractor.extract_relationships(m._meta.app_label, m._meta.object_name)
