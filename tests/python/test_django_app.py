"""The hostcache.django app: cache_metadata, invalidation, signals, stats, commands, startup."""
import io
import json
import os
import time

import pytest
from django.core.cache import caches
from django.core.management import call_command

import hostcache
from conftest import fork, wait
from hostcache.django import metadata, signals
from tests_python_app.models import Author, Book

CALLS = []


class Extractor:
    @metadata.cache_metadata(timeout=600)
    def extract_model_metadata(self, app_name, model_name, user=None):
        CALLS.append(("model", app_name, model_name, user))
        return {"app": app_name, "model": model_name, "user": getattr(user, "pk", user)}

    @metadata.cache_metadata(timeout=300, user_specific=False,
                             tags=lambda app, model, user, params: ["tests_python_app.Author"])
    def extract_relationships(self, app_name, model_name, user=None):
        CALLS.append(("rel", app_name, model_name))
        return ["author"]


class FakeUser:
    def __init__(self, pk, authenticated=True):
        self.pk = pk
        self.is_authenticated = authenticated


@pytest.fixture(scope="module", autouse=True)
def db():
    call_command("migrate", run_syncdb=True, verbosity=0)


@pytest.fixture(autouse=True)
def fresh():
    metadata.invalidate_metadata_cache()
    CALLS.clear()


def test_decorator_caches_per_user_and_method():
    e = Extractor()
    u1, u2, anon = FakeUser(1), FakeUser(2), FakeUser(None, authenticated=False)
    assert e.extract_model_metadata("tests_python_app", "Book", u1)["user"] == 1
    assert e.extract_model_metadata("tests_python_app", "Book", u1)["user"] == 1
    assert e.extract_model_metadata("tests_python_app", "Book", u2)["user"] == 2  # never u1's
    e.extract_model_metadata("tests_python_app", "Book", anon)
    e.extract_model_metadata("tests_python_app", "Book", None)  # anonymous too: shared
    assert len([c for c in CALLS if c[0] == "model"]) == 3
    e.extract_relationships("tests_python_app", "Book", u1)
    e.extract_relationships("tests_python_app", "Book", u2)
    assert len([c for c in CALLS if c[0] == "rel"]) == 1
    key = Extractor.extract_model_metadata.key(e, "tests_python_app", "Book", u1)
    assert key.startswith("metadata_extract%5Fmodel%5Fmetadata_tests%5Fpython%5Fapp_Book_u")


def test_invalidate_by_model_app_and_all():
    e = Extractor()
    e.extract_model_metadata("tests_python_app", "Book")
    e.extract_model_metadata("tests_python_app", "Author")
    e.extract_relationships("tests_python_app", "Book")
    metadata.invalidate_metadata_cache("Author", "tests_python_app")
    e.extract_model_metadata("tests_python_app", "Book")
    e.extract_model_metadata("tests_python_app", "Author")
    e.extract_relationships("tests_python_app", "Book")  # tagged with Author too
    assert [c[0] + c[2] for c in CALLS] == ["modelBook", "modelAuthor", "relBook", "modelAuthor", "relBook"]
    CALLS.clear()
    metadata.invalidate_metadata_cache(app_name="tests_python_app")
    e.extract_model_metadata("tests_python_app", "Book")
    metadata.invalidate_metadata_cache("tests_python_app.Book")
    e.extract_model_metadata("tests_python_app", "Book")
    assert len(CALLS) == 2


def test_metadata_clear_keeps_other_keys():
    caches["default"].set("unrelated", 1)
    Extractor().extract_model_metadata("tests_python_app", "Book")
    metadata.invalidate_metadata_cache()
    assert caches["default"].get("unrelated") == 1
    Extractor().extract_model_metadata("tests_python_app", "Book")
    assert len(CALLS) == 2


def test_data_writes_do_not_invalidate_schema_changes_do():
    e = Extractor()
    e.extract_model_metadata("tests_python_app", "Author")
    a = Author.objects.create(name="x")
    Book.objects.create(title="t", author=a)
    a.name = "y"
    a.save()
    a.delete()
    e.extract_model_metadata("tests_python_app", "Author")
    assert len(CALLS) == 1  # ordinary writes kept it
    signals.schema_changed.send(sender=Author)
    e.extract_model_metadata("tests_python_app", "Author")
    assert len(CALLS) == 2
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    ct = ContentType.objects.get_for_model(Author)
    Permission.objects.create(codename="x_author", name="x", content_type=ct)
    e.extract_model_metadata("tests_python_app", "Author")
    assert len(CALLS) == 3
    call_command("migrate", verbosity=0)  # post_migrate
    e.extract_model_metadata("tests_python_app", "Author")
    assert len(CALLS) == 4


