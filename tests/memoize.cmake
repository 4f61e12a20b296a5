# memoize (issue 4): get_or_compute with cross-process single flight, the
# memoizer, per-method statistics, warming. Both fork real processes.
hostcache_test(test_memoize test_memoize.cpp LABELS multiprocess TIMEOUT 300)
hostcache_test(test_memoizer test_memoizer.cpp LABELS multiprocess TIMEOUT 300)
# Issues 10 and 11: dead, stalled and hostile processes against memoize
# (method slots, one owner per key, the live header, bounded waits, keys).
hostcache_test(test_memoize_attack test_memoize_attack.cpp LABELS multiprocess TIMEOUT 300)
hostcache_test(test_memoize_fork test_memoize_fork.cpp LABELS multiprocess TIMEOUT 300)
