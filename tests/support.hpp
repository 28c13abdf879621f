// Shared test helpers: contexts configured from the environment (so the whole suite also runs on
// the fallback ring paths), fd accounting, allocation counting, bounded waits.
#pragma once

#include <doctest/doctest.h>
#include <ringnet/ringnet.hpp>

#include <dirent.h>
#include <sys/utsname.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <source_location>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

namespace rn = ringnet;
using namespace std::chrono_literals;

namespace test {

// RINGNET_TEST_RING_MODE=defer|coop|basic picks the most capable ring mode to try;
// RINGNET_TEST_DISABLE_OPS=18,45,... disables opcodes so the syscall fallbacks run;
// RINGNET_TEST_REGISTER_RING_FD=0 leaves the ring's descriptor unregistered;
// RINGNET_TEST_SEND_INLINE=0 sends everything through the ring (no send(2) at once);
// RINGNET_TEST_BATCH_WAIT=0 makes every wait return at the first completion (no min-wait).
inline rn::io_context_options context_options(unsigned entries = 256) {
  rn::io_context_options o;
  o.entries = entries;
  if (const char* m = std::getenv("RINGNET_TEST_RING_MODE")) {
    const std::string_view mode(m);
    if (mode == "coop") o.mode = rn::ring_mode::coop_taskrun;
    if (mode == "basic") o.mode = rn::ring_mode::basic;
  }
  if (const char* r = std::getenv("RINGNET_TEST_REGISTER_RING_FD")) o.register_ring_fd = std::string_view(r) != "0";
  if (const char* r = std::getenv("RINGNET_TEST_SEND_INLINE")) o.send_inline = std::string_view(r) != "0";
  if (const char* r = std::getenv("RINGNET_TEST_BATCH_WAIT"); r && std::string_view(r) == "0") o.batch_wait = {};
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

// Whether the running kernel's release (uname -r) is at least major.minor.
inline bool kernel_at_least(int major, int minor) {
  utsname u{};
  int ma = 0, mi = 0;
  if (::uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
  return ma > major || (ma == major && mi >= minor);
}

// IORING_OP_NOP completes at once in the kernel, its CQE in the same batch as those of the
// requests submitted beside it (test_teardown's "completed, not resumed" moment is reached so).
struct nop_op {
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_nop(sqe); }
  static rn::result<void> complete(int res, std::uint32_t) noexcept { return rn::detail::void_result(res); }
};

// RINGNET_TEST_FAULTS set: the run is under fault injection (RINGNET_FAULT_RATE, in a build with
// -Dfault_injection=true), where injected errors make ordinary checks fail (run with doctest's
// --no-exitcode). What must hold whatever the kernel returns (no descriptor leaked, no byte lost
// that the API reported delivered) then ends the run at once with a message instead.
inline bool under_faults() {
  static const bool on = std::getenv("RINGNET_TEST_FAULTS") != nullptr;
  return on;
}

// A check that injected faults must not break: a failed CHECK normally, fatal under faults.
inline void invariant(bool ok, const std::string& what,
                      std::source_location where = std::source_location::current()) {
  if (ok) return;
  if (under_faults()) {
    const auto* o = doctest::getContextOptions();
    std::fprintf(stderr, "\nFAULT INVARIANT BROKEN at %s:%u in \"%s\": %s\n", where.file_name(),
                 where.line(), o && o->currentTest ? o->currentTest->m_name : "?", what.c_str());
    std::fflush(stderr);
    std::_Exit(3);
  }
  ADD_FAIL_CHECK_AT(where.file_name(), static_cast<int>(where.line()), what);
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

// Put one at the top of a test case: fails it if fds leaked. Under faults a leak is fatal, unless
// a failed REQUIRE is unwinding the test (the test's own descriptors may be left open then).
struct fd_leak_check {
  int before = open_fds();
  int unwinding = std::uncaught_exceptions();
  fd_leak_check() = default;
  fd_leak_check(const fd_leak_check&) = delete;
  fd_leak_check& operator=(const fd_leak_check&) = delete;
  ~fd_leak_check() {
    const int now = open_fds();
    if (std::uncaught_exceptions() == unwinding)
      invariant(now == before, "file descriptors leaked: " + std::to_string(before) + " open before, " +
                                   std::to_string(now) + " after");
    else
      CHECK_MESSAGE(now == before, "file descriptors leaked");
  }
};

// Fails the whole run (std::_Exit(1)) if not destroyed within `limit`: a hang becomes a failure
// that names the test that hung.
class watchdog {
 public:
  explicit watchdog(std::chrono::seconds limit,
                    std::source_location where = std::source_location::current())
      : watchdog(limit, {}, where) {}
  // `what`: which part of the test (a matrix cell) is running.
  watchdog(std::chrono::seconds limit, const std::string& what,
           std::source_location where = std::source_location::current())
      : test_(what.empty() ? current_test() : current_test() + ": " + what),
        line_(where.line()),
        thread_([this, limit] {
          std::unique_lock lock(m_);
          if (cv_.wait_for(lock, limit, [this] { return cancelled_; })) return;
          std::fprintf(stderr, "\nwatchdog: \"%s\" (watchdog at line %u) hung: still running after %lld s\n",
                       test_.c_str(), line_, static_cast<long long>(limit.count()));
          std::fflush(stderr);
          std::_Exit(1);
        }) {}
  ~watchdog() {
    {
      std::lock_guard g(m_);
      cancelled_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  watchdog(const watchdog&) = delete;
  watchdog& operator=(const watchdog&) = delete;

 private:
  static std::string current_test() {
    const auto* o = doctest::getContextOptions();
    return o && o->currentTest ? o->currentTest->m_name : "?";
  }
  std::string test_;
  unsigned line_;
  std::mutex m_;
  std::condition_variable cv_;
  bool cancelled_ = false;
  std::thread thread_;
};

// Operator new calls on this thread since the program started (tests/alloc_counter.cpp).
std::size_t allocations() noexcept;
// The nth throwing operator new on this thread from now (1: the next) throws std::bad_alloc
// (tests/alloc_counter.cpp replaces the nothrow forms too: they never fail and do not count here).
void fail_allocation(std::size_t nth = 1) noexcept;
// Whether that failure is still to come.
bool allocation_failure_armed() noexcept;

#ifdef RINGNET_TEST_NO_ALLOC_COUNTER
inline constexpr bool counting_allocations = false;  // TSan replaces operator new itself
std::size_t allocations() noexcept { return 0; }
#else
inline constexpr bool counting_allocations = true;
#endif

}  // namespace test