def test_disabled_passes_through(settings_override=None):
    from django.test import override_settings
    e = Extractor()
    with override_settings(GRAPHQL_METADATA_CACHE={"ENABLED": False}):
        e.extract_model_metadata("tests_python_app", "Book")
        e.extract_model_metadata("tests_python_app", "Book")
    assert len(CALLS) == 2


def test_get_cache_stats_summed_over_processes():
    before = metadata.get_cache_stats()
    e = Extractor()

    def child():
        e.extract_model_metadata("tests_python_app", "Book", FakeUser(os.getpid()))
        e.extract_model_metadata("tests_python_app", "Book", FakeUser(os.getpid()))

    pids = [fork(child) for _ in range(3)]
    assert [wait(p) for p in pids] == [0] * 3
    s = metadata.get_cache_stats()
    for k in ("total_requests", "cache_hits", "cache_misses", "hit_ratio", "avg_response_time_cached",
              "avg_response_time_uncached", "performance_improvement", "cache_size_mb"):
        assert k in s
    assert s["total_requests"] - before["total_requests"] == 6
    assert s["cache_hits"] - before["cache_hits"] == 3
    assert s["cache_misses"] - before["cache_misses"] == 3
    assert 0 < s["hit_ratio"] <= 100 and s["cache_size_mb"] > 0
    assert "extract_model_metadata" in s["methods"]


def test_warm_and_commands():
    e = Extractor()
    warmed = []

    @metadata.register_warmer
    def warm(models):
        from django.apps import apps
        for m in models or apps.get_app_config("tests_python_app").get_models():
            warmed.append(m._meta.label)
            e.extract_model_metadata(m._meta.app_label, m._meta.object_name)

    try:
        out = io.StringIO()
        call_command("hostcache_warm", "--models", "tests_python_app.Book", stdout=out)
        assert json.loads(out.getvalue())["models"] == ["tests_python_app.Book"]
        assert warmed == ["tests_python_app.Book"]
        e.extract_model_metadata("tests_python_app", "Book")
        assert len(CALLS) == 1  # warmed
        out = io.StringIO()
        call_command("hostcache_stats", "--json", stdout=out)
        report = json.loads(out.getvalue())
        assert report["cache_hits"] >= 1 and report["segment"]["name"] == caches["default"].raw.name
        call_command("hostcache_stats", stdout=io.StringIO())
        call_command("hostcache_invalidate", "tests_python_app.Book", stdout=io.StringIO())
        e.extract_model_metadata("tests_python_app", "Book")
        assert len(CALLS) == 2
        call_command("hostcache_clear", stdout=io.StringIO())
        e.extract_model_metadata("tests_python_app", "Book")
        assert len(CALLS) == 3
        caches["default"].set("other", 1)
        call_command("hostcache_clear", "--all", stdout=io.StringIO())
        assert caches["default"].get("other") is None
    finally:
        metadata._warmers.remove(warm)


def test_startup_clears_once_per_server(monkeypatch):
    monkeypatch.setenv("HOSTCACHE_STARTUP_IN_TESTS", "1")
    monkeypatch.setenv("HOSTCACHE_SERVER_ID", f"test-{time.time()}")
    e = Extractor()
    e.extract_model_metadata("tests_python_app", "Book")
    assert metadata.on_startup() is True  # the first process of this server clears
    e.extract_model_metadata("tests_python_app", "Book")
    assert len(CALLS) == 2
    results = []
    r, w = os.pipe()

    def worker():
        os.write(w, b"1" if metadata.on_startup() else b"0")

    pids = [fork(worker) for _ in range(4)]  # later workers of the same server
    assert [wait(p) for p in pids] == [0] * 4
    results = os.read(r, 16)
    assert results == b"0000"
    e.extract_model_metadata("tests_python_app", "Book")
    assert len(CALLS) == 2  # nothing cleared
    monkeypatch.setenv("HOSTCACHE_SERVER_ID", f"next-{time.time()}")
    assert metadata.on_startup() is True  # a new server start clears again


def test_server_id_is_the_master_for_forked_workers(monkeypatch):
    monkeypatch.delenv("HOSTCACHE_SERVER_ID", raising=False)
    mine = metadata.server_id()
    assert mine.startswith(f"{os.getpid()}.")
    r, w = os.pipe()
    pid = fork(lambda: os.write(w, metadata.server_id().encode()))
    assert wait(pid) == 0
    assert os.read(r, 100).decode() == mine  # a fork keeps the command line: same server
