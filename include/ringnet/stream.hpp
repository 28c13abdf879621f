// stream: the move-only owner of one connected TCP socket, and connect().
//
// Every operation takes an optional stop token and, where it could wait forever, a timeout
// (a linked IORING_OP_LINK_TIMEOUT, reported as std::errc::timed_out). Sends always carry
// MSG_NOSIGNAL: a peer that went away is an error code, never SIGPIPE.
//
// The socket's state lives apart from the stream object (detail/socket_state.hpp), so moving or
// destroying a stream is safe with anything in flight: moved, the operations go on and report
// to whoever awaits them; destroyed, they are cancelled (operation_canceled), composed
// operations (send_all, close, graceful_close, relay, ...) end early, and the socket is closed
// with close(2) once the kernel let go of every request on it.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/buffer_ring.hpp>
#include <ringnet/config.hpp>
#include <ringnet/detail/socket_state.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
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

inline int set_int_option(int fd, int level, int name, int value) noexcept {
  return ::setsockopt(fd, level, name, &value, sizeof value) == 0 ? 0 : -errno;
}
inline unsigned io_length(std::size_t n) noexcept {
  return static_cast<unsigned>(std::min(n, max_io_size));
}

// Base of the descriptors of requests on a connected socket: refused once the socket is closing,
// closed or its connection over; counted on it while in flight; results interpreted by it.
struct on_socket {
  socket_state* st;
  std::optional<int> try_inline() const noexcept { return st->refuse(); }
  void submitted(request& r) const noexcept { st->track(r); }
};

struct recv_op : on_socket {
  void* data;
  std::size_t len;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_recv(sqe, st->fd(), data, io_length(len), 0);
  }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    res = st->settle_read(res, len);
    st->untrack(r);
    return res;
  }
  static result<std::size_t> complete(int res, std::uint32_t) noexcept { return size_result(res); }
};

// Counted as a send (shutdown_write() waits for it): a send, or a splice into the socket. Refused
// once the connection is over.
struct sending : on_socket {
  std::optional<int> try_inline() const noexcept {
    if (auto r = st->refuse_write()) return r;
    if (st->write_shut()) return -EPIPE;  // what the kernel would answer
    return std::nullopt;
  }
  void submitted(request& r) const noexcept {
    r.is_send = true;
    st->track(r);
    st->send_started();
  }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    res = st->settle_write(res, r.cut_off);
    st->send_finished();
    st->untrack(r);
    return res;
  }
};

struct send_op : sending {
  const void* data;
  std::size_t len;
  int flags;
  bool may_inline = true;  // send(2) at once where the ring allows (ring::may_send_inline())
  // After try_inline() found nothing refusing the send.
  std::optional<int> try_syscall() const noexcept {
    return may_inline ? st->send_inline(data, len) : std::nullopt;
  }
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_send(sqe, st->fd(), data, io_length(len), flags | MSG_NOSIGNAL);
  }
  std::uint64_t cancel_report() const noexcept { return st->send_cancel_report(); }
  static result<std::size_t> complete(int res, std::uint32_t) noexcept { return size_result(res); }
};

// IORING_OP_SHUTDOWN always runs in an io-wq worker, where a linked timeout never fires. Where
// the probe says no, or when the direct call was chosen, shutdown(2) completes inline.
struct shutdown_op : on_socket {
  bool direct;
  static constexpr bool linkable_timeout = false;
  std::optional<int> try_inline() const noexcept {
    if (auto r = st->refuse_write()) return r;
    if (!direct) return std::nullopt;
    return st->settle_write(::shutdown(st->fd(), SHUT_WR) == 0 ? 0 : -errno);
  }
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_shutdown(sqe, st->fd(), SHUT_WR); }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    res = st->settle_write(res);
    st->untrack(r);
    return res;
  }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

struct connect_op : on_socket {
  const sockaddr* addr;
  socklen_t len;
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_connect(sqe, st->fd(), addr, len); }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    st->untrack(r);
    return res;
  }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

