// doctest's main, compiled once. Exits 77 (meson: skipped) when io_uring itself is unavailable
// (seccomp, kernel.io_uring_disabled), so a sandbox without it reports a skip, not a failure.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <liburing.h>

#include <cstdio>

int main(int argc, char** argv) {
  io_uring probe{};
  const int err = io_uring_queue_init(2, &probe, 0);
  if (err == -ENOSYS || err == -EPERM) {
    std::puts("io_uring is unavailable here: skipping");
    return 77;
  }
  if (err == 0) io_uring_queue_exit(&probe);
  doctest::Context context(argc, argv);
  return context.run();
}
