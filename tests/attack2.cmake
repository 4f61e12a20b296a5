hostcache_test(test_attack_ops test_attack_ops.cpp LABELS multiprocess TIMEOUT 300)
