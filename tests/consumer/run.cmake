# Installs the built hostcache into a scratch prefix, then configures, builds
# and runs a separate project that finds it with find_package(hostcache).
# Arguments: BUILD_ROOT (hostcache's build dir), SOURCE_DIR, BINARY_DIR.
set(prefix ${BINARY_DIR}/prefix)
file(REMOVE_RECURSE ${BINARY_DIR})
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message(STATUS "${out}")
endfunction()
step(${CMAKE_COMMAND} --install ${BUILD_ROOT} --prefix ${prefix})
step(${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/consumer -B ${BINARY_DIR}/build -DCMAKE_PREFIX_PATH=${prefix})
step(${CMAKE_COMMAND} --build ${BINARY_DIR}/build)
step(${BINARY_DIR}/build/consumer)
