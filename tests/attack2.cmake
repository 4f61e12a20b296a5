hostcache_test(test_attack_ops test_attack_ops.cpp LABELS multiprocess TIMEOUT 300)
# Review of ac08bf8 (fork safety): the logger's fork handler and lazy init, memoize across three generations.
hostcache_test(test_attack_fork8 test_attack_fork8.cpp LABELS multiprocess TIMEOUT 300)
# Review of 14218fd/7e147e2 (PerProcess<T>): epoch 0, _Fork/raw clone children, racing first get().
hostcache_test(test_attack_fork10 test_attack_fork10.cpp LABELS multiprocess TIMEOUT 300)
# Review of e180a9f (PerProcess<T>, the stderr sink): errno, SIGPIPE, a segment at fd 2, glibc's tzset lock at fork, torn lines.
hostcache_test(test_attack_fork11 test_attack_fork11.cpp LABELS multiprocess TIMEOUT 300)
# Review of the fork11 fixes: torn lines across processes, errno on out of memory, whose SIGPIPE is taken back, no /dev/null.
hostcache_test(test_attack_fork12 test_attack_fork12.cpp LABELS multiprocess TIMEOUT 300)
# Review of the fork12 fixes: the torn line tied to its stream, the error handler, a long status file, the descriptor put in a hole.
hostcache_test(test_attack_fork13 test_attack_fork13.cpp LABELS multiprocess TIMEOUT 300)
# Review of the fork13 fixes: one torn record per stream, a segment or /proc file opened into a hole among 0-2.
hostcache_test(test_attack_fork14 test_attack_fork14.cpp LABELS multiprocess TIMEOUT 300)
# Review of the fork14 fixes: fill_holes' errno, a hole that cannot be filled or fcntl denied, the ninth torn stream.
hostcache_test(test_attack_fork15 test_attack_fork15.cpp LABELS multiprocess TIMEOUT 300)
# Review of the outbox slot's check: writers stopped or killed at every store, lapped once and twice, bit flips.
hostcache_test(test_attack_outbox3 test_attack_outbox3.cpp LABELS multiprocess TIMEOUT 300)
