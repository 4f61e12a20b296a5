// test_pch.h — what most tests include, precompiled once per build and
// reused by every hostcache_test() (tests/CMakeLists.txt): gtest, the public
// headers (msgpack's templates with them) and spdlog took each test about 3
// to 5 s to parse. A test still includes what it uses; this only makes that
// cheaper, and a build without it (HOSTCACHE_TEST_PCH=OFF) is the same.
#pragma once

#include <gtest/gtest.h>
#include <hostcache/cache.h>
#include <hostcache/memoize.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>
