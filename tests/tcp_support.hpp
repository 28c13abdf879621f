// Helpers for TCP tests: a plain blocking-socket peer (the "other side", deliberately not
// ringnet), socket-state inspection from /proc/net/tcp*, and bounded waits.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <array>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"

namespace test {

// A blocking socket with 10 s send/receive timeouts, so a broken test fails instead of hanging.
// The port a bound socket got (bind to port 0 picks one).
inline std::uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return rn::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len)->port();
}

inline void bound_io_time(int fd, int seconds = 10) {
  const timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

struct raw_listener {
  int fd = -1;
  std::uint16_t port = 0;
  explicit raw_listener(int backlog = 128, bool v6 = false) {
    fd = ::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const rn::endpoint at = v6 ? rn::endpoint::loopback_v6(0) : rn::endpoint::loopback_v4(0);
    REQUIRE(::bind(fd, at.data(), at.size()) == 0);
    REQUIRE(::listen(fd, backlog) == 0);
    port = local_port(fd);
    bound_io_time(fd);
  }
  ~raw_listener() { close(); }
  raw_listener(const raw_listener&) = delete;
  raw_listener& operator=(const raw_listener&) = delete;
  void close() {
    if (fd >= 0) ::close(std::exchange(fd, -1));
  }
  [[nodiscard]] rn::endpoint endpoint() const { return rn::endpoint::loopback_v4(port); }
  int accept_one() const {
    int c;
    do c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
    while (c < 0 && errno == EINTR);
    if (c >= 0) bound_io_time(c);
    return c;
  }
};

inline int raw_connect(const rn::endpoint& to) {
  const int fd = ::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  bound_io_time(fd);
  int rc = ::connect(fd, to.data(), to.size());
  if (rc < 0 && errno == EINTR) {
    // On a ring's thread, pending io_uring task work interrupts blocking calls (TIF_NOTIFY_SIGNAL);
    // the handshake goes on in the background: wait for it.
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    while (::poll(&p, 1, 10'000) < 0 && errno == EINTR) {}
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    rc = err == 0 && (p.revents & POLLOUT) ? 0 : -1;
    errno = err;
  }
  const std::string why = rc == 0 ? "ok" : std::strerror(errno);
  INFO("connect to " << to.to_string() << ": " << why);
  REQUIRE(rc == 0);
  return fd;
}

inline void set_linger_rst(int fd) {
  const linger lg{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

// Reads until EOF or an error; returns the bytes and the errno that ended it (0 for EOF).
struct read_result {
  std::string data;
  int error = 0;
};
inline read_result read_to_end(int fd) {
  read_result out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      out.data.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    out.error = n == 0 ? 0 : errno;
    return out;
  }
}

inline bool write_all(int fd, const std::string& data) {
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

inline std::string pattern(std::size_t n, std::uint32_t seed = 1) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

// TCP states as in include/net/tcp_states.h.
enum class tcp_state { established = 1, syn_sent = 2, fin_wait1 = 4, time_wait = 6, close_wait = 8 };

enum class port_side { local, remote };

// Sockets in /proc/net/tcp{,6} whose local or remote port is `port` (optionally in `state`),
// and (optionally) whose other end is on port `peer_port`.
inline int sockets_on_port(std::uint16_t port, port_side side, int state = 0,
                           std::uint16_t peer_port = 0) {
  int n = 0;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string slot, local, remote, st;
      ls >> slot >> local >> remote >> st;
      const auto port_of = [](const std::string& addr) {
        const auto colon = addr.rfind(':');
        return colon == std::string::npos ? 0ul : std::stoul(addr.substr(colon + 1), nullptr, 16);
      };
      const bool local_side = side == port_side::local;
      const unsigned long p = port_of(local_side ? local : remote);
      const unsigned long other = port_of(local_side ? remote : local);
      const unsigned long s = std::stoul(st, nullptr, 16);
      if (p == port && (state == 0 || static_cast<int>(s) == state) && (peer_port == 0 || other == peer_port))
        ++n;
    }
  }
  return n;
}

inline int sockets_on_port(std::uint16_t port, port_side side, tcp_state state,
                           std::uint16_t peer_port = 0) {
  return sockets_on_port(port, side, static_cast<int>(state), peer_port);
}

// A ringnet stream accepted from `l`, and the plain client socket at its other end (the peer).
struct stream_pair {
  rn::stream ours;
  int peer = -1;
};
inline rn::task<stream_pair> accept_raw_client(rn::listener& l) {
  stream_pair p;
  p.peer = raw_connect(*l.local_endpoint());
  // Under fault injection an accept may fail before the kernel saw it: retried (the connection
  // waits in the backlog), since setting up is not what is tested.
  for (int i = 0; i < 20 && !p.ours.is_open(); ++i) {
    auto s = co_await l.accept();
    if (s) p.ours = std::move(*s);
  }
  REQUIRE(p.ours.is_open());
  co_return p;
}

// A context with a listener on 127.0.0.1, and accept(): a ringnet stream with a plain peer.
struct loopback {
  rn::io_context ctx{context_options()};
  rn::listener l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0)).value();
  stream_pair accept() { return rn::sync_wait(ctx, accept_raw_client(l)); }
};

// The one echo handler: every byte back until the peer's FIN (or the token), for rn::server.
template <class Token>
rn::task<void> echo(rn::stream& s, Token finish) {
  std::array<char, 8192> buf;
  for (;;) {
    auto n = co_await s.recv(rn::buffer(buf), finish);
    if (!n || *n == 0) co_return;  // the server closes gracefully
    if (!co_await s.send_all(rn::const_buffer(rn::buffer(buf).first(*n)), finish)) co_return;
  }
}

// The one ringnet echo client: sends `msg`, half-closes, reads the answer to EOF.
inline rn::task<std::string> echo_exchange(rn::stream& s, const std::string& msg,
                                           std::chrono::nanoseconds timeout = std::chrono::seconds(30)) {
  auto sent = co_await s.send_all(rn::buffer(msg));
  auto shut = co_await s.shutdown_write();
  std::string back;
  std::array<char, 8192> buf;
  while (sent && shut) {
    auto r = co_await s.recv(rn::buffer(buf), rn::never_stop_token{}, timeout);
    if (!r || *r == 0) break;
    back.append(buf.data(), *r);
  }
  co_return back;
}

// Raises RLIMIT_NOFILE to at least `want` if allowed; returns the soft limit now in force.
inline rlim_t raise_fd_limit(rlim_t want) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= want) return rl.rlim_cur;
  rlimit wanted{want, std::max(want, rl.rlim_max)};
  if (::setrlimit(RLIMIT_NOFILE, &wanted) != 0) {  // not privileged: up to the hard limit
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur;
}

template <class D>
inline long long ms(D d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

}  // namespace test
