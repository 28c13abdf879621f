// Operation descriptors for sockets (see operation.hpp) and the per-fd bookkeeping that lets
// close() and shutdown_write() wait for what is still in flight.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/error.hpp>
#include <ringnet/operation.hpp>

#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <optional>

RINGNET_BEGIN_NAMESPACE
namespace detail {

inline int set_int_option(int fd, int level, int name, int value) noexcept {
  return ::setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : -errno;
}

inline result<int> syscall_result(int r) noexcept {
  if (r < 0) return errno_code(errno);
  return r;
}

// What is in flight on one socket. close() waits until `ops` is zero, shutdown_write() until
// `sends` is; the waiter is posted (not resumed inline) from the completing op's CQE.
struct fd_state {
  int fd = -1;
  std::uint32_t ops = 0;
  std::uint32_t sends = 0;
  ring* owner = nullptr;
  std::coroutine_handle<> idle_waiter;
  bool waiting_for_sends = false;
  bool write_shut = false;  // our FIN is out
  bool closing = false;     // close() is cancelling what is in flight
  bool read_eof = false;    // a recv returned 0: the peer's FIN arrived

  void op_done(bool was_send) noexcept {
    --ops;
    if (was_send) --sends;
    if (idle_waiter && (waiting_for_sends ? sends : ops) == 0)
      owner->post(std::exchange(idle_waiter, {}));
  }

  // co_await st.idle(sends_only): until nothing (or no send) is in flight on the fd.
  auto idle(bool sends_only) noexcept {
    struct awaiter {
      fd_state& st;
      bool sends_only;
      bool await_ready() const noexcept { return (sends_only ? st.sends : st.ops) == 0; }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        st.waiting_for_sends = sends_only;
        st.idle_waiter = h;
      }
      void await_resume() const noexcept {}
    };
    return awaiter{*this, sends_only};
  }
};

// Base of descriptors that count themselves in their socket's fd_state. While close() waits for
// the socket to go idle, new operations fail at once instead of keeping it busy.
template <bool IsSend>
struct tracked {
  fd_state* st;
  std::optional<int> try_inline() const noexcept {
    if (st->closing) return -ECANCELED;
    return std::nullopt;
  }
  void submitted() const noexcept {
    ++st->ops;
    if constexpr (IsSend) ++st->sends;
  }
  void completed() const noexcept { st->op_done(IsSend); }
};

// Without cancel-by-fd, close() wakes pending ops with shutdown(SHUT_RDWR): the EOF or EPIPE
// they then see is reported as the cancellation it is.
inline int closing_result(const fd_state* st, int res) noexcept {
  return st->closing && res <= 0 ? -ECANCELED : res;
}

struct recv_op : tracked<false> {
  void* data;
  std::size_t len;
  int flags;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_recv(sqe, st->fd, data, len, flags);
  }
  result<std::size_t> complete(int res, std::uint32_t) const noexcept {
    if (res == 0 && len > 0 && !st->closing) st->read_eof = true;
    return size_result(closing_result(st, res));
  }
};

struct send_op : tracked<true> {
  const void* data;
  std::size_t len;
  int flags;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_send(sqe, st->fd, data, len, flags | MSG_NOSIGNAL);
  }
  result<std::size_t> complete(int res, std::uint32_t) const noexcept {
    return size_result(closing_result(st, res));
  }
};

// IORING_OP_SHUTDOWN always runs in an io-wq worker: no linked timeout (URING_TCP_FACTS #6).
// Where the probe says no, or when the direct call was chosen, shutdown(2) completes inline.
struct shutdown_op : tracked<false> {
  int how;
  bool direct;
  static constexpr bool linkable_timeout = false;
  std::optional<int> try_inline() noexcept {
    if (!direct) return std::nullopt;
    return ::shutdown(st->fd, how) == 0 ? 0 : -errno;
  }
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_shutdown(sqe, st->fd, how); }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

struct close_op {
  int fd;
  bool direct;
  static constexpr bool linkable_timeout = false;
  std::optional<int> try_inline() noexcept {
    if (!direct) return std::nullopt;
    return ::close(fd) == 0 ? 0 : -errno;
  }
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_close(sqe, fd); }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

struct connect_op : tracked<false> {
  const sockaddr* addr;
  socklen_t len;
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_connect(sqe, st->fd, addr, len); }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

// Produces an fd: if the ring shuts down before anyone sees it, close it rather than leak it.
struct fd_producing {
  static void discard(int res) noexcept {
    if (res >= 0) ::close(res);
  }
  static result<int> complete(int res, std::uint32_t) noexcept {
    if (res < 0) return errno_code(-res);
    return res;
  }
};

struct socket_op : fd_producing {
  int domain;
  bool direct;
  std::optional<int> try_inline() noexcept {
    if (!direct) return std::nullopt;
    const int fd = ::socket(domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    return fd >= 0 ? fd : -errno;
  }
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_socket(sqe, domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP, 0);
  }
};

struct accept_op : fd_producing {
  int listen_fd;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_accept(sqe, listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
};

}  // namespace detail
RINGNET_END_NAMESPACE
