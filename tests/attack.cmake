hostcache_test(test_attack_core test_attack_core.cpp LABELS multiprocess TIMEOUT 300)
