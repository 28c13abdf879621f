// signal_set: wait for signals (SIGINT, SIGTERM, ...) as an operation on the ring, via signalfd.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/fd_state.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>

#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <initializer_list>
#include <optional>
#include <system_error>
#include <utility>

RINGNET_BEGIN_NAMESPACE

namespace detail {
// A read of one signalfd_siginfo, counted on the signalfd's state; the siginfo lives in the
// operation (the awaiter), so a signal_set destroyed meanwhile leaves the kernel nothing to write
// into freed memory.
//
// It can fail with -EAGAIN although none of the set's signals was sent: queuing any signal to any
// thread of the process (a SIGPIPE left pending on an io-wq worker by a splice into a reset
// socket, a SIGUSR1 to a thread that handles it) wakes every signalfd of the process; the kernel
// then retries the read, finds nothing, and waits again, but after about 128 such wake-ups it
// hands the read to an io-wq worker, where the O_NONBLOCK signalfd answers -EAGAIN (on kernel
// 6.18, 1000 unrelated signals 200 us apart ended 7 reads that way).
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
  // -EINTR nobody asked for (no cancel was sent) is an interruption, not a cancellation: it is
  // reported as -EAGAIN, to be retried like an empty read.
  int settle(request& r, int res, std::uint32_t) const noexcept {
    if (res == -EINTR && !r.cancel_sent()) res = -EAGAIN;
    st->untrack(r);
    return res;
  }
  result<int> complete(int res, std::uint32_t) const noexcept {
    if (res < 0) return errno_code(-res);
    return static_cast<int>(info.ssi_signo);
  }
};

// Keeps the signalfd's state alive (not its descriptor open) while wait() runs: the signal_set
// may be destroyed while an empty read's completion is on its way, and the next read must then
// find the state closing rather than freed.
class pinned_descriptor {
 public:
  explicit pinned_descriptor(descriptor_state* s) noexcept : st_(s) { st_->pin(); }
  pinned_descriptor(pinned_descriptor&& o) noexcept : st_(std::exchange(o.st_, nullptr)) {}
  pinned_descriptor(const pinned_descriptor&) = delete;
  pinned_descriptor& operator=(const pinned_descriptor&) = delete;
  ~pinned_descriptor() {
    if (st_) st_->unpin();
  }
  [[nodiscard]] descriptor_state* get() const noexcept { return st_; }

 private:
  descriptor_state* st_;
};

// Reads until a signal of the set arrives or a read fails for real. Each retry is a new read,
// which the kernel parks until the signalfd is woken again, so an empty read never spins. The
// state is pinned from the call on (the task is lazy: the signal_set may be gone by its start).
template <stoppable_token Token>
task<result<int>> wait_for_signal(pinned_descriptor pin, Token token) {
  descriptor_state* st = pin.get();
  for (;;) {
    result<int> r = co_await operation<signal_read_op, Token>(st->owner(), signal_read_op{st}, token);
    if (r || r.error() != std::errc::resource_unavailable_try_again) co_return r;
  }
}
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

  /// Completes with the number of the next signal of the set received, and only then or with
  /// an error: other signals sent to the process, which wake the signalfd too, are waited past.
  /// A stop (operation_canceled) ends the wait, as does destroying the signal_set (also before
  /// the returned task first runs).
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] task<result<int>> wait(Token token = {}) {
    return detail::wait_for_signal(detail::pinned_descriptor(st_), std::move(token));
  }

 private:
  detail::descriptor_state* st_ = nullptr;
  sigset_t saved_{};
};

RINGNET_END_NAMESPACE
