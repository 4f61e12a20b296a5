import json
import os

from django.core.cache import cache
from django.http import HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from hostcache.django.metadata import get_cache_stats, invalidate_metadata_cache

from .extractor import computations, extractor


def _user(request):
    u = request.headers.get("X-User")
    return int(u) if u else None


def model_metadata(request, app, model):
    data = extractor.extract_model_metadata(app, model, _user(request))
    return JsonResponse({"pid": os.getpid(), "metadata": data})


def relationships(request, app, model):
    return JsonResponse({"pid": os.getpid(), "relationships": extractor.extract_relationships(app, model)})


@csrf_exempt
def invalidate(request, app=None, model=None):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    done = invalidate_metadata_cache(model, app)
    return JsonResponse({"pid": os.getpid(), "invalidated": done})


@csrf_exempt
def cache_value(request, key):
    if request.method == "POST":
        cache.set(key, json.loads(request.body), timeout=None)
        return JsonResponse({"pid": os.getpid(), "stored": True})
    return JsonResponse({"pid": os.getpid(), "value": cache.get(key)})


def stats(request):
    return JsonResponse({"pid": os.getpid(), "computations": computations(), **get_cache_stats()})


def pid(request):
    return JsonResponse({"pid": os.getpid(), "ppid": os.getppid()})