// Until the socket has something to read: data, the peer's FIN, or an error.
struct readable_op : on_socket {
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_poll_add(sqe, st->fd(), POLLIN | POLLRDHUP);
  }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    if (res < 0) res = st->settle_read(res, 1);
    st->untrack(r);
    return res < 0 ? res : 0;
  }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res); }
};

// IORING_OP_SPLICE between the socket and a pipe: socket → pipe is a read of the socket, pipe →
// socket a send. The kernel runs SPLICE in an io-wq worker that blocks until data or room is
// there, where a linked timeout never fires: none is allowed; a stop token ends it (cancelled,
// it returns -EINTR or -ERESTARTSYS).
struct splice_to_pipe_op : on_socket {
  int pipe_fd;
  unsigned len;
  static constexpr bool linkable_timeout = false;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_splice(sqe, st->fd(), -1, pipe_fd, -1, len, 0);
  }
  int settle(request& r, int res, std::uint32_t) const noexcept {
    res = st->settle_read(res, len);
    st->untrack(r);
    return res;
  }
  static result<std::size_t> complete(int res, std::uint32_t) noexcept { return size_result(res); }
};
// splice(2) has no MSG_NOSIGNAL: into a socket the peer reset, once its error was taken (by a
// read, or SO_ERROR), the send path fails with EPIPE and raises SIGPIPE on the thread running the
// splice. That thread is the io-wq worker, which blocks every signal but SIGKILL and SIGSTOP, so
// the SIGPIPE stays pending on the worker alone (its SigPnd; neither the process's ShdPnd nor
// the ring's thread) and never runs the process's disposition, SIG_DFL included. Queuing it
// still wakes the process's signalfds (see signal_set).
struct splice_from_pipe_op : sending {
  int pipe_fd;
  unsigned len;
  static constexpr bool linkable_timeout = false;
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_splice(sqe, pipe_fd, -1, st->fd(), -1, len, 0);
  }
  static result<std::size_t> complete(int res, std::uint32_t) noexcept { return size_result(res); }
};

struct close_op {
  int fd;
  bool direct;
  static constexpr bool linkable_timeout = false;
  std::optional<int> try_inline() const noexcept {
    if (!direct) return std::nullopt;
    return ::close(fd) == 0 ? 0 : -errno;
  }
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_close(sqe, fd); }
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
  std::optional<int> try_inline() const noexcept {
    if (!direct) return std::nullopt;
    const int fd = ::socket(domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    return fd >= 0 ? fd : -errno;
  }
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_socket(sqe, domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP, 0);
  }
};

class pinned_socket;

// Every operation on a connected socket, over a state it does not own: stream owns it,
// pinned_socket keeps it alive while a composed operation runs. Composed operations are
// coroutines over a pinned_socket, never over `this`, so the stream may move or go meanwhile.
class socket_ops {
 public:
  [[nodiscard]] bool is_open() const noexcept { return st_ && st_->is_open(); }
  [[nodiscard]] int native_handle() const noexcept { return st_ ? st_->fd() : -1; }
  /// The context the socket belongs to (the stream must have been opened).
  [[nodiscard]] io_context& context() const noexcept {
    RINGNET_ASSERT(st_, "context() of a stream that was never opened");
    return st_->context();
  }

