hostcache_test(test_attack_ops test_attack_ops.cpp LABELS multiprocess TIMEOUT 300)
# Review of ac08bf8 (fork safety): the logger's fork handler and lazy init, memoize across three generations.
hostcache_test(test_attack_fork8 test_attack_fork8.cpp LABELS multiprocess TIMEOUT 300)
# Review of 14218fd/7e147e2 (PerProcess<T>): epoch 0, _Fork/raw clone children, racing first get().
hostcache_test(test_attack_fork10 test_attack_fork10.cpp LABELS multiprocess TIMEOUT 300)
