"""Adversarial review of ac08bf8 ("Fork safety") from Python: os.fork while
other threads are inside the library.

Real processes; every wait is bounded (conftest.wait kills a child past its
timeout); threads are parked by the kernel (a write(2) to a full pipe),
observed through /proc/self/task/TID/syscall, never ordered by a sleep.
"""
import fcntl
import os
import threading
import time

import hostcache

from conftest import segment_name, wait

SYS_write = 1  # x86-64 and the generic table disagree; checked below


def _blocked_in(tid):
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return None
    return None if first == "running" else int(first)


def _within(seconds, cond):
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # a poll of a condition, not an ordering
    return True


def test_os_fork_while_a_thread_logs_to_a_stderr_drained_by_a_python_thread():
    """A Python process that forwards its own C-level stderr through a pipe
    drained by one of its threads (the wurlitzer / log-capture pattern), one
    thread whose get_or_compute warns ("memoize: '<key>' not cached: value
    too large"; the key is 200 KB, the pipe 4 KB) and a main thread that
    calls os.fork(). os.fork() holds the GIL through fork(); since ac08bf8
    fork()'s prepare handler (src/log.cpp:26) waits for the console mutex,
    held by the warning thread until its write completes; the write waits
    for the drainer, and the drainer for the GIL: the whole process is
    deadlocked for good. Before ac08bf8 fork() did not wait. Model: the
    process finishes, its child too, and get_or_compute returned fn()'s
    value."""
    name = segment_name("fork-stderr")
    hostcache.Cache.open(name, capacity="16M", max_key_bytes=1 << 18, max_value_bytes=4096)
    try:
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                code = _fork_while_a_thread_logs(name)
            finally:
                os._exit(code)
        assert wait(pid, timeout=30) == 0
    finally:
        hostcache.Cache.remove(name)


def _fork_while_a_thread_logs(name):
    rd, wr = os.pipe()
    fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, 4096)
    os.dup2(wr, 2)
    os.close(wr)
    c = hostcache.Cache.open(name, capacity="16M", max_key_bytes=1 << 18, max_value_bytes=4096)
    key = "k" * 200_000
    got = {}
    tid = {}
    go = threading.Event()
    stop = threading.Event()

    def warn():
        tid["t"] = threading.get_native_id()
        got["v"] = c.get_or_compute(key, lambda: b"x" * 8192)

    def drainer():
        go.wait(20)
        os.set_blocking(rd, False)
        while not stop.is_set():
            try:
                if not os.read(rd, 65536):
                    break
            except BlockingIOError:
                time.sleep(0.001)

    t = threading.Thread(target=warn)
    d = threading.Thread(target=drainer)
    t.start()
    d.start()
    if not _within(10, lambda: "v" in got or ("t" in tid and _blocked_in(tid["t"]) == SYS_write)):
        return 21
    if "v" in got:
        return 22  # the warning never blocked: nothing tested
    go.set()
    child = os.fork()
    if child == 0:
        os._exit(0)
    st = os.waitpid(child, 0)[1]
    t.join(20)
    stop.set()
    d.join(20)
    if t.is_alive() or d.is_alive():
        return 23
    if os.waitstatus_to_exitcode(st) != 0:
        return 24
    return 0 if got.get("v") == b"x" * 8192 else 25


def test_os_fork_while_threads_memoize_counts_exactly():
    """Threads memoize under one method while the main thread forks 20
    children, each of which memoizes one key of its own under the method and
    reads a parent's key: every child finishes, every value is fn()'s, and
    method_stats counts each compute and each call exactly."""
    name = segment_name("fork-memo")
    c = hostcache.Cache.open(name, capacity="16M")
    try:
        computes = []
        calls = []
        wrong = []
        stop = threading.Event()

        def worker(w):
            i = 0
            while not stop.is_set():
                key = f"p{w}:{i % 17}"
                v = c.get_or_compute(key, lambda key=key: computes.append(key) or ("v=" + key),
                                     method="fam")
                calls.append(1)
                if v != "v=" + key:
                    wrong.append((key, v))
                i += 1

        ts = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
        for t in ts:
            t.start()
        assert _within(10, lambda: len(calls) > 50)
        statuses = []
        for n in range(20):
            pid = os.fork()
            if pid == 0:
                ok = c.get_or_compute(f"child{n}", lambda: f"c{n}", method="fam") == f"c{n}"
                os._exit(0 if ok else 3)
            statuses.append(wait(pid, timeout=20))
        stop.set()
        for t in ts:
            t.join(20)
        assert statuses == [0] * 20
        assert not wrong
        m = [s for s in c.method_stats() if s["method"] == "fam"]
        assert len(m) == 1
        assert m[0]["misses"] == len(computes) + 20
        assert m[0]["requests"] == len(calls) + 20
    finally:
        hostcache.Cache.remove(name)