  /// Receives up to buf.size() bytes; 0 means the peer sent FIN. After the connection was reset
  /// (seen on any path), reads get what the kernel still held, then the reset, never a false EOF.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto recv(mutable_buffer buf, Token token = {},
                          std::chrono::nanoseconds timeout = no_timeout) const {
    return operation<recv_op, Token>(ring(), recv_op{{st_}, buf.data(), buf.size()},
                                     std::move(token), timeout);
  }

  /// Receives into a buffer the kernel picks from `bufs`: the first call arms a multishot recv
  /// that stays armed across calls (one SQE and one poll for a whole stream of reads, where
  /// recv() costs one of each per read); data arriving meanwhile is queued in order. An empty
  /// received_buffer is the peer's FIN. When the ring runs dry the recv is re-armed as buffers
  /// return. Any number of coroutines may wait; they are served in order. A stop ends the wait
  /// at once: the recv is cancelled when nobody waits any more, and what was received meanwhile
  /// stays queued for the next call (a lost race leaves no error behind). A stream receives into
  /// one buffer_ring at a time (another one while it holds data: invalid_argument). Do not mix
  /// with recv() while receiving (drain() and close() take care of it). A stream holds at most a
  /// sixteenth of the ring's buffers (at least two) queued and not taken: past that its recv
  /// pauses until the caller takes them, so one connection whose data nobody consumes cannot
  /// starve the others of buffers.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto receive(buffer_ring& bufs, Token token = {}) const {
    return waiting<receive_source, Token>(receive_source{st_, bufs.impl_.get()}, std::move(token));
  }
  /// Whether receive() is in progress: armed, waiting for buffers, or holding received data.
  [[nodiscard]] bool receiving() const noexcept { return st_ && st_->rx_busy(); }
  /// Ends receive(): cancels the armed recv and waits until the kernel is done with it. Data
  /// already received stays queued for try_receive().
  [[nodiscard]] task<void> stop_receiving() const;
  /// The next buffer receive() already queued, without waiting.
  [[nodiscard]] std::optional<received_buffer> try_receive() const noexcept {
    if (!st_) return std::nullopt;
    const std::uint16_t bid = st_->take_received();
    if (bid == provided_buffers::none) return std::nullopt;
    return received_buffer(st_->receiving_into(), bid);
  }

  /// Sends some of buf (a short count is not an error), with MSG_NOSIGNAL.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto send(const_buffer buf, Token token = {},
                          std::chrono::nanoseconds timeout = no_timeout) const {
    return operation<send_op, Token>(ring(), send_op{{{st_}}, buf.data(), buf.size(), 0},
                                     std::move(token), timeout);
  }

  /// Sends all of buf, looping over short sends. `timeout` bounds the whole call. On error,
  /// cancellation or timeout the result says how many bytes went out before.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] task<transfer_result> send_all(const_buffer buf, Token token = {},
                                               std::chrono::nanoseconds timeout = no_timeout) const;

  /// Half-close: sends FIN, reads go on. Waits for sends still in flight first (a SHUT_WR under
  /// a pending send would fail that send); a stop, cancel() or close() during that wait ends it
  /// with operation_canceled and no FIN.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] task<result<void>> shutdown_write(Token token = {},
                                                  shutdown_method how = shutdown_method::syscall) const;
  /// Whether shutdown_write() has sent our FIN.
  [[nodiscard]] bool write_shut() const noexcept { return st_ && st_->write_shut(); }
  /// Whether the peer's FIN arrived (a read returned 0).
  [[nodiscard]] bool read_eof() const noexcept { return st_ && st_->read_eof(); }
  /// Bytes received from the peer so far, on every path (recv, receive, splice); a server's idle
  /// and first-byte deadlines watch them.
  [[nodiscard]] std::uint64_t bytes_received() const noexcept { return st_ ? st_->bytes_received() : 0; }
  /// Bytes the kernel took for sending so far (send, send_all, splice into the socket).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return st_ ? st_->bytes_sent() : 0; }
  /// The error that ended the connection (a reset, a lost route) once any path saw it; none while
  /// it is alive. Every later send reports it, and reads once the kernel has nothing left.
  [[nodiscard]] std::error_code connection_error() const noexcept {
    if (!st_ || st_->connection_error() == 0) return {};
    return errno_code(-st_->connection_error());
  }

  /// Cancels every operation in flight on the stream and ends every wait on it (receive(),
  /// shutdown_write()); each completes with operation_canceled unless it had won the race.
  /// Later operations are not affected.
  void cancel() const noexcept {
    if (st_ && st_->owner()) st_->cancel_everything();
  }

  /// Cancels every operation still in flight on the socket, waits for their completions (so no
  /// request can land on a reused descriptor number), then closes it (close(2), or
  /// IORING_OP_CLOSE). FIN is sent, or RST if unread bytes are queued (see unread_bytes()).
  /// Operations started while it runs complete with operation_canceled, later ones with
  /// bad_file_descriptor.
  [[nodiscard]] task<result<void>> close(close_method how = close_method::syscall) const;

  /// Abortive close: SO_LINGER {1, 0}, then close(): the peer gets RST at once (the connection
  /// is reset before the close, so no reference the kernel still holds delays it) and no
  /// TIME_WAIT is left. Explicit, never a side effect of anything else.
  [[nodiscard]] task<result<void>> abort(close_method how = close_method::syscall) const;

  /// Until there is something to read (data, the peer's FIN or an error), without reading it.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto wait_readable(Token token = {}, std::chrono::nanoseconds timeout = no_timeout) const {
    return operation<readable_op, Token>(ring(), readable_op{{st_}}, std::move(token), timeout);
  }
  /// Moves up to `max_bytes` from the socket into the pipe `pipe_fd` (IORING_OP_SPLICE); 0 is the
  /// peer's FIN. Runs in an io-wq worker: no timeout, a stop token ends it.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto splice_to(int pipe_fd, std::size_t max_bytes, Token token = {}) const {
    return operation<splice_to_pipe_op, Token>(
        ring(), splice_to_pipe_op{{st_}, pipe_fd, io_length(max_bytes)}, std::move(token));
  }
  /// Moves up to `bytes` from the pipe `pipe_fd` into the socket; counted as a send.
  template <stoppable_token Token = never_stop_token>
  [[nodiscard]] auto splice_from(int pipe_fd, std::size_t bytes, Token token = {}) const {
    return operation<splice_from_pipe_op, Token>(
        ring(), splice_from_pipe_op{{{st_}}, pipe_fd, io_length(bytes)}, std::move(token));
  }

  result<void> set_nodelay(bool on = true) const noexcept {
    return void_result(set_int_option(native_handle(), IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0));
  }
  /// Bytes received but not read yet. Non-zero means close() now would send RST.
  [[nodiscard]] result<std::size_t> unread_bytes() const noexcept {
    int n = 0;
    if (::ioctl(native_handle(), SIOCINQ, &n) < 0) return errno_code(errno);
    return static_cast<std::size_t>(n);
  }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept { return name_of(::getsockname); }
  [[nodiscard]] result<endpoint> remote_endpoint() const noexcept { return name_of(::getpeername); }

 protected:
  socket_ops() noexcept = default;
  explicit socket_ops(socket_state* st) noexcept : st_(st) {}
  socket_ops(const socket_ops&) = default;
  socket_ops& operator=(const socket_ops&) = default;
  ~socket_ops() = default;

  [[nodiscard]] detail::ring* ring() const noexcept { return st_ ? st_->owner() : nullptr; }

  socket_state* st_ = nullptr;

 private:
  friend class pinned_socket;

  struct receive_source {
    socket_state* st;
    provided_buffers* bufs;
    detail::ring* owner() const noexcept { return st ? st->owner() : nullptr; }
    int poll() const noexcept { return st->rx_poll(bufs); }
    void enqueue(waiter& w) const noexcept { st->rx_enqueue(w, *bufs); }
    void dequeue(waiter& w) const noexcept { st->rx_dequeue(w); }
    result<received_buffer> complete(int res) const noexcept {
      if (res == waiter::ready) return received_buffer(bufs, st->take_received());
      if (res == 0) return received_buffer();
      return errno_code(-res);
    }
  };

  template <stoppable_token Token>
  static task<transfer_result> send_all_on(pinned_socket self, const_buffer buf, Token token,
                                           std::chrono::nanoseconds timeout);
  template <stoppable_token Token>
  static task<result<void>> shutdown_write_on(pinned_socket self, Token token, shutdown_method how);
  static task<result<void>> close_on(pinned_socket self, close_method how, bool reset = false);
  static task<result<void>> abort_on(pinned_socket self, close_method how);
  static task<void> stop_receiving_on(pinned_socket self);

  template <class F>
  result<endpoint> name_of(F getname) const noexcept {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getname(native_handle(), reinterpret_cast<sockaddr*>(&ss), &len) < 0) return errno_code(errno);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  }
};

