// What errno values from socket calls mean for the connection, defined once.
#pragma once

#include <ringnet/detail/config.hpp>

#include <cerrno>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// "Reset": the connection ended abortively. The peer sent RST (ECONNRESET), or a write or a
// shutdown found the connection gone (EPIPE, ENOTCONN), or the kernel aborted it (ECONNABORTED).
[[nodiscard]] constexpr bool reset_errno(int e) noexcept {
  return e == ECONNRESET || e == EPIPE || e == ENOTCONN || e == ECONNABORTED;
}

// The connection itself is over (reset, or lost on the network), as opposed to a failure of one
// call. `write_shut`: after our own shutdown(SHUT_WR), EPIPE from a send is that call's misuse.
[[nodiscard]] constexpr bool connection_lost_errno(int e, bool write_shut) noexcept {
  if (e == EPIPE) return !write_shut;
  return reset_errno(e) || e == ETIMEDOUT || e == EHOSTUNREACH || e == ENETUNREACH ||
         e == ENETDOWN || e == EHOSTDOWN;
}

}  // namespace detail
RINGNET_END_NAMESPACE
