#!/usr/bin/env python3
"""Django cache backends under diskcache's Django benchmark mix, 8 processes.

Each process runs OPS operations over KEYS keys: 90% get, 9% set, 1% delete
(diskcache's tests/benchmark_djangocache.py mix), timing each call; the report
is the median, p90 and p99 per operation and backend, in microseconds, and the
total throughput. Servers (redis-server, memcached) are started on 127.0.0.1 on
a free port and stopped by their pid. Nothing is asserted: it reports.

    PYTHONPATH=build/python /usr/bin/python3 bench/django_bench.py [--ops 5000] [--procs 8]
        [--backends hostcache,locmem,filebased,diskcache,redis,memcached] [--out DIR]
    gnuplot -e "dat='DIR/django_bench.dat'; out='DIR/django_bench.png'" bench/django_bench.gp
"""
import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

KEYS = 1100
BACKENDS = ["hostcache", "locmem", "filebased", "diskcache", "redis", "memcached"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Servers:
    """Starts what a backend needs; stops it by pid."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, argv, port):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        if not wait_port(port):
            raise RuntimeError(f"{argv[0]} did not listen on {port}")
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []


def cache_config(name, tmp, servers, run):
    if name == "hostcache":
        return {"BACKEND": "hostcache.django.HostCache", "LOCATION": f"djbench-{run}",
                "OPTIONS": {"CAPACITY": "64M"}}
    if name == "locmem":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "OPTIONS": {"MAX_ENTRIES": 2 * KEYS}}
    if name == "filebased":
        return {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                "LOCATION": os.path.join(tmp, "filebased"), "OPTIONS": {"MAX_ENTRIES": 2 * KEYS}}
    if name == "diskcache":
        return {"BACKEND": "diskcache.DjangoCache", "LOCATION": os.path.join(tmp, "diskcache"),
                "OPTIONS": {"size_limit": 2 ** 30}}
    if name == "redis":
        exe = shutil.which("redis-server")
        if not exe:
            return None
        port = free_port()
        servers.start([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                       "--dir", tmp], port)
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": f"redis://127.0.0.1:{port}/0",
                "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"}}
    if name == "memcached":
        exe = shutil.which("memcached") or ("/usr/bin/memcached" if os.path.exists("/usr/bin/memcached") else None)
        if not exe:
            return None
        port = free_port()
        argv = [exe, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # memcached refuses to run as root
        servers.start(argv, port)
        return {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
                "LOCATION": f"127.0.0.1:{port}"}
    raise ValueError(name)


def worker(ops, seed, out):
    from django.core.cache import cache
    rnd = random.Random(seed)
    times = {"get": [], "set": [], "delete": []}
    value = "value-" + "x" * 100
    ns = time.perf_counter_ns
    start = time.perf_counter()
    for _ in range(ops):
        key = f"key{rnd.randrange(KEYS)}"
        r = rnd.random()
        if r < 0.90:
            t = ns(); cache.get(key); times["get"].append(ns() - t)
        elif r < 0.99:
            t = ns(); cache.set(key, value); times["set"].append(ns() - t)
        else:
            t = ns(); cache.delete(key); times["delete"].append(ns() - t)
    elapsed = time.perf_counter() - start
    with open(out, "w") as f:
        f.write(f"elapsed {elapsed}\n")
        for op, ts in times.items():
            f.write(op + " " + " ".join(map(str, ts)) + "\n")


def run_backend(name, args, tmp, run):
    """Configures Django for `name` in a fresh interpreter (one settings per process)."""
    code = f"""
import os, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import django
from django.conf import settings
import json
settings.configure(CACHES={{"default": json.loads(os.environ["BENCH_CACHE"])}}, INSTALLED_APPS=[])
django.setup()
import django_bench
django_bench.child_main()
"""
    servers = Servers(tmp)
    try:
        cfg = cache_config(name, tmp, servers, run)
        if cfg is None:
            return None
        import json
        env = dict(os.environ, BENCH_CACHE=json.dumps(cfg), BENCH_OPS=str(args.ops),
                   BENCH_PROCS=str(args.procs), BENCH_OUT=os.path.join(tmp, name))
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=1800)
        return collect(os.path.join(tmp, name), args.procs)
    finally:
        servers.stop()
        if name == "hostcache":
            import hostcache
            hostcache.Cache.remove(f"djbench-{run}")


def child_main():
    ops, procs, out = int(os.environ["BENCH_OPS"]), int(os.environ["BENCH_PROCS"]), os.environ["BENCH_OUT"]
    # The parent never opens a connection: a client socket shared by forked
    # children (pymemcache, redis) would interleave their protocol streams.
    pid = os.fork()
    if pid == 0:
        from django.core.cache import cache
        for i in range(KEYS):  # warm: every key present once
            cache.set(f"key{i}", "value-" + "x" * 100)
        os._exit(0)
    os.waitpid(pid, 0)
    pids = []
    for p in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                worker(ops, 1000 + p, f"{out}.{p}")
                os._exit(0)
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"worker failed: {status}")


def collect(prefix, procs):
    times = {"get": [], "set": [], "delete": []}
    elapsed = 0.0
    for p in range(procs):
        with open(f"{prefix}.{p}") as f:
            for line in f:
                parts = line.split()
                if parts[0] == "elapsed":
                    elapsed = max(elapsed, float(parts[1]))
                else:
                    times[parts[0]].extend(int(x) for x in parts[1:])
    res = {"ops_per_s": sum(len(v) for v in times.values()) / elapsed if elapsed else 0.0}
    for op, ts in times.items():
        ts.sort()
        if ts:
            q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))] / 1000.0
            res[op] = (statistics.median(ts) / 1000.0, q(0.90), q(0.99))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=5000, help="operations per process")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", default=None, help="write DIR/django_bench.dat (gnuplot) here")
    args = ap.parse_args()
    run = f"{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="djbench-")
    results = {}
    try:
        for name in args.backends.split(","):
            t = time.monotonic()
            try:
                r = run_backend(name, args, tmp, run)
            except Exception as e:  # report, go on
                print(f"{name}: failed: {e}", file=sys.stderr)
                r = None
            if r is None:
                print(f"{name}: skipped", file=sys.stderr)
                continue
            results[name] = r
            print(f"{name}: done in {time.monotonic() - t:.1f}s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Django cache backends, {args.procs} processes x {args.ops} ops, 90% get / 9% set / 1% delete "
          f"over {KEYS} keys; microseconds per call (median / p90 / p99)")
    print(f"{'backend':<11} {'get':>22} {'set':>22} {'delete':>22} {'ops/s (all procs)':>18}")
    for name, r in results.items():
        cell = lambda op: "%6.1f /%6.1f /%7.1f" % r[op] if op in r else "-"
        print(f"{name:<11} {cell('get'):>22} {cell('set'):>22} {cell('delete'):>22} {r['ops_per_s']:>18,.0f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "django_bench.dat"), "w") as f:
            f.write("# backend get_p50 get_p90 get_p99 set_p50 set_p90 set_p99 delete_p50 delete_p90 delete_p99\n")
            for name, r in results.items():
                vals = [f"{x:.2f}" for op in ("get", "set", "delete") for x in r.get(op, (0, 0, 0))]
                f.write(name + " " + " ".join(vals) + "\n")


if __name__ == "__main__":
    main()
