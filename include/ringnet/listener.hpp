// listener: a listening TCP socket. SO_REUSEADDR by default (a restarted server re-binds while
// its old connections sit in TIME_WAIT), SO_REUSEPORT on request, single-shot accept() and a
// multishot-backed next() that takes many connections from one SQE.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/detail/socket_ops.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>

#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

RINGNET_BEGIN_NAMESPACE

struct listen_options {
  int backlog = 1024;
  bool reuse_address = true;
  bool reuse_port = false;
  bool v6_only = true;  // for [::] listeners: IPv6 only, no IPv4-mapped addresses
};

namespace detail {

// Accepted descriptors from one multishot ACCEPT (or a re-armed single shot where the kernel has
// no multishot), queued until next() takes them. Past `high_water` queued connections the
// multishot is cancelled, so further ones wait in the kernel's backlog instead of in memory (the
// queue still grows for the few that complete before the cancel lands). Heap
// allocated once per listener: a listener closed while the SQE is armed orphans it, and the
// final CQE frees it.
class accept_queue final : public completion {
 public:
  static constexpr std::size_t high_water = 256;

  struct waiter {
    void (*wake)(waiter*, int res) noexcept;
  };

  accept_queue(ring& r, int listen_fd, bool multishot)
      : completion{&accept_queue::on_cqe}, ring_(&r), fd_(listen_fd), multishot_(multishot),
        fds_(high_water * 2) {}
  accept_queue(const accept_queue&) = delete;
  accept_queue& operator=(const accept_queue&) = delete;

  [[nodiscard]] std::uint64_t user_data() noexcept {
    return reinterpret_cast<std::uint64_t>(static_cast<completion*>(this));
  }
  [[nodiscard]] bool ready() const noexcept { return count_ > 0 || error_ != 0; }
  // An accepted fd, or -errno once for an error that ended the multishot.
  int pop() noexcept {
    if (count_ == 0) return std::exchange(error_, 0);
    const int fd = fds_[head_];
    head_ = (head_ + 1) % fds_.size();
    --count_;
    return fd;
  }
  void wait(waiter* w) noexcept {
    waiter_ = w;
    if (!armed_) arm();
  }
  // The listener is gone: close what is queued; free now, or on the final CQE.
  void orphan() noexcept {
    orphaned_ = true;
    close_queued();
    if (armed_)
      ring_->cancel(user_data());
    else
      delete this;
  }

 private:
  void arm() noexcept {
    io_uring_sqe* sqe = ring_->get_sqes(1);
    if (multishot_)
      io_uring_prep_multishot_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
    else
      io_uring_prep_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, user_data());
    armed_ = true;
    ring_->op_started();
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
    while (count_ > 0) ::close(pop());
    error_ = 0;
  }

  static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* q = static_cast<accept_queue*>(c);
    const bool final = !(flags & IORING_CQE_F_MORE);
    if (final) {
      q->armed_ = false;
      q->ring_->op_finished();
    }
    if (res >= 0) {
      if (q->orphaned_ || q->ring_->draining()) {
        ::close(res);
      } else {
        try {
          q->push(res);
        } catch (...) {  // out of memory: refuse the connection rather than lose track of it
          ::close(res);
        }
        if (q->count_ >= high_water && q->armed_ && !q->throttled_) {
          q->throttled_ = true;  // backpressure: let the kernel backlog hold the rest
          q->ring_->cancel(q->user_data());
        }
      }
    } else if (final && !(res == -ECANCELED && (q->throttled_ || q->orphaned_))) {
      q->error_ = res;  // EMFILE, ENFILE, ECANCELED (a waiter's stop), EINVAL, ...
    }
    if (final) q->throttled_ = false;
    if (q->orphaned_) {
      if (!q->armed_) {
        waiter* w = std::exchange(q->waiter_, nullptr);
        delete q;
        if (w) w->wake(w, -ECANCELED);
      }
      return;
    }
    if (!q->waiter_ || q->ring_->draining()) return;
    if (q->ready()) {
      waiter* w = std::exchange(q->waiter_, nullptr);
      w->wake(w, q->pop());
    } else if (!q->armed_) {
      q->arm();  // ended without a connection or an error (e.g. CQ overflow): re-arm
    }
  }

  ring* ring_;
  int fd_;
  bool multishot_;
  bool armed_ = false;
  bool throttled_ = false;
  bool orphaned_ = false;
  int error_ = 0;
  waiter* waiter_ = nullptr;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  std::vector<int> fds_;
};

