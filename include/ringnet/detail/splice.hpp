// IORING_OP_SPLICE between a socket and a pipe, and the pipe itself: the relay's zero-copy path.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/socket_ops.hpp>
#include <ringnet/error.hpp>
#include <ringnet/operation.hpp>

#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <unistd.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// socket → pipe (ToSocket = false, counted on the socket like a recv) or pipe → socket (counted
// like a send, so shutdown_write() waits for it). The kernel always runs SPLICE in an io-wq worker
// that blocks until data or room is there: a linked timeout behind it never fires (URING_TCP_FACTS
// #6, #19), so none is allowed; stop it with a stop token (cancelled, it returns -EINTR or -512).
template <bool ToSocket>
struct splice_op : tracked<ToSocket> {
  int pipe_fd;
  unsigned len;
  static constexpr bool linkable_timeout = false;
  void prepare(io_uring_sqe* sqe) const noexcept {
    if constexpr (ToSocket)
      io_uring_prep_splice(sqe, pipe_fd, -1, this->st->fd, -1, len, 0);
    else
      io_uring_prep_splice(sqe, this->st->fd, -1, pipe_fd, -1, len, 0);
  }
  result<std::size_t> complete(int res, std::uint32_t) const noexcept {
    if constexpr (!ToSocket) {
      if (res == 0 && len > 0 && !this->st->closing) this->st->read_eof = true;
    }
    return size_result(closing_result(this->st, res));
  }
};

// Until the socket has something to read (data, FIN or an error). The relay waits here rather than
// in a socket → pipe splice: that splice would wait in an io-wq worker (a kernel thread per idle
// connection), and the kernel files it under the pipe, so cancel-by-fd on the socket
// (stream::cancel()) would not reach it. After this, the splice finds data queued and returns.
struct readable_op : tracked<false> {
  void prepare(io_uring_sqe* sqe) const noexcept {
    io_uring_prep_poll_add(sqe, st->fd, POLLIN | POLLRDHUP);
  }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res < 0 ? res : 0); }
};

// A pipe sized for one relay direction. Moving data through it never takes its lock twice at once:
// a socket → pipe splice waiting for data holds the pipe's lock, so the two halves of one direction
// must alternate, never overlap (shared/PROTOCOL.md).
class relay_pipe {
 public:
  relay_pipe() noexcept = default;
  relay_pipe(const relay_pipe&) = delete;
  relay_pipe& operator=(const relay_pipe&) = delete;
  ~relay_pipe() { close(); }

  // Asks for `size` bytes of capacity; the kernel rounds up to a power of two pages, and caps
  // unprivileged processes at fs.pipe-max-size, in which case the default size is kept.
  result<void> open(std::size_t size) noexcept {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0) return errno_code(errno);
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    const int want = size > INT_MAX ? INT_MAX : static_cast<int>(size);
    int got = ::fcntl(write_fd_, F_SETPIPE_SZ, want);
    if (got < 0) got = ::fcntl(write_fd_, F_GETPIPE_SZ);
    capacity_ = got > 0 ? static_cast<unsigned>(got) : 65536u;
    return {};
  }
  void close() noexcept {
    if (read_fd_ >= 0) ::close(std::exchange(read_fd_, -1));
    if (write_fd_ >= 0) ::close(std::exchange(write_fd_, -1));
  }
  [[nodiscard]] int read_fd() const noexcept { return read_fd_; }
  [[nodiscard]] int write_fd() const noexcept { return write_fd_; }
  [[nodiscard]] unsigned capacity() const noexcept { return capacity_; }

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
  unsigned capacity_ = 0;
};

}  // namespace detail
RINGNET_END_NAMESPACE
