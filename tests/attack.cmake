hostcache_test(test_attack_core test_attack_core.cpp LABELS multiprocess TIMEOUT 300)
# Issue 11: a writer in a shared group (mode 0660) attacking root's processes.
hostcache_test(test_attack_shared_group test_attack_shared_group.cpp LABELS multiprocess TIMEOUT 300)
