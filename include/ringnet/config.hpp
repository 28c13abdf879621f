// ringnet configuration: namespace, version, feature detection, throw hook.
// Every macro ringnet defines starts with RINGNET_.
#pragma once

#define RINGNET_VERSION_MAJOR 0
#define RINGNET_VERSION_MINOR 1
#define RINGNET_VERSION_PATCH 0

// Vendoring: build with -DRINGNET_NAMESPACE=myproxy_net so two copies of ringnet can live in one
// binary. The versioned inline namespace keeps the ABI of two versions apart as well.
#ifndef RINGNET_NAMESPACE
#define RINGNET_NAMESPACE ringnet
#endif
#define RINGNET_ABI_NAMESPACE v0_1
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

#include <cstdlib>
