# memoize: get_or_compute with cross-process single flight, the memoizer,
# per-method statistics, warming (issue 4). Forks real processes.
hostcache_test(test_memoize test_memoize.cpp LABELS multiprocess TIMEOUT 300)
