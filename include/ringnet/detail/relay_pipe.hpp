// The pipe of one relay direction on the splice path (socket → pipe → socket).
#pragma once

#include <ringnet/detail/config.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// Moving data through it never takes its lock twice at once: a socket → pipe splice waiting for
// data holds the pipe's lock, so the two halves of one direction must alternate, never overlap
// (overlapped, request/response traffic deadlocks).
class relay_pipe {
 public:
  relay_pipe() noexcept = default;
  relay_pipe(const relay_pipe&) = delete;
  relay_pipe& operator=(const relay_pipe&) = delete;
  ~relay_pipe() { close(); }

  // Asks for `size` bytes of capacity; the kernel rounds up to a power of two pages, and caps
  // unprivileged processes at fs.pipe-max-size, in which case the default size is kept.
  // 0 or -errno.
  int open(std::size_t size) noexcept {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0) return -errno;
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    const int want = size > INT_MAX ? INT_MAX : static_cast<int>(size);
    int got = ::fcntl(write_fd_, F_SETPIPE_SZ, want);
    if (got < 0) got = ::fcntl(write_fd_, F_GETPIPE_SZ);
    capacity_ = got > 0 ? static_cast<unsigned>(got) : 65536u;
    return 0;
  }
  void close() noexcept {
    if (read_fd_ >= 0) ::close(std::exchange(read_fd_, -1));
    if (write_fd_ >= 0) ::close(std::exchange(write_fd_, -1));
  }
  [[nodiscard]] bool is_open() const noexcept { return read_fd_ >= 0; }
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
