// The root of every ringnet header: namespace, version, feature detection, the throw hook and
// contract checks. Users set the macros documented in <ringnet/config.hpp>.
#pragma once

#define RINGNET_VERSION_MAJOR 0
#define RINGNET_VERSION_MINOR 1
#define RINGNET_VERSION_PATCH 0

// Coroutine frames come from a per-thread pool (detail/frame_pool.hpp), except under
// AddressSanitizer or with -DRINGNET_NO_FRAME_POOL, so use-after-free in frames stays detectable.
#if defined(__SANITIZE_ADDRESS__)
#define RINGNET_DETAIL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RINGNET_DETAIL_ASAN 1
#endif
#endif
#if !defined(RINGNET_NO_FRAME_POOL) && !defined(RINGNET_DETAIL_ASAN)
#define RINGNET_DETAIL_FRAME_POOL 1
#endif

// Fault injection (detail/fault_injection.hpp): only where RINGNET_FAULT_INJECTION is defined
// non-zero, as the meson option fault_injection does for the test programs.
#if defined(RINGNET_FAULT_INJECTION) && RINGNET_FAULT_INJECTION
#define RINGNET_DETAIL_FAULTS 1
#endif

// Vendoring: build with -DRINGNET_NAMESPACE=myproxy_net so two copies of ringnet can live in one
// binary. The versioned inline namespace keeps the ABI of two versions apart as well, of two
// frame allocation schemes (a pooled frame must never be freed by an unpooled TU, or vice versa),
// and of the ring with and without fault injection (their layouts differ).
#ifndef RINGNET_NAMESPACE
#define RINGNET_NAMESPACE ringnet
#endif
#ifndef RINGNET_ABI_NAMESPACE
#if defined(RINGNET_DETAIL_FRAME_POOL) && defined(RINGNET_DETAIL_FAULTS)
#define RINGNET_ABI_NAMESPACE v0_1_faults
#elif defined(RINGNET_DETAIL_FRAME_POOL)
#define RINGNET_ABI_NAMESPACE v0_1
#elif defined(RINGNET_DETAIL_FAULTS)
#define RINGNET_ABI_NAMESPACE v0_1_nopool_faults
#else
#define RINGNET_ABI_NAMESPACE v0_1_nopool
#endif
#endif
#define RINGNET_BEGIN_NAMESPACE                                                                    \
  namespace RINGNET_NAMESPACE {                                                                    \
  inline namespace RINGNET_ABI_NAMESPACE {
#define RINGNET_END_NAMESPACE                                                                      \
  }                                                                                                \
  }

#if !__has_include(<liburing.h>)
#error "ringnet needs liburing (Debian: liburing-dev)"
#endif

// Debian's liburing 2.3 has no version header; newer ones ship io_uring_version.h.
#if __has_include(<liburing/io_uring_version.h>)
#include <liburing/io_uring_version.h>
#define RINGNET_LIBURING_VERSION (IO_URING_VERSION_MAJOR * 100 + IO_URING_VERSION_MINOR)
#else
#define RINGNET_LIBURING_VERSION 203
#endif

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define RINGNET_HAS_EXCEPTIONS 1
#define RINGNET_THROW(...) throw __VA_ARGS__
#else
#define RINGNET_HAS_EXCEPTIONS 0
#define RINGNET_THROW(...) ::std::abort()
#endif

// Contract checks: a broken precondition (an operation on the wrong thread, a stream released
// with operations in flight) stops the program with a message in builds without NDEBUG, instead
// of corrupting memory later.
#ifdef NDEBUG
#define RINGNET_ASSERT(cond, msg) ((void)0)
#else
#define RINGNET_ASSERT(cond, msg)                                                                  \
  ((cond) ? (void)0 : ::RINGNET_NAMESPACE::detail::contract_violation(msg, __FILE__, __LINE__))
#endif

// clang (16 and earlier, from -O1) keeps the address of a thread_local computed before a coroutine
// suspends and uses it after the coroutine resumed on another thread: the old thread's variable.
// Every thread_local is read through a function marked this way, so its address is computed
// anew at each call.
#define RINGNET_TLS_ACCESSOR [[gnu::noinline]]

#include <cstdio>
#include <cstdlib>

RINGNET_BEGIN_NAMESPACE
namespace detail {
[[noreturn]] inline void contract_violation(const char* msg, const char* file, int line) noexcept {
  std::fprintf(stderr, "ringnet: contract violated at %s:%d: %s\n", file, line, msg);
  std::abort();
}
}  // namespace detail
RINGNET_END_NAMESPACE
