// stream: the move-only owner of one connected TCP socket, and connect().
//
// Every operation takes an optional stop token and, where it could wait forever, a timeout
// (a linked IORING_OP_LINK_TIMEOUT, reported as std::errc::timed_out). Sends always carry
// MSG_NOSIGNAL: a peer that went away is an error code, never SIGPIPE.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/buffer_ring.hpp>
#include <ringnet/config.hpp>
#include <ringnet/detail/multishot_recv.hpp>
#include <ringnet/detail/socket_ops.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <utility>

RINGNET_BEGIN_NAMESPACE

/// Bytes moved by a composed operation, and the error that stopped it (none if complete).
struct transfer_result {
  std::size_t bytes = 0;
  std::error_code error;
  explicit operator bool() const noexcept { return !error; }
};

/// How shutdown_write() sends its FIN. `syscall` (shutdown(2), completes inline, never blocks for
/// TCP) measured cheaper here than IORING_OP_SHUTDOWN, which always runs in an io-wq worker.
enum class shutdown_method { syscall, io_uring };

/// How close() releases the descriptor. `syscall` (close(2), which never blocks: ringnet never
/// sets SO_LINGER > 0) measured cheaper here than IORING_OP_CLOSE: 0.96× against 1.13× the
/// hand-written liburing server's CPU per churn lifecycle, in one alternating run.
enum class close_method { syscall, io_uring };

struct connect_options {
  /// The kernel alone would retry SYNs for ~127 s against a host that drops them.
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  bool nodelay = false;
  /// Source address to bind before connecting (port 0: IP_BIND_ADDRESS_NO_PORT picks it at
  /// connect time, so many connections can share one source address).
  std::optional<endpoint> source{};
};

class stream;
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<result<stream>> connect(io_context& ctx, endpoint to, connect_options options = {},
                                           Token token = {});
namespace detail {
// For composed operations built on their own descriptors (the relay's splices): they must count
// in the stream's in-flight bookkeeping like recv and send do.
fd_state& state_of(stream& s) noexcept;
}  // namespace detail

class stream {
 public:
  /// A stream with no socket and no context: assign one before any operation (receive() on it
  /// fails with bad_file_descriptor).
  stream() noexcept = default;
  /// Adopts a connected socket.
  stream(io_context& ctx, int fd) noexcept : ctx_(&ctx) {
    st_.fd = fd;
    st_.owner = &detail::ring_of(ctx);
  }
  /// Moving is allowed only while no operation is in flight on the stream (buffers received but
  /// not taken yet go back to their ring).
  stream(stream&& o) noexcept : ctx_(o.ctx_), st_(std::exchange(o.st_, {})) { o.rx_.release(); }
  stream& operator=(stream&& o) noexcept {
    if (this != &o) {
      close_now();
      ctx_ = o.ctx_;
      st_ = std::exchange(o.st_, {});
      o.rx_.release();
    }
    return *this;
  }
  /// A still-open stream is closed with close(2): it never blocks (ringnet never sets
  /// SO_LINGER > 0); the kernel sends FIN, or RST if unread bytes are queued. Prefer
  /// co_await close() / graceful_close() / abort(), which say what happened.
  ~stream() { close_now(); }

  [[nodiscard]] bool is_open() const noexcept { return st_.fd >= 0; }
  [[nodiscard]] int native_handle() const noexcept { return st_.fd; }
  [[nodiscard]] io_context& context() const noexcept { return *ctx_; }
  /// Gives up ownership of the descriptor.
  int release() noexcept { return std::exchange(st_.fd, -1); }

