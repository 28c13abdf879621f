// A listening socket's state: its multishot accept (or a single shot re-armed where the kernel
// has no multishot), the connections it accepted that next() has not taken yet, the waiters of
// next(), and the error that ended the multishot, given once.
//
// Past `high_water` queued connections the multishot is cancelled, so further ones wait in the
// kernel's backlog instead of in memory. close() cancels the accept and closes the descriptor once
// its last CQE arrived: closed at once, an SQE of it not yet submitted would accept on whatever
// socket gets the same number next. (Not shutdown(2): a socket shared with a forked process
// would stop listening there too.)
#pragma once

#include <ringnet/detail/config.hpp>
#include <ringnet/detail/fd_state.hpp>
#include <ringnet/detail/request.hpp>
#include <ringnet/detail/ring.hpp>

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <vector>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class listener_state final : public fd_state {
 public:
  static constexpr std::size_t high_water = 256;

  static listener_state* open(ring& r, io_context& ctx, int fd) { return new listener_state(r, ctx, fd); }

  // For next() (a waiting<> source through listener's awaiter).
  // close() returns with the listener closed, though the descriptor itself waits for the kernel.
  [[nodiscard]] bool closed() const noexcept { return !is_open() || closing(); }

  int poll() noexcept {
    if (closed()) return -EBADF;
    if (count_ > 0) return waiter::ready;
    if (error_ != 0) return std::exchange(error_, 0);
    return waiter::pending;
  }
  void enqueue(waiter& w) noexcept {
    waiters_.push(w);
    arm();
  }
  // A waiter's stop: with nobody waiting any more the accept is cancelled, so an idle listener
  // holds no request (connections accepted meanwhile stay queued for the next call).
  void dequeue(waiter& w) noexcept {
    waiters_.remove(w);
    if (waiters_.empty()) accept_.cancel();
  }
  // An accepted descriptor (poll() said ready).
  int take() noexcept {
    const int fd = fds_[head_];
    head_ = (head_ + 1) % fds_.size();
    --count_;
    return fd;
  }

  // Stops accepting: the multishot ends, queued connections are closed, waiters complete with
  // operation_canceled. The descriptor is closed when nothing is in flight on it any more.
  void close() noexcept {
    if (!is_open() || closing()) return;
    close_when_idle();
    close_queued();
    if (owner() && !owner()->draining())
      waiters_.wake_all(*owner(), -ECANCELED);
    else
      waiters_.clear();  // nobody will resume them: the ring is going away
  }
  static void release(listener_state* s) noexcept {
    s->close();
    s->release_handle();
  }

 private:
  listener_state(ring& r, io_context& ctx, int fd)
      : fd_state(r, ctx, fd, &listener_state::on_ring_event, &listener_state::destroy),
        accept_(*this),
        fds_(high_water * 2) {}
  ~listener_state() {
    waiters_.clear();
    close_queued();
  }
  static void destroy(fd_state* s) noexcept { delete static_cast<listener_state*>(s); }

  void arm() noexcept {
    if (accept_.in_flight() || !is_open() || closing() || !owner() || owner()->draining()) return;
    io_uring_sqe* sqe = accept_.start(*owner());
    if (owner()->caps().multishot_accept)
      io_uring_prep_multishot_accept(sqe, fd(), nullptr, nullptr, SOCK_CLOEXEC);
    else
      io_uring_prep_accept(sqe, fd(), nullptr, nullptr, SOCK_CLOEXEC);
    track(accept_);
  }
  void push(int fd) {
    if (count_ == fds_.size()) {  // only between a throttling cancel and its completion
      std::vector<int> bigger(fds_.size() * 2);
      for (std::size_t i = 0; i < count_; ++i) bigger[i] = fds_[(head_ + i) % fds_.size()];
      fds_.swap(bigger);
      head_ = 0;
    }
    fds_[(head_ + count_) % fds_.size()] = fd;
    ++count_;
  }
  void close_queued() noexcept {
    while (count_ > 0) ::close(take());
    error_ = 0;
  }

  void on_accept(int res, std::uint32_t) noexcept {
    const bool final = !accept_.in_flight();
    const bool draining = owner()->draining();
    if (res >= 0) {
      if (closing() || draining) {
        ::close(res);
      } else {
        try {
          push(res);
        } catch (...) {  // out of memory: refuse the connection rather than lose track of it
          ::close(res);
        }
        if (count_ >= high_water) accept_.cancel();  // backpressure: the kernel backlog holds the rest
      }
    } else if (final && !cancelled_result(res) && !closing()) {
      error_ = res;  // EMFILE, ENFILE, ENOBUFS, ...: given to one next(), the following re-arms
    }
    std::coroutine_handle<> wake;
    if (!draining && !closing() && !waiters_.empty()) {
      if (count_ > 0) {
        wake = waiters_.take_front();
      } else if (final && error_ != 0) {
        waiters_.front()->res = std::exchange(error_, 0);
        wake = waiters_.front()->coro;
        waiters_.remove(*waiters_.front());
      }
      // Ended with someone still waiting: a single-shot accept after each connection, a
      // throttling cancel, a CQ overflow.
      if (final && !waiters_.empty()) arm();
    }
    if (final) untrack(accept_);  // frees the state when its handle is gone (nobody waits then)
    if (wake) wake.resume();
  }

  static void on_ring_event(ring_resource* r, ring_event e) noexcept {
    if (e != ring_event::gone) return;
    auto& st = static_cast<listener_state&>(static_cast<fd_state&>(*r));
    st.waiters_.clear();
    st.close_queued();
    st.ring_gone();
  }

  member_request<listener_state, &listener_state::on_accept> accept_;
  wait_list waiters_;
  int error_ = 0;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  std::vector<int> fds_;
};

}  // namespace detail
RINGNET_END_NAMESPACE