// Keeps a socket's state alive (not its descriptor open) while a composed operation runs on it.
class pinned_socket : public socket_ops {
 public:
  explicit pinned_socket(const socket_ops& s) noexcept : socket_ops(s.st_) {
    if (st_) st_->pin();
  }
  pinned_socket(const pinned_socket& o) noexcept : pinned_socket(static_cast<const socket_ops&>(o)) {}
  pinned_socket(pinned_socket&& o) noexcept : socket_ops(std::exchange(o.st_, nullptr)) {}
  pinned_socket& operator=(const pinned_socket&) = delete;
  ~pinned_socket() {
    if (st_) st_->unpin();
  }
  [[nodiscard]] detail::ring* owner() const noexcept { return ring(); }
  [[nodiscard]] socket_state* state() const noexcept { return st_; }
};

template <stoppable_token Token>
task<transfer_result> socket_ops::send_all(const_buffer buf, Token token,
                                           std::chrono::nanoseconds timeout) const {
  return send_all_on(pinned_socket(*this), buf, std::move(token), timeout);
}
template <stoppable_token Token>
task<transfer_result> socket_ops::send_all_on(pinned_socket self, const_buffer buf, Token token,
                                              std::chrono::nanoseconds timeout) {
  const auto deadline = deadline_after(timeout);
  transfer_result out;
  while (out.bytes < buf.size()) {
    if (out.bytes > 0) {  // after a short send: a stop or the deadline may have cut it short
      if (token.stop_requested()) out.error = std::make_error_code(std::errc::operation_canceled);
      else if (std::chrono::steady_clock::now() >= deadline) out.error = std::make_error_code(std::errc::timed_out);
      if (out.error) break;
    }
    // Only the first send may go inline: after a short one the socket has no room.
    auto r = co_await operation<send_op, Token>(
        self.ring(),
        send_op{{{self.st_}}, buf.data() + out.bytes, buf.size() - out.bytes, MSG_WAITALL, out.bytes == 0},
        token, until(deadline));
    if (!r) {
      out.error = r.error();
      break;
    }
    if (*r == 0) {  // a send that moves nothing would loop forever
      out.error = errno_code(EIO);
      break;
    }
    out.bytes += *r;
  }
  co_return out;
}

