#!/usr/bin/env bash
# The Django demo: examples/django-metadata under gunicorn (4 sync workers) on
# 127.0.0.1, first with the metadata cache off, then on: requests/s, latency,
# hit ratio, per-method statistics, and an invalidation POSTed to one worker
# seen by all. Every server is started on a free port and stopped by its pid.
#   scripts/demo-django.sh [REQUESTS]        (default 400; build first: cmake --build build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
requests=${1:-400}
pkg=${HOSTCACHE_PYTHONPATH:-$root/build/python}
[[ -d $pkg/hostcache ]] || { echo "demo-django: no $pkg/hostcache; build first (cmake --build build)" >&2; exit 1; }
tmp=$(mktemp -d)
export PYTHONPATH="$pkg:$root/examples/django-metadata"
export HOSTCACHE_SEGMENT="demo-django-$$" EXAMPLE_DB="$tmp/db.sqlite3" EXTRACT_MS=${EXTRACT_MS:-50}
export DJANGO_SETTINGS_MODULE=metasite.settings
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  /usr/bin/python3 -c "import hostcache; hostcache.Cache.remove('$HOSTCACHE_SEGMENT')" || true
  rm -rf "$tmp"
}
trap cleanup EXIT

/usr/bin/python3 examples/django-metadata/manage.py migrate -v 0

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start() {  # start METADATA_CACHE(0|1)
  METADATA_CACHE=$1 /usr/bin/python3 -m gunicorn -w 4 -b "127.0.0.1:$port" --chdir examples/django-metadata \
    metasite.wsgi >"$tmp/gunicorn.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/pid/" >/dev/null && return; sleep 0.1; done
  echo "demo-django: gunicorn did not start"; cat "$tmp/gunicorn.log"; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

load() {  # load LABEL: REQUESTS requests, 8 at a time, over 3 models x 20 users
  /usr/bin/python3 - "$port" "$requests" "$1" <<'PY'
import concurrent.futures, json, statistics, sys, time, urllib.request
port, n, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
models = ["Book", "Author", "Publisher"]
def one(i):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metadata/catalog/{models[i % 3]}/",
                                 headers={"X-User": str(i % 20)})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    return (time.perf_counter() - t) * 1000
t = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    lat = sorted(pool.map(one, range(n)))
el = time.perf_counter() - t
print(f"  {label:<10} {n / el:8.0f} req/s   latency p50 {statistics.median(lat):6.1f} ms"
      f"   p99 {lat[int(0.99 * (len(lat) - 1))]:6.1f} ms")
PY
}

echo "== metadata cache OFF (every request extracts, ${EXTRACT_MS} ms) =="
start 0; load "cache off"; stop
echo "== metadata cache ON (hostcache, shared by the 4 workers) =="
start 1; load "cold+warm"; load "warm"
/usr/bin/python3 - "$port" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/stats/", timeout=30))
print(f"  hit ratio {s['hit_ratio']}%  requests {s['total_requests']}  computations since the demo began {s['computations']}"
      f"  cached {s['avg_response_time_cached']} ms  uncached {s['avg_response_time_uncached']} ms"
      f"  improvement {s['performance_improvement']}%  size {s['cache_size_mb']} MiB")
for name, m in s["methods"].items():
    print(f"  method {name}: {m['total_requests']} requests, {m['cache_hits']} hits, hit ratio {m['hit_ratio']}%")
PY
echo "== invalidation POSTed to one worker, seen by all =="
/usr/bin/python3 - "$port" <<'PY'
import json, sys, urllib.request
port = int(sys.argv[1])
get = lambda p: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=30))
before = get("/stats/")["computations"]
r = json.load(urllib.request.urlopen(urllib.request.Request(
    f"http://127.0.0.1:{port}/invalidate/catalog/Book/", data=b"", method="POST"), timeout=30))
seen = set()
for _ in range(200):
    seen.add(get("/metadata/catalog/Book/")["pid"])
    if len(seen) == 4:
        break
after = get("/stats/")["computations"]
print(f"  worker {r['pid']} invalidated {r['invalidated']}; {len(seen)} workers then served catalog.Book; "
      f"recomputed {after - before} time(s) in all")
PY
stop
