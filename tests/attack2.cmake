hostcache_test(test_attack_ops test_attack_ops.cpp LABELS multiprocess TIMEOUT 300)
# Review of ac08bf8 (fork safety): the logger's fork handler and lazy init, memoize across three generations.
hostcache_test(test_attack_fork8 test_attack_fork8.cpp LABELS multiprocess TIMEOUT 300)