template <stoppable_token Token>
task<result<void>> socket_ops::shutdown_write(Token token, shutdown_method how) const {
  return shutdown_write_on(pinned_socket(*this), std::move(token), how);
}
template <stoppable_token Token>
task<result<void>> socket_ops::shutdown_write_on(pinned_socket self, Token token, shutdown_method how) {
  const int sends_done = co_await waiting<socket_state::sends_source, Token>({self.st_}, token);
  detail::ring* ring = self.ring();  // not null once the wait succeeded
  if (sends_done < 0 || !ring) co_return errno_code(sends_done < 0 ? -sends_done : EBADF);
  const bool direct = how == shutdown_method::syscall || !ring->caps().shutdown_op;
  auto r = co_await operation<shutdown_op, Token>(ring, shutdown_op{{self.st_}, direct}, std::move(token));
  if (r) self.st_->wrote_fin();
  co_return r;
}

inline task<result<void>> socket_ops::close(close_method how) const {
  return close_on(pinned_socket(*this), how);
}
inline task<result<void>> socket_ops::close_on(pinned_socket self, close_method how, bool reset) {
  socket_state* st = self.st_;
  if (!st || !st->is_open()) co_return result<void>{};
  st->begin_close(reset);
  (void)co_await waiting<fd_state::idle_source, never_stop_token>({st}, {});
  const int fd = st->take_fd();
  if (fd < 0) co_return result<void>{};  // another close() took it
  if (reset) reset_connection(fd);  // a splice's worker may still hold the socket
  detail::ring* ring = self.ring();
  const bool direct = how == close_method::syscall || !ring || !ring->caps().close_op;
  co_return co_await operation<close_op>(ring, close_op{fd, direct});
}

