// Shared test helpers: contexts configured from the environment (so the whole suite also runs on
// the fallback ring paths), fd accounting, allocation counting, bounded waits.
#pragma once

#include <doctest/doctest.h>
#include <ringnet/ringnet.hpp>

#include <dirent.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace rn = ringnet;
using namespace std::chrono_literals;

namespace test {

// RINGNET_TEST_RING_MODE=defer|coop|basic picks the most capable ring mode to try;
// RINGNET_TEST_DISABLE_OPS=18,45,... disables opcodes so the syscall fallbacks run.
inline rn::io_context_options context_options(unsigned entries = 256) {
  rn::io_context_options o;
  o.entries = entries;
  if (const char* m = std::getenv("RINGNET_TEST_RING_MODE")) {
    const std::string_view mode(m);
    if (mode == "coop") o.mode = rn::ring_mode::coop_taskrun;
    if (mode == "basic") o.mode = rn::ring_mode::basic;
  }
  if (const char* ops = std::getenv("RINGNET_TEST_DISABLE_OPS")) {
    for (const char* p = ops; *p;) {
      char* end = nullptr;
      const unsigned long op = std::strtoul(p, &end, 10);
      if (end == p) break;
      if (op < o.disabled_ops.size()) o.disabled_ops.set(op);
      p = *end ? end + 1 : end;
    }
  }
  return o;
}

inline int open_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
  }
  return n - 1;  // the DIR itself
}

// Put one at the top of a test case: fails it if fds leaked.
struct fd_leak_check {
  int before = open_fds();
  fd_leak_check() = default;
  fd_leak_check(const fd_leak_check&) = delete;
  fd_leak_check& operator=(const fd_leak_check&) = delete;
  ~fd_leak_check() { CHECK_MESSAGE(open_fds() == before, "file descriptors leaked"); }
};

// Operator new calls on this thread since the program started (tests/alloc_counter.cpp).
std::size_t allocations() noexcept;

#ifdef RINGNET_TEST_NO_ALLOC_COUNTER
inline constexpr bool counting_allocations = false;  // TSan replaces operator new itself
std::size_t allocations() noexcept { return 0; }
#else
inline constexpr bool counting_allocations = true;
#endif

}  // namespace test