// Single-shot accept producing a stream.
struct accept_stream_op : fd_producing {
  int listen_fd;
  io_context* ctx;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_accept(sqe, listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
  result<stream> complete(int res, std::uint32_t) const noexcept {
    if (res < 0) return errno_code(-res);
    return stream(*ctx, res);
  }
};

}  // namespace detail

class listener {
 public:
  listener() noexcept = default;
  listener(listener&& o) noexcept
      : ctx_(o.ctx_), fd_(std::exchange(o.fd_, -1)), queue_(std::exchange(o.queue_, nullptr)) {}
  listener& operator=(listener&& o) noexcept {
    if (this != &o) {
      close();
      ctx_ = o.ctx_;
      fd_ = std::exchange(o.fd_, -1);
      queue_ = std::exchange(o.queue_, nullptr);
    }
    return *this;
  }
  ~listener() { close(); }

  /// socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen. Port 0 picks a free port; see
  /// local_endpoint().
  static result<listener> bind(io_context& ctx, const endpoint& at, listen_options opts = {}) {
    if (at.family() != AF_INET && at.family() != AF_INET6)
      return std::make_error_code(std::errc::address_family_not_supported);
    const int fd = ::socket(at.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return errno_code(errno);
    listener l;
    l.ctx_ = &ctx;
    l.fd_ = fd;
    int err = 0;
    if (opts.reuse_address) err = detail::set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (!err && opts.reuse_port) err = detail::set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (!err && at.is_v6()) err = detail::set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, opts.v6_only);
    if (!err && ::bind(fd, at.data(), at.size()) < 0) err = -errno;
    if (!err && ::listen(fd, opts.backlog) < 0) err = -errno;
    if (err) return errno_code(-err);
    return l;
  }

  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  [[nodiscard]] int native_handle() const noexcept { return fd_; }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return errno_code(errno);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  }

  /// One connection, single-shot IORING_OP_ACCEPT. A connection accepted after a stop request
  /// raced it is still returned (never leaked).
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto accept(Token token = {}, std::chrono::nanoseconds timeout = no_timeout) {
    return operation<detail::accept_stream_op, Token>(
        *ctx_, detail::accept_stream_op{{}, fd_, ctx_}, std::move(token), timeout);
  }

  /// The next connection from the listener's multishot accept (armed on first use, re-armed when
  /// the kernel ends it). An error that ended the multishot (EMFILE at RLIMIT_NOFILE, ENFILE, ...)
  /// is returned once; the following call re-arms. A stop cancels the multishot.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto next(Token token = {}) {
    class awaiter : detail::accept_queue::waiter {
     public:
      awaiter(listener& l, Token t) noexcept
          : waiter{&awaiter::on_wake},
            l_(&l),
            token_(std::move(t)),
            cancel_(detail::ring_of(*l.ctx_), l.queue_ ? l.queue_->user_data() : 0) {}
      awaiter(awaiter&& o) noexcept : awaiter(*o.l_, std::move(o.token_)) {}  // before start
      bool await_ready() noexcept {
        if (!l_->is_open()) {
          res_ = -EBADF;
          return true;
        }
        if (l_->queue_->ready()) {
          res_ = l_->queue_->pop();
          return true;
        }
        if (token_.stop_requested()) {
          res_ = -ECANCELED;
          return true;
        }
        return false;
      }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        h_ = h;
        l_->queue_->wait(this);
        stop_.arm(token_, cancel_);
      }
      result<stream> await_resume() const noexcept {
        if (res_ < 0) return errno_code(-res_);
        return stream(*l_->ctx_, res_);
      }

     private:
      static void on_wake(waiter* w, int res) noexcept {
        auto* self = static_cast<awaiter*>(w);
        self->stop_.disarm();
        self->cancel_.settle();
        self->res_ = res;
        self->h_.resume();
      }
      listener* l_;
      [[no_unique_address]] Token token_;
      detail::canceller cancel_;
      detail::stop_registration<Token> stop_;
      std::coroutine_handle<> h_;
      int res_ = 0;
    };
    if (is_open() && !queue_)
      queue_ = new detail::accept_queue(detail::ring_of(*ctx_), fd_, ctx_->supports(IORING_OP_SOCKET));
    return awaiter(*this, std::move(token));
  }

  /// Stops accepting: cancels the multishot (a pending next() completes with
  /// operation_canceled), closes connections accepted but not taken, closes the socket.
  void close() noexcept {
    if (queue_) std::exchange(queue_, nullptr)->orphan();
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
  detail::accept_queue* queue_ = nullptr;
};

RINGNET_END_NAMESPACE
