# The prefork server end to end (issue 7): the real prefork-server binary, a
# master and its workers on a free loopback port. Needs the example's targets,
# so it exists only with HOSTCACHE_BUILD_EXAMPLES.
if(TARGET prefork-server)
  hostcache_test(test_prefork test_prefork.cpp LABELS prefork multiprocess TIMEOUT 120)
  target_link_libraries(test_prefork PRIVATE prefork_client prefork_metadata)
  target_compile_definitions(test_prefork PRIVATE PREFORK_SERVER_BIN="$<TARGET_FILE:prefork-server>")
  add_dependencies(test_prefork prefork-server)
endif()