  /// Receives up to buf.size() bytes; 0 means the peer sent FIN.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto recv(mutable_buffer buf, Token token = {},
                          std::chrono::nanoseconds timeout = no_timeout) {
    return operation<detail::recv_op, Token>(*ctx_, detail::recv_op{{&st_}, buf.data(), buf.size(), 0},
                                             std::move(token), timeout);
  }

  /// Receives into a buffer the kernel picks from `bufs`: the first call arms a multishot recv
  /// that stays armed across calls (one SQE and one poll for a whole stream of reads, where
  /// recv() costs one of each per read), data arriving meanwhile is queued in order. An empty
  /// received_buffer is the peer's FIN. When the ring runs dry the recv is re-armed as buffers
  /// return. A stop cancels the recv; a later call re-arms it. Do not mix with recv() while
  /// receiving (drain() and close() take care of it).
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto receive(buffer_ring& bufs, Token token = {}) {
    class awaiter {
     public:
      awaiter(stream& s, detail::provided_buffers& b, Token t) noexcept
          : s_(&s), b_(&b), token_(std::move(t)),
            cancel_(b.owner(), s.rx_.user_data(), [](std::uint64_t rx) noexcept {
              reinterpret_cast<detail::multishot_recv*>(rx)->cancel_wait();
            }) {}
      awaiter(awaiter&& o) noexcept : awaiter(*o.s_, *o.b_, std::move(o.token_)) {}  // before start
      bool await_ready() noexcept {
        if (!s_->is_open()) {
          terminal_ = -EBADF;
          return true;
        }
        if (s_->rx_.ready() && s_->rx_.buffers() == b_) return true;
        if (token_.stop_requested()) {
          terminal_ = -ECANCELED;
          return true;
        }
        return false;
      }
      void await_suspend(std::coroutine_handle<> h) noexcept {
        s_->rx_.wait(h);
        s_->rx_.arm(s_->st_, *b_, s_->ctx_->supports(IORING_OP_SEND_ZC));  // multishot: 6.0
        stop_.arm(token_, cancel_);
      }
      result<received_buffer> await_resume() noexcept {
        stop_.disarm();
        cancel_.settle();
        if (terminal_ == detail::multishot_recv::no_result) {
          int t;
          const std::uint16_t bid = s_->rx_.pop(t);
          if (bid != detail::provided_buffers::none) return received_buffer(b_, bid);
          terminal_ = t;
        }
        if (terminal_ == 0) return received_buffer();
        return errno_code(-terminal_);
      }

     private:
      stream* s_;
      detail::provided_buffers* b_;
      [[no_unique_address]] Token token_;
      detail::canceller cancel_;
      detail::stop_registration<Token> stop_;
      int terminal_ = detail::multishot_recv::no_result;
    };
    return awaiter(*this, *bufs.impl_, std::move(token));
  }

  /// Whether receive() is in progress: armed, waiting for buffers, or holding received data.
  [[nodiscard]] bool receiving() const noexcept { return rx_.receiving(); }
  /// Ends receive(): cancels the armed recv and waits until the kernel is done with it. Data
  /// already received stays queued for try_receive().
  [[nodiscard]] task<void> stop_receiving() {
    if (rx_.armed()) {
      st_.owner->cancel(rx_.user_data());
      struct disarmed {
        detail::multishot_recv& rx;
        bool await_ready() const noexcept { return !rx.armed(); }
        void await_suspend(std::coroutine_handle<> h) const noexcept { rx.wait_disarmed(h); }
        void await_resume() const noexcept {}
      };
      co_await disarmed{rx_};
    }
  }
  /// The next buffer receive() already queued, without waiting.
  [[nodiscard]] std::optional<received_buffer> try_receive() noexcept {
    int t;
    const std::uint16_t bid = rx_.pop(t);
    if (bid == detail::provided_buffers::none) return std::nullopt;
    return received_buffer(rx_.buffers(), bid);
  }

  /// Sends some of buf (a short count is not an error), with MSG_NOSIGNAL.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto send(const_buffer buf, Token token = {},
                          std::chrono::nanoseconds timeout = no_timeout) {
    return operation<detail::send_op, Token>(*ctx_, detail::send_op{{&st_}, buf.data(), buf.size(), 0},
                                             std::move(token), timeout);
  }

  /// Sends all of buf, looping over short sends. `timeout` bounds the whole call. On error,
  /// cancellation or timeout the result says how many bytes went out before.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] task<transfer_result> send_all(const_buffer buf, Token token = {},
                                               std::chrono::nanoseconds timeout = no_timeout) {
    const auto deadline = timeout == no_timeout ? std::chrono::steady_clock::time_point::max()
                                                : std::chrono::steady_clock::now() + timeout;
    transfer_result out;
    while (out.bytes < buf.size()) {
      const auto left = timeout == no_timeout ? no_timeout : remaining(deadline);
      auto r = co_await operation<detail::send_op, Token>(
          *ctx_, detail::send_op{{&st_}, buf.data() + out.bytes, buf.size() - out.bytes, MSG_WAITALL},
          token, left);
      if (!r) {
        out.error = r.error();
        break;
      }
      out.bytes += *r;
    }
    co_return out;
  }

  /// Half-close: sends FIN, reads go on. Waits for sends still in flight first (a SHUT_WR under a
  /// pending send would fail that send).
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] task<result<void>> shutdown_write(Token token = {},
                                                  shutdown_method how = shutdown_method::syscall) {
    co_await st_.idle(true);
    const bool direct = how == shutdown_method::syscall || !ctx_->supports(IORING_OP_SHUTDOWN);
    auto r = co_await operation<detail::shutdown_op, Token>(
        *ctx_, detail::shutdown_op{{&st_}, SHUT_WR, direct}, std::move(token));
    if (r) st_.write_shut = true;
    co_return r;
  }
  /// Whether shutdown_write() has sent our FIN.
  [[nodiscard]] bool write_shut() const noexcept { return st_.write_shut; }
  /// Whether a recv returned 0 (the peer's FIN arrived).
  [[nodiscard]] bool read_eof() const noexcept { return st_.read_eof; }

  /// Cancels every operation in flight on the stream; each completes with operation_canceled
  /// (without cancel-by-fd, kernels < 5.19, shutdown(SHUT_RDWR) wakes them instead, ending the
  /// connection). Later operations are not affected.
  void cancel() noexcept {
    if (st_.fd < 0 || st_.ops == 0) return;
    if (ctx_->supports(IORING_OP_SOCKET))  // cancel-by-fd came with the same kernel (5.19)
      st_.owner->cancel_fd(st_.fd);
    else
      ::shutdown(st_.fd, SHUT_RDWR);
  }

  /// Cancels every operation still in flight on the socket, waits for their completions (so no
  /// recv can land on a reused descriptor number), then closes it (close(2), or IORING_OP_CLOSE).
  /// FIN is sent, or RST if unread bytes are queued (see unread_bytes()).
  [[nodiscard]] task<result<void>> close(close_method how = close_method::syscall) {
    if (st_.fd < 0) co_return result<void>{};
    if (st_.ops > 0) {
      st_.closing = true;
      cancel();
      co_await st_.idle(false);
    }
    const int fd = std::exchange(st_.fd, -1);
    st_.closing = false;
    rx_.release();
    const bool direct = how == close_method::syscall || !ctx_->supports(IORING_OP_CLOSE);
    co_return co_await operation<detail::close_op>(*ctx_, detail::close_op{fd, direct});
  }

  /// Abortive close: SO_LINGER {1, 0}, then close(): the peer gets RST at once and no TIME_WAIT
  /// is left. Explicit, never a side effect of anything else.
  [[nodiscard]] task<result<void>> abort(close_method how = close_method::syscall) {
    if (st_.fd >= 0) {
      const linger lg{1, 0};
      ::setsockopt(st_.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    co_return co_await close(how);
  }

  result<void> set_nodelay(bool on = true) noexcept {
    return detail::void_result(detail::set_int_option(st_.fd, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0));
  }
  /// Bytes received but not read yet. Non-zero means close() now would send RST.
  [[nodiscard]] result<std::size_t> unread_bytes() const noexcept {
    int n = 0;
    if (::ioctl(st_.fd, SIOCINQ, &n) < 0) return errno_code(errno);
    return static_cast<std::size_t>(n);
  }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept { return name_of(::getsockname); }
  [[nodiscard]] result<endpoint> remote_endpoint() const noexcept { return name_of(::getpeername); }

 private:
  template <stoppable_token Token>
  friend task<result<stream>> connect(io_context&, endpoint, connect_options, Token);
  friend detail::fd_state& detail::state_of(stream&) noexcept;

  static std::chrono::nanoseconds remaining(std::chrono::steady_clock::time_point deadline) noexcept {
    const auto left = deadline - std::chrono::steady_clock::now();
    return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                            : std::chrono::nanoseconds::zero();
  }

  template <class F>
  result<endpoint> name_of(F getname) const noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getname(st_.fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return errno_code(errno);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  }

  void close_now() noexcept {
    if (st_.fd >= 0) ::close(std::exchange(st_.fd, -1));
    rx_.release();
  }

  io_context* ctx_ = nullptr;
  detail::fd_state st_;
  detail::multishot_recv rx_;
};

namespace detail {
inline fd_state& state_of(stream& s) noexcept { return s.st_; }
}  // namespace detail

/// Opens a socket (IORING_OP_SOCKET where supported) and connects it, bounded by
/// options.timeout and `token`. Errors: connection_refused, timed_out, operation_canceled, ...
/// A failed, timed-out or cancelled attempt closes its socket (it would linger in SYN-SENT);
/// a retry gets a fresh one.
template <stoppable_token Token>
task<result<stream>> connect(io_context& ctx, endpoint to, connect_options options, Token token) {
  if (to.family() != AF_INET && to.family() != AF_INET6)
    co_return std::make_error_code(std::errc::address_family_not_supported);
  auto fd = co_await operation<detail::socket_op, Token>(
      ctx, detail::socket_op{{}, to.family(), !ctx.supports(IORING_OP_SOCKET)}, token);
  if (!fd) co_return fd.error();
  stream s(ctx, *fd);
  if (options.nodelay) {
    if (auto r = s.set_nodelay(); !r) co_return r.error();
  }
  if (options.source) {
    if (options.source->port() == 0)
      detail::set_int_option(*fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
    if (::bind(*fd, options.source->data(), options.source->size()) < 0) co_return errno_code(errno);
  }
  auto r = co_await operation<detail::connect_op, Token>(
      ctx, detail::connect_op{{&s.st_}, to.data(), to.size()}, std::move(token), options.timeout);
  if (!r) co_return r.error();
  co_return s;
}

RINGNET_END_NAMESPACE
