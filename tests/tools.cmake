# Tests of the inspection library and of the tools (included from
# tests/CMakeLists.txt). test_tools runs the real binaries, whose paths it is
# given at compile time.
hostcache_test(test_inspect test_inspect.cpp LABELS tools TIMEOUT 180)

if(TARGET shm-dump AND TARGET hostcache_cli)
  find_package(nlohmann_json 3 REQUIRED CONFIG)
  hostcache_test(test_tools test_tools.cpp LABELS tools TIMEOUT 300)
  hostcache_test(test_shm_dump test_shm_dump.cpp LABELS tools TIMEOUT 300)
  # Issue 11: segments and files of another user, hostile geometry, planted
  # symlinks, terminal escapes. Runs as root in CI (it becomes uid 65534).
  hostcache_test(test_tools_untrusted test_tools_untrusted.cpp LABELS tools TIMEOUT 300)
  foreach(t test_tools test_shm_dump test_tools_untrusted)
    target_link_libraries(${t} PRIVATE nlohmann_json::nlohmann_json)
    target_compile_definitions(${t} PRIVATE
      SHM_DUMP_BIN="$<TARGET_FILE:shm-dump>"
      HOSTCACHE_BIN="$<TARGET_FILE:hostcache_cli>")
    add_dependencies(${t} shm-dump hostcache_cli)
  endforeach()

  # The parsers, formatters, msgpack detection and snapshot codec, directly.
  hostcache_test(test_tool_units test_tool_units.cpp LABELS tools TIMEOUT 60)
  target_link_libraries(test_tool_units PRIVATE hostcache_tools_common)
endif()
