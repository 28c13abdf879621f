// signal_set: wait for signals (SIGINT, SIGTERM, ...) as an operation on the ring, via signalfd.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <initializer_list>
#include <utility>

RINGNET_BEGIN_NAMESPACE

namespace detail {
struct signal_read_op {
  int fd;
  signalfd_siginfo* info;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_read(sqe, fd, info, sizeof *info, 0);
  }
  result<int> complete(int res, std::uint32_t) const noexcept {
    if (res < 0) return errno_code(-res);
    return static_cast<int>(info->ssi_signo);
  }
};
}  // namespace detail

/// Blocks the given signals in the calling thread (start other threads after creating it, so
/// they inherit the mask) and delivers them through wait() instead of handlers.
class signal_set {
 public:
  signal_set(io_context& ctx, std::initializer_list<int> signals) : ctx_(&ctx) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals) {
      if (sigaddset(&set, s) != 0) throw_error(errno_code(errno), "signal_set: not a signal number");
    }
    // pthread_sigmask returns its error instead of setting errno.
    if (const int e = ::pthread_sigmask(SIG_BLOCK, &set, &saved_); e != 0) throw_error(errno_code(e), "sigmask");
    fd_ = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd_ < 0) {
      const int e = errno;
      ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
      throw_error(errno_code(e), "signalfd");
    }
  }
  signal_set(const signal_set&) = delete;
  signal_set& operator=(const signal_set&) = delete;
  /// Restores the thread's signal mask.
  ~signal_set() {
    ::close(fd_);
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }

  /// Completes with the number of the next signal received.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto wait(Token token = {}) {
    return operation<detail::signal_read_op, Token>(*ctx_, detail::signal_read_op{fd_, &info_},
                                                    std::move(token));
  }

 private:
  io_context* ctx_;
  int fd_ = -1;
  sigset_t saved_{};
  signalfd_siginfo info_{};
};

RINGNET_END_NAMESPACE
