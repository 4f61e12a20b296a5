# Adversarial tests (issue 10): a model-based randomized test over several real
# processes, eviction-order and repair scenarios, and a live-mutation fuzzer
# that scribbles over a segment while workers use it.
#
#   HOSTCACHE_MODEL_SEED=<n> ctest -R test_model   # adds seed n to the fixed one
#   hostcache-mutate --seconds 60 --workers 4 --seed 7
hostcache_test(test_model test_model.cpp LABELS "multiprocess;model" TIMEOUT 600)

add_executable(hostcache-mutate torture/live_mutation.cpp)
target_link_libraries(hostcache-mutate PRIVATE hostcache_test_support PkgConfig::XXHASH spdlog::spdlog)
set_target_properties(hostcache-mutate PROPERTIES ENABLE_EXPORTS ON)  # names in crash stacks
# Bounded: 20 s of scribbling; the watchdog reports a worker stuck for 5 s.
add_test(NAME test_live_mutation COMMAND hostcache-mutate --seconds 20 --workers 4 --seed 1)
set_tests_properties(test_live_mutation PROPERTIES TIMEOUT 120 LABELS "fuzz")
