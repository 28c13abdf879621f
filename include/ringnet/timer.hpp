// Timers on IORING_OP_TIMEOUT; cancellable like every operation.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/operation.hpp>

#include <chrono>

RINGNET_BEGIN_NAMESPACE

namespace detail {
struct timeout_op {
  __kernel_timespec ts;
  unsigned flags;
  static constexpr bool linkable_timeout = false;  // it is a timeout
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_timeout(sqe, &ts, 0, flags); }
  static result<void> complete(int res, std::uint32_t) noexcept {
    return void_result(res == -ETIME ? 0 : res);
  }
};
}  // namespace detail

/// Completes after `d` (CLOCK_MONOTONIC); operation_canceled if stopped first.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] auto sleep_for(io_context& ctx, std::chrono::nanoseconds d, Token token = {}) {
  return operation<detail::timeout_op, Token>(ctx, {detail::to_timespec(d), 0}, std::move(token));
}

/// Completes at `t` on the steady clock (which is CLOCK_MONOTONIC on Linux).
template <stoppable_token Token = never_stop_token>
[[nodiscard]] auto sleep_until(io_context& ctx, std::chrono::steady_clock::time_point t,
                               Token token = {}) {
  return operation<detail::timeout_op, Token>(
      ctx, {detail::to_timespec(t.time_since_epoch()), IORING_TIMEOUT_ABS}, std::move(token));
}

RINGNET_END_NAMESPACE
