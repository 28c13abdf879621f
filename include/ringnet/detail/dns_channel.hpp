// One c-ares channel whose sockets the ring watches through one epoll set.
//
// c-ares opens, re-arms and closes its sockets inside its own calls and reports every change
// through its socket-state callback; the channel mirrors them into an epoll set. The ring then
// waits for all of them with one IORING_OP_POLL_ADD on the epoll descriptor, whatever their
// number (one UDP socket per server, a TCP one after a truncated answer), and c-ares's own
// deadline (ares_timeout) becomes that poll's linked timeout. A channel is used by one thread
// at a time (c-ares channels are not thread-safe): the ring's, inside the coroutine owning it.
#pragma once

#include <ringnet/detail/config.hpp>

#include <ares.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <utility>

#if !defined(ARES_VERSION) || ARES_VERSION < 0x011000
#error "ringnet's resolver needs c-ares 1.16 or later (ares_getaddrinfo)"
#endif

RINGNET_BEGIN_NAMESPACE
namespace detail {

// ares_library_init is not thread-safe and counts its calls: once per process, through a
// function-local static (whose initialisation is).
inline int ares_library_status() noexcept {
  static const int status = ::ares_library_init(ARES_LIB_INIT_ALL);
  return status;
}

class dns_channel {
 public:
  struct settings {
    int timeout_ms;                      // c-ares's first wait for an answer (later rounds double it)
    int tries;                           // how many times each server is asked
    ares_addr_port_node* servers;        // null: those of /etc/resolv.conf
  };

  dns_channel() noexcept = default;
  dns_channel(const dns_channel&) = delete;
  dns_channel& operator=(const dns_channel&) = delete;
  ~dns_channel() { close(); }

  // 0, -errno when a system call failed, or an ARES_* status (> 0) from c-ares.
  [[nodiscard]] int open(const settings& s) noexcept {
    if (const int st = ares_library_status(); st != ARES_SUCCESS) return st;
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return -errno;
    ares_options o{};
    o.timeout = s.timeout_ms;
    o.tries = s.tries;
    o.sock_state_cb = &dns_channel::on_socket_state;
    o.sock_state_cb_data = this;
    const int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
    if (const int st = ::ares_init_options(&channel_, &o, mask); st != ARES_SUCCESS) {
      channel_ = nullptr;
      return st;
    }
    if (s.servers) {
      if (const int st = ::ares_set_servers_ports(channel_, s.servers); st != ARES_SUCCESS) return st;
    }
    return 0;
  }

  // Destroying the channel ends its pending lookups with ARES_EDESTRUCTION and closes its sockets
  // (each reported to on_socket_state first, so the epoll set must still be open).
  void close() noexcept {
    if (channel_) ::ares_destroy(std::exchange(channel_, nullptr));
    if (epoll_fd_ >= 0) ::close(std::exchange(epoll_fd_, -1));
  }

  // ares_getaddrinfo: `done` may run before this returns (the hosts file, a numeric name).
  void lookup(const char* host, int family, ares_addrinfo_callback done, void* arg) noexcept {
    ares_addrinfo_hints hints{};
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    ::ares_getaddrinfo(channel_, host, nullptr, &hints, done, arg);
  }

  // Ends every pending lookup now: each callback runs with ARES_ECANCELLED before this returns.
  void cancel() noexcept { ::ares_cancel(channel_); }

  [[nodiscard]] int epoll_fd() const noexcept { return epoll_fd_; }

  // Until c-ares's next deadline (a retransmission, the next server, giving up), plus 1 ms:
  // ares_timeout rounds down to milliseconds, and waking before the deadline would find
  // nothing due and spin.
  [[nodiscard]] std::chrono::nanoseconds next_deadline() const noexcept {
    timeval max{3600, 0};
    timeval buf{};
    const timeval* tv = ::ares_timeout(channel_, &max, &buf);
    return std::chrono::seconds(tv->tv_sec) + std::chrono::microseconds(tv->tv_usec) +
           std::chrono::milliseconds(1);
  }

  // Hands c-ares what the epoll set reports ready. Called after the poll completed or its
  // deadline passed; ares_process_fd also runs c-ares's timeouts, so with nothing ready it
  // is called once with no descriptor at all. More than `batch` ready sockets are level-
  // triggered: the next poll completes at once for the rest.
  void process() noexcept {
    constexpr int batch = 8;
    epoll_event ready[batch];
    int n;
    do n = ::epoll_wait(epoll_fd_, ready, batch, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
      ::ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
      return;
    }
    for (int i = 0; i < n; ++i) {
      const ares_socket_t fd = ready[i].data.fd;
      const std::uint32_t ev = ready[i].events;
      // An error or hang-up is c-ares's to read (an ICMP port unreachable shows as EPOLLERR).
      ::ares_process_fd(channel_, ev & (EPOLLIN | EPOLLERR | EPOLLHUP) ? fd : ARES_SOCKET_BAD,
                        ev & EPOLLOUT ? fd : ARES_SOCKET_BAD);
    }
  }

 private:
  // c-ares opened `fd`, or changed what it waits for, or (neither readable nor writable) is
  // about to close it. A socket epoll could not take (ENOMEM) is not watched: its lookups then
  // end by c-ares's timeouts, which are driven either way.
  static void on_socket_state(void* data, ares_socket_t fd, int readable, int writable) noexcept {
    const int epfd = static_cast<dns_channel*>(data)->epoll_fd_;
    if (!readable && !writable) {
      ::epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
      return;
    }
    epoll_event ev{};
    ev.events = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u);
    ev.data.fd = fd;
    if (::epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT)
      ::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  }

  ares_channel channel_ = nullptr;
  int epoll_fd_ = -1;
};

}  // namespace detail
RINGNET_END_NAMESPACE
