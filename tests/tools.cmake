# Tests of the inspection library and of the tools (included from
# tests/CMakeLists.txt). test_tools runs the real binaries, whose paths it is
# given at compile time.
hostcache_test(test_inspect test_inspect.cpp LABELS tools TIMEOUT 180)

if(TARGET shm-dump AND TARGET hostcache_cli)
  hostcache_test(test_tools test_tools.cpp LABELS tools TIMEOUT 300)
  target_link_libraries(test_tools PRIVATE hostcache_tools_common)
  target_compile_definitions(test_tools PRIVATE
    SHM_DUMP_BIN="$<TARGET_FILE:shm-dump>"
    HOSTCACHE_BIN="$<TARGET_FILE:hostcache_cli>")
  add_dependencies(test_tools shm-dump hostcache_cli)

  # The parsers, formatters, msgpack detection and snapshot codec, directly.
  hostcache_test(test_tool_units test_tool_units.cpp LABELS tools TIMEOUT 60)
  target_link_libraries(test_tool_units PRIVATE hostcache_tools_common)
endif()
