// listener: a listening TCP socket. SO_REUSEADDR by default (a restarted server re-binds while
// its old connections sit in TIME_WAIT), SO_REUSEPORT on request, single-shot accept() and a
// multishot-backed next() that takes many connections from one SQE.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/listener_state.hpp>
#include <ringnet/detail/ring.hpp>
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

#include <chrono>
#include <cstdint>
#include <optional>
#include <utility>

RINGNET_BEGIN_NAMESPACE

struct listen_options {
  int backlog = 1024;
  bool reuse_address = true;
  bool reuse_port = false;
  bool v6_only = true;  // for [::] listeners: IPv6 only, no IPv4-mapped addresses
};

namespace detail {

// Single-shot accept producing a stream, counted on the listener while in flight.
struct accept_stream_op : fd_producing {
  listener_state* st;
  io_context* ctx;
  std::optional<int> try_inline() const noexcept {
    if (st->closed()) return -EBADF;
    return std::nullopt;
  }
  void submitted(request& r) const noexcept { st->track(r); }
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_accept(sqe, st->fd(), nullptr, nullptr, SOCK_CLOEXEC);
  }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    st->untrack(r);
    return res;
  }
  result<stream> complete(int res, std::uint32_t) const noexcept { return adopt(ctx, res); }

  // A stream for an accepted descriptor; out of memory for its state, the connection is refused.
  static result<stream> adopt(io_context* ctx, int fd) noexcept {
    if (fd < 0) return errno_code(-fd);
    try {
      return stream(*ctx, fd);
    } catch (...) {
      ::close(fd);
      return errno_code(ENOMEM);
    }
  }
};

}  // namespace detail

class listener {
 public:
  listener() noexcept = default;
  listener(listener&& o) noexcept : st_(std::exchange(o.st_, nullptr)) {}
  listener& operator=(listener&& o) noexcept {
    if (this != &o) {
      drop();
      st_ = std::exchange(o.st_, nullptr);
    }
    return *this;
  }
  /// Closes the listener (see close()); safe with next() or accept() pending, which complete
  /// with operation_canceled.
  ~listener() { drop(); }

  /// socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen. Port 0 picks a free port; see
  /// local_endpoint().
  static result<listener> bind(io_context& ctx, const endpoint& at, listen_options opts = {}) {
    if (at.family() != AF_INET && at.family() != AF_INET6)
      return std::make_error_code(std::errc::address_family_not_supported);
    const int fd = ::socket(at.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return errno_code(errno);
    int err = 0;
    if (opts.reuse_address) err = detail::set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (!err && opts.reuse_port) err = detail::set_int_option(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (!err && at.is_v6()) err = detail::set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, opts.v6_only);
    if (!err && ::bind(fd, at.data(), at.size()) < 0) err = -errno;
    if (!err && ::listen(fd, opts.backlog) < 0) err = -errno;
    if (err) {
      ::close(fd);
      return errno_code(-err);
    }
    listener l;
    l.st_ = detail::listener_state::open(detail::ring_of(ctx), ctx, fd);
    return l;
  }

  [[nodiscard]] bool is_open() const noexcept { return st_ && !st_->closed(); }
  [[nodiscard]] int native_handle() const noexcept { return is_open() ? st_->fd() : -1; }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(native_handle(), reinterpret_cast<sockaddr*>(&ss), &len) < 0) return errno_code(errno);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  }

  /// One connection, single-shot IORING_OP_ACCEPT. A connection accepted after a stop request
  /// raced it is still returned (never leaked).
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto accept(Token token = {}, std::chrono::nanoseconds timeout = no_timeout) {
    return operation<detail::accept_stream_op, Token>(
        ring(), detail::accept_stream_op{{}, st_, st_ ? &st_->context() : nullptr}, std::move(token),
        timeout);
  }

  /// The next connection from the listener's multishot accept (armed on first use, re-armed when
  /// the kernel ends it). An error that ended the multishot (EMFILE at RLIMIT_NOFILE, ENFILE, ...)
  /// is returned once; the following call re-arms. A stop ends the wait at once; connections
  /// accepted meanwhile stay queued for the next call.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto next(Token token = {}) {
    return detail::waiting<accept_source, Token>(accept_source{st_}, std::move(token));
  }

  /// Stops accepting: cancels the accept (a pending next() or accept() completes with
  /// operation_canceled), closes connections accepted but not taken, and closes the socket once
  /// the kernel let go of the accept (the next loop turn when one was armed: until then the port
  /// still listens, and binding it again fails with EADDRINUSE unless SO_REUSEPORT is set).
  void close() noexcept {
    if (st_) st_->close();
  }

 private:
  struct accept_source {
    detail::listener_state* st;
    detail::ring* owner() const noexcept { return st ? st->owner() : nullptr; }
    int poll() const noexcept { return st->poll(); }
    void enqueue(detail::waiter& w) const noexcept { st->enqueue(w); }
    void dequeue(detail::waiter& w) const noexcept { st->dequeue(w); }
    result<stream> complete(int res) const noexcept {
      if (res == detail::waiter::ready) return detail::accept_stream_op::adopt(&st->context(), st->take());
      return errno_code(-res);
    }
  };

  [[nodiscard]] detail::ring* ring() const noexcept { return st_ ? st_->owner() : nullptr; }
  void drop() noexcept {
    if (detail::listener_state* st = std::exchange(st_, nullptr)) detail::listener_state::release(st);
  }

  detail::listener_state* st_ = nullptr;
};

RINGNET_END_NAMESPACE
