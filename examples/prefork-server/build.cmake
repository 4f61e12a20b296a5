# The prefork server (issue 7): included from examples/CMakeLists.txt, so its
# binaries land in ${CMAKE_CURRENT_BINARY_DIR} (build/examples/).
#
#   prefork-server    the server: master + forked workers sharing one cache
#   prefork-loadgen   load generator and invalidation proof (scripts/demo-server.sh)
#   prefork_metadata  the memoized extractor; tests compare responses with describe()
#   prefork_client    the blocking Beast client the load generator and tests share
find_package(Boost 1.74 REQUIRED)  # Asio and Beast, header-only
find_package(CLI11 REQUIRED CONFIG)
find_package(nlohmann_json 3 REQUIRED CONFIG)

set(PREFORK_DIR ${CMAKE_CURRENT_LIST_DIR})
set(PREFORK_WARNINGS -Wall -Wextra -Wpedantic)

add_library(prefork_metadata STATIC ${PREFORK_DIR}/metadata.cpp)
target_include_directories(prefork_metadata PUBLIC ${PREFORK_DIR})
target_link_libraries(prefork_metadata PUBLIC hostcache::hostcache nlohmann_json::nlohmann_json)
target_compile_options(prefork_metadata PRIVATE ${PREFORK_WARNINGS})

add_library(prefork_client STATIC ${PREFORK_DIR}/http_client.cpp)
target_include_directories(prefork_client PUBLIC ${PREFORK_DIR})
target_link_libraries(prefork_client PUBLIC Boost::headers Threads::Threads)
target_compile_options(prefork_client PRIVATE ${PREFORK_WARNINGS})

add_executable(prefork-server
  ${PREFORK_DIR}/main.cpp
  ${PREFORK_DIR}/master.cpp
  ${PREFORK_DIR}/worker.cpp
  ${PREFORK_DIR}/routes.cpp
)
target_link_libraries(prefork-server PRIVATE prefork_metadata Boost::headers CLI11::CLI11 Threads::Threads)
target_compile_options(prefork-server PRIVATE ${PREFORK_WARNINGS})

add_executable(prefork-loadgen
  ${PREFORK_DIR}/loadgen.cpp
  ${PREFORK_DIR}/invalidation_proof.cpp
)
target_link_libraries(prefork-loadgen PRIVATE prefork_client prefork_metadata CLI11::CLI11)
target_compile_options(prefork-loadgen PRIVATE ${PREFORK_WARNINGS})
