// signal_set: wait for signals (SIGINT, SIGTERM, ...) as an operation on the ring, via signalfd.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/fd_state.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <initializer_list>
#include <optional>
#include <utility>

RINGNET_BEGIN_NAMESPACE

namespace detail {
// A read of one signalfd_siginfo, counted on the signalfd's state; the siginfo lives in the
// operation (the awaiter), so a signal_set destroyed meanwhile leaves the kernel nothing to write
// into freed memory.
struct signal_read_op {
  descriptor_state* st;
  signalfd_siginfo info{};
  std::optional<int> try_inline() const noexcept {
    if (!st->is_open()) return -EBADF;
    if (st->closing()) return -ECANCELED;
    return std::nullopt;
  }
  void submitted(request& r) const noexcept { st->track(r); }
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_read(sqe, st->fd(), &info, sizeof info, 0); }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    st->untrack(r);
    return res;
  }
  result<int> complete(int res, std::uint32_t) const noexcept {
    if (res < 0) return errno_code(-res);
    return static_cast<int>(info.ssi_signo);
  }
};
}  // namespace detail

/// Blocks the given signals in the calling thread (start other threads after creating it, so
/// they inherit the mask) and delivers them through wait() instead of handlers.
class signal_set {
 public:
  signal_set(io_context& ctx, std::initializer_list<int> signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals) {
      if (sigaddset(&set, s) != 0) throw_error(errno_code(errno), "signal_set: not a signal number");
    }
    // pthread_sigmask returns its error instead of setting errno.
    if (const int e = ::pthread_sigmask(SIG_BLOCK, &set, &saved_); e != 0) throw_error(errno_code(e), "sigmask");
    const int fd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) {
      const int e = errno;
      ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
      throw_error(errno_code(e), "signalfd");
    }
    st_ = detail::descriptor_state::open(detail::ring_of(ctx), ctx, fd);
  }
  signal_set(const signal_set&) = delete;
  signal_set& operator=(const signal_set&) = delete;
  /// Restores the thread's signal mask; a pending wait() completes with operation_canceled.
  ~signal_set() {
    detail::descriptor_state::release(st_);
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }

  /// Completes with the number of the next signal received.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto wait(Token token = {}) {
    return operation<detail::signal_read_op, Token>(st_->owner(), detail::signal_read_op{st_},
                                                    std::move(token));
  }

 private:
  detail::descriptor_state* st_ = nullptr;
  sigset_t saved_{};
};

RINGNET_END_NAMESPACE
