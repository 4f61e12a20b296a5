# Reliability: kill at every step, the SIGKILL storm (short), hostile segments.
hostcache_test(test_crash_points test_crash_points.cpp LABELS multiprocess TIMEOUT 600)

add_executable(hostcache-storm torture/storm.cpp)
find_package(CLI11 CONFIG REQUIRED)
target_link_libraries(hostcache-storm PRIVATE hostcache_test_support PkgConfig::XXHASH spdlog::spdlog CLI11::CLI11)
add_test(NAME test_storm_500_kills COMMAND hostcache-storm --kills 500 --workers 8)
set_tests_properties(test_storm_500_kills PROPERTIES TIMEOUT 900 LABELS "multiprocess;storm")

# The core audit (issue 10) and the stripe lock (issue 11): a test per finding.
hostcache_test(test_audit test_audit.cpp LABELS multiprocess TIMEOUT 300)
