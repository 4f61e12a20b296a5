"""A real gunicorn (4 sync workers) serving examples/django-metadata on
127.0.0.1: the cache is one cache for every worker, across kills, recycling
and restarts. Each server is started on a free port and stopped by its pid."""
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

import hostcache
from conftest import RUN

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "django-metadata")
SEGMENT = f"{RUN}-gunicorn"

pytestmark = pytest.mark.skipif(shutil.which("gunicorn") is None and
                                subprocess.run([sys.executable, "-c", "import gunicorn"]).returncode != 0,
                                reason="gunicorn not installed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(extra=None):
    e = dict(os.environ)
    pkg = os.path.dirname(os.path.dirname(hostcache.__file__))  # the dir holding hostcache/
    e.update({"PYTHONPATH": f"{pkg}:{EXAMPLE}", "HOSTCACHE_SEGMENT": SEGMENT,
              "EXAMPLE_DB": DB, "EXTRACT_MS": "300", "DJANGO_SETTINGS_MODULE": "metasite.settings"})
    e.pop("HOSTCACHE_SERVER_ID", None)
    e.update(extra or {})
    return e


DB = os.path.join(tempfile.gettempdir(), f"{RUN}-example.sqlite3")


@pytest.fixture(scope="module", autouse=True)
def database():
    subprocess.run([sys.executable, os.path.join(EXAMPLE, "manage.py"), "migrate", "-v", "0"],
                   env=env(), check=True, cwd=EXAMPLE, timeout=120)
    yield
    os.unlink(DB)
    hostcache.Cache.remove(SEGMENT)


class Server:
    def __init__(self, *args):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "2", "--timeout", "30", *args, "metasite.wsgi"],
            cwd=EXAMPLE, env=env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while len(self.workers()) < 4 or not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("gunicorn did not start:\n" + self.output())
            time.sleep(0.1)

    def _up(self):
        try:
            self.get("/pid/", timeout=2)
            return True
        except OSError:
            return False

    def workers(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, headers=None, timeout=30):
        req = urllib.request.Request(self.url(path), headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            assert r.status == 200
            return json.loads(r.read())

    def post(self, path, body=b"", timeout=30):
        req = urllib.request.Request(self.url(path), data=body, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            assert r.status == 200
            return json.loads(r.read())

    def until_other_worker(self, path, not_pid, deadline_s=30, **kw):
        """A response from a worker other than `not_pid`: 4 requests at a
        time, since one idle worker can accept every sequential request."""
        deadline = time.monotonic() + deadline_s
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while time.monotonic() < deadline:
                for r in pool.map(lambda _: self.get(path, **kw), range(4)):
                    if r["pid"] != not_pid:
                        return r
        raise AssertionError("every request went to the same worker")

    def every_worker(self, path, want=4, deadline_s=30, **kw):
        """Responses until `want` distinct workers answered (4 requests at a
        time, so that a busy worker does not keep the others idle)."""
        seen = {}
        deadline = time.monotonic() + deadline_s
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while time.monotonic() < deadline:
                for r in pool.map(lambda _: self.get(path, **kw), range(4)):
                    seen.setdefault(r["pid"], r)
                if len(seen) >= want:
                    return seen
        raise AssertionError(f"only {len(seen)} workers answered")

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        out = self.output()
        self.log.close()
        return out


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    out = s.stop()
    assert "Traceback" not in out, out


def computations(server):
    return server.get("/stats/")["computations"]


def test_value_set_through_one_worker_is_read_by_another(server):
    w = server.post("/cache/shared-key/", json.dumps({"n": 42}).encode())
    r = server.until_other_worker("/cache/shared-key/", w["pid"])
    assert r["value"] == {"n": 42}


def test_16_concurrent_requests_for_a_cold_key_compute_once(server):
    before = computations(server)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: server.get("/metadata/catalog/Book/", headers={"X-User": "7"}),
                                range(16)))
    assert len({r["pid"] for r in results}) >= 2  # several workers took part
    assert all(r["metadata"]["model"] == "Book" for r in results)
    assert computations(server) - before == 1


def test_invalidation_posted_to_one_worker_is_seen_by_all(server):
    server.get("/metadata/catalog/Author/")
    seen = server.every_worker("/metadata/catalog/Author/")
    before = computations(server)
    assert len(seen) == 4
    server.post("/invalidate/catalog/Author/")
    seen = server.every_worker("/metadata/catalog/Author/")
    assert computations(server) - before == 1  # recomputed once, for every worker
    stats = server.get("/stats/")
    assert stats["cache_hits"] > 0 and stats["total_requests"] > stats["cache_misses"]


def test_sigkilled_worker_is_respawned_without_error(server):
    server.get("/metadata/catalog/Publisher/")
    before = computations(server)
    victim = server.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in server.workers() or len(server.workers()) < 4:
        assert time.monotonic() < deadline, "no respawn"
        time.sleep(0.1)
    seen = server.every_worker("/metadata/catalog/Publisher/")
    assert all(r["metadata"]["model"] == "Publisher" for r in seen.values())
    assert computations(server) == before  # the new worker's startup cleared nothing


def test_preload_and_max_requests_recycling_keep_the_cache():
    s = Server("--preload", "--max-requests", "4")
    try:
        s.get("/metadata/catalog/Book/", headers={"X-User": "1"})  # a new server start cleared: computed
        before = computations(s)
        w = s.post("/cache/recycled/", b'"kept"')
        first = set(s.workers())
        for _ in range(40):  # every worker is recycled several times
            r = s.get("/metadata/catalog/Book/", headers={"X-User": "1"})
            assert r["metadata"]["model"] == "Book"
        assert not (first & set(s.workers())), "workers were not recycled"
        assert computations(s) == before
        assert s.until_other_worker("/cache/recycled/", w["pid"])["value"] == "kept"
    finally:
        out = s.stop()
    assert "Traceback" not in out, out


def test_a_new_server_start_clears_the_metadata_once():
    s = Server()
    try:
        before = computations(s)
        s.get("/metadata/catalog/Book/", headers={"X-User": "1"})
        assert computations(s) == before + 1  # cleared at this start
        s.every_worker("/metadata/catalog/Book/", headers={"X-User": "1"})
        assert computations(s) == before + 1  # and only once
    finally:
        s.stop()