inline task<result<void>> socket_ops::abort(close_method how) const {
  return abort_on(pinned_socket(*this), how);
}
inline task<result<void>> socket_ops::abort_on(pinned_socket self, close_method how) {
  if (self.is_open()) {
    const linger lg{1, 0};
    ::setsockopt(self.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  co_return co_await close_on(std::move(self), how, true);
}

inline task<void> socket_ops::stop_receiving() const { return stop_receiving_on(pinned_socket(*this)); }
inline task<void> socket_ops::stop_receiving_on(pinned_socket self) {
  if (!self.st_ || !self.ring()) co_return;
  self.st_->rx_stop();
  (void)co_await waiting<socket_state::rx_disarmed_source, never_stop_token>({self.st_}, {});
}

}  // namespace detail

class stream : public detail::socket_ops {
 public:
  /// A stream with no socket and no context: every operation on it fails with
  /// bad_file_descriptor (close() and abort() succeed, there is nothing to close).
  stream() noexcept = default;
  /// Adopts a connected socket (its state comes from this thread's pool).
  stream(io_context& ctx, int fd)
      : socket_ops(detail::socket_state::open(detail::ring_of(ctx), ctx, fd)) {}
  stream(stream&& o) noexcept : socket_ops(std::exchange(o.st_, nullptr)) {}
  stream& operator=(stream&& o) noexcept {
    if (this != &o) {
      drop();
      st_ = std::exchange(o.st_, nullptr);
    }
    return *this;
  }
  /// Cancels what is in flight and closes the socket with close(2) once the kernel let go of
  /// it: it never blocks (ringnet never sets SO_LINGER > 0); the kernel sends FIN, or RST if
  /// unread bytes are queued. Prefer co_await close() / graceful_close() / abort(), which say
  /// what happened.
  ~stream() { drop(); }

  /// Gives up ownership of the descriptor: -1 if there is none, or if operations are still in
  /// flight on it (a contract violation, stopped in debug builds).
  int release() noexcept {
    if (!st_) return -1;
    RINGNET_ASSERT(st_->in_flight() == 0, "stream::release() with operations in flight");
    if (st_->in_flight() != 0) return -1;
    return st_->take_fd();
  }

 private:
  void drop() noexcept {
    if (detail::socket_state* st = std::exchange(st_, nullptr)) {
      st->begin_close();
      st->release_handle();
    }
  }
};

/// Opens a socket (IORING_OP_SOCKET where supported) and connects it, bounded by
/// options.timeout and `token`. Errors: connection_refused, timed_out, operation_canceled, ...
/// A failed, timed-out or cancelled attempt closes its socket (it would linger in SYN-SENT);
/// a retry gets a fresh one.
template <stoppable_token Token>
task<result<stream>> connect(io_context& ctx, endpoint to, connect_options options, Token token) {
  if (to.family() != AF_INET && to.family() != AF_INET6)
    co_return std::make_error_code(std::errc::address_family_not_supported);
  const bool direct_socket = !detail::ring_of(ctx).caps().socket_op;
  auto fd = co_await operation<detail::socket_op, Token>(ctx, detail::socket_op{{}, to.family(), direct_socket},
                                                         token);
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
  const detail::pinned_socket p(s);
  auto r = co_await operation<detail::connect_op, Token>(
      p.owner(), detail::connect_op{{p.state()}, to.data(), to.size()}, std::move(token), options.timeout);
  if (!r) co_return r.error();
  co_return s;
}

RINGNET_END_NAMESPACE
