// TCP primitives over real loopback sockets: connect (refused, timeout, cancel), listener
// (SO_REUSEADDR re-bind, multishot accept, EMFILE, cancel), send/recv, half-close, resets.
#include <atomic>
#include <thread>

#include "tcp_support.hpp"

using test::port_side;
using test::tcp_state;

namespace {
rn::result<rn::stream> connect_to(rn::io_context& ctx, const rn::endpoint& ep,
                                  rn::connect_options opts = {}) {
  return rn::sync_wait(ctx, rn::connect(ctx, ep, opts));
}
}  // namespace

TEST_CASE("connect: a closed port is refused at once") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  std::uint16_t port;
  {
    test::raw_listener l;
    port = l.port;
  }  // bound, then closed
  const auto t0 = std::chrono::steady_clock::now();
  auto r = connect_to(ctx, rn::endpoint::loopback_v4(port));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::connection_refused);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}

TEST_CASE("connect: against dropped SYNs it ends timed_out and leaves no SYN-SENT socket") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener full(0);  // backlog 0: one queued connection fills it, then SYNs drop
  const int filler = test::raw_connect(full.endpoint());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = connect_to(ctx, full.endpoint(), {.timeout = 300ms});
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::timed_out);
  CHECK(took >= 300ms);
  CHECK(took < 300ms + 10s);
  CHECK(test::sockets_on_port(full.port, port_side::remote, tcp_state::syn_sent) == 0);
  ::close(filler);
}

TEST_CASE("connect: cancelled from another thread mid-handshake, resumed once, nothing leaked") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener full(0);
  const int filler = test::raw_connect(full.endpoint());
  std::stop_source stop;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(50ms);
    stop.request_stop();
  });
  int resumed = 0;
  auto attempt = [&]() -> rn::task<rn::result<rn::stream>> {
    auto r = co_await rn::connect(ctx, full.endpoint(), {.timeout = 1h}, stop.get_token());
    ++resumed;
    co_return r;
  };
  auto r = rn::sync_wait(ctx, attempt());
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::operation_canceled);
  CHECK(resumed == 1);
  CHECK(test::sockets_on_port(full.port, port_side::remote, tcp_state::syn_sent) == 0);
  ::close(filler);
}

TEST_CASE("connect: IPv4 and IPv6 echo round trip with send_all/recv") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  for (bool v6 : {false, true}) {
    test::raw_listener peer(16, v6);
    const rn::endpoint ep = v6 ? rn::endpoint::loopback_v6(peer.port) : peer.endpoint();
    std::jthread echo([&] {
      const int c = peer.accept_one();
      auto in = test::read_to_end(c);
      test::write_all(c, in.data);
      ::close(c);
    });
    const std::string msg = test::pattern(100'000, v6 ? 7 : 8);
    auto body = [&]() -> rn::task<std::string> {
      auto s = co_await rn::connect(ctx, ep, {.nodelay = true});
      REQUIRE(s);
      CHECK(s->remote_endpoint()->port() == peer.port);
      auto sent = co_await s->send_all(rn::buffer(msg));
      CHECK(sent.bytes == msg.size());
      const bool shut = (co_await s->shutdown_write()).has_value();
      CHECK(shut);
      std::string back;
      char buf[4096];
      bool eof = false;
      for (;;) {
        auto r = co_await s->recv(rn::buffer(buf), rn::never_stop_token{}, 10s);
        CHECK(r);
        if (!r) break;
        if (*r == 0) {
          eof = true;
          break;
        }
        back.append(buf, *r);
      }
      // Whatever failed on the way: the bytes send_all reported sent, then our FIN, came back
      // whole and in order before the echo's EOF.
      test::invariant(msg.starts_with(back), "the echo is not a prefix of what was sent");
      test::invariant(!shut || !eof || back.size() == sent.bytes,
                      "send_all reported " + std::to_string(sent.bytes) + " bytes sent, the echo has " +
                          std::to_string(back.size()));
      CHECK((co_await s->close()).has_value());
      co_return back;
    };
    CHECK(rn::sync_wait(ctx, body()) == msg);
  }
}

TEST_CASE("shutdown_write: the peer reads EOF and still sends a reply that we read (both paths)") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  for (auto how : {rn::shutdown_method::syscall, rn::shutdown_method::io_uring}) {
    test::raw_listener peer;
    std::string peer_got;
    std::jthread server([&] {
      const int c = peer.accept_one();
      peer_got = test::read_to_end(c).data;  // returns at our FIN
      test::write_all(c, "reply after EOF");
      ::close(c);
    });
    auto body = [&]() -> rn::task<std::string> {
      auto s = co_await rn::connect(ctx, peer.endpoint());
      REQUIRE(s);
      (void)co_await s->send_all(rn::buffer(std::string_view("request")));
      auto shut = co_await s->shutdown_write(rn::never_stop_token{}, how);
      CHECK(shut.has_value());
      std::string reply;
      char buf[256];
      while (auto r = co_await s->recv(rn::buffer(buf), rn::never_stop_token{}, 10s)) {
        if (*r == 0) break;
        reply.append(buf, *r);
      }
      (void)co_await s->close();
      co_return reply;
    };
    CHECK(rn::sync_wait(ctx, body()) == "reply after EOF");
    server.join();
    CHECK(peer_got == "request");
  }
}

TEST_CASE("recv: a peer reset mid-stream surfaces as connection_reset") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  std::jthread server([&] {
    const int c = peer.accept_one();
    test::write_all(c, std::string(1000, 'a'));
    std::this_thread::sleep_for(20ms);
    test::set_linger_rst(c);
    ::close(c);
  });
  auto body = [&]() -> rn::task<std::error_code> {
    auto s = co_await rn::connect(ctx, peer.endpoint());
    REQUIRE(s);
    char buf[4096];
    for (int i = 0; i < 1000; ++i) {
      auto r = co_await s->recv(rn::buffer(buf), rn::never_stop_token{}, 10s);
      if (!r) co_return r.error();
      if (*r == 0) co_return std::error_code{};
    }
    co_return std::make_error_code(std::errc::timed_out);
  };
  CHECK(rn::sync_wait(ctx, body()) == std::errc::connection_reset);
}

TEST_CASE("send: writing after the peer closed is an error code, never SIGPIPE") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  std::jthread server([&] { ::close(peer.accept_one()); });
  auto body = [&]() -> rn::task<std::error_code> {
    auto s = co_await rn::connect(ctx, peer.endpoint());
    REQUIRE(s);
    server.join();
    const std::string chunk(4096, 'x');
    for (int i = 0; i < 500; ++i) {  // the first sends may still succeed: the RST comes back
      auto r = co_await s->send(rn::buffer(chunk));
      if (!r) co_return r.error();
      CHECK((co_await rn::sleep_for(ctx, 2ms)).has_value());
    }
    co_return std::error_code{};
  };
  const std::error_code ec = rn::sync_wait(ctx, body());
  CHECK((ec == std::errc::broken_pipe || ec == std::errc::connection_reset));
  // SIGPIPE is not ignored in this process: had any send raised it, we would not be here.
}

TEST_CASE("send_all: a peer that never reads blocks it; a stop ends it and reports bytes sent") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  int held = -1;
  std::jthread server([&] { held = peer.accept_one(); });  // accepts, never reads
  const std::string big(64 << 20, 'b');
  std::stop_source stop;
  auto body = [&]() -> rn::task<rn::transfer_result> {
    auto s = co_await rn::connect(ctx, peer.endpoint());
    REQUIRE(s);
    auto stopper = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 200ms)).has_value());
      stop.request_stop();
    };
    auto [sent, unused] = co_await rn::when_all(s->send_all(rn::buffer(big), stop.get_token()), stopper());
    (void)co_await s->abort();
    co_return sent;
  };
  auto sent = rn::sync_wait(ctx, body());
  CHECK(sent.error == std::errc::operation_canceled);
  CHECK(sent.bytes > 0);
  CHECK(sent.bytes < big.size());
  MESSAGE("send_all moved " << sent.bytes << " of " << big.size() << " bytes before the stop");
  server.join();
  ::close(held);
}

TEST_CASE("send_all: its timeout bounds the whole call and says how far it got") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  int held = -1;
  std::jthread server([&] { held = peer.accept_one(); });
  const std::string big(64 << 20, 'b');
  auto body = [&]() -> rn::task<rn::transfer_result> {
    auto s = co_await rn::connect(ctx, peer.endpoint());
    REQUIRE(s);
    auto sent = co_await s->send_all(rn::buffer(big), rn::never_stop_token{}, 150ms);
    (void)co_await s->abort();
    co_return sent;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto sent = rn::sync_wait(ctx, body());
  CHECK(sent.error == std::errc::timed_out);
  CHECK(sent.bytes > 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  server.join();
  ::close(held);
}

TEST_CASE("close: a recv in flight completes (canceled) before the descriptor is released") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  int held = -1;
  std::jthread server([&] { held = peer.accept_one(); });
  int order = 0, recv_done = 0, close_done = 0;
  auto body = [&]() -> rn::task<void> {
    auto s = co_await rn::connect(ctx, peer.endpoint());
    REQUIRE(s);
    auto reader = [&]() -> rn::task<void> {
      char c;
      auto r = co_await s->recv(rn::buffer(&c, 1));
      CHECK(r.error() == std::errc::operation_canceled);
      recv_done = ++order;
    };
    auto closer = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 20ms)).has_value());
      CHECK((co_await s->close()).has_value());
      close_done = ++order;
      CHECK_FALSE(s->is_open());
    };
    co_await rn::when_all(reader(), closer());
  };
  rn::sync_wait(ctx, body());
  CHECK(recv_done == 1);
  CHECK(close_done == 2);
  server.join();
  CHECK(test::read_to_end(held).error == 0);  // the peer saw our FIN
  ::close(held);
}

TEST_CASE("close and abort work through IORING_OP_CLOSE too: the peer sees FIN, then RST") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  test::raw_listener peer;
  for (bool abortive : {false, true}) {
    int seen = -1;
    std::jthread server([&] {
      const int c = peer.accept_one();
      seen = test::read_to_end(c).error;
      ::close(c);
    });
    auto body = [&]() -> rn::task<void> {
      auto s = co_await rn::connect(ctx, peer.endpoint());
      REQUIRE(s);
      auto r = abortive ? co_await s->abort(rn::close_method::io_uring)
                        : co_await s->close(rn::close_method::io_uring);
      CHECK(r.has_value());
      CHECK_FALSE(s->is_open());
    };
    rn::sync_wait(ctx, body());
    server.join();
    CHECK(seen == (abortive ? ECONNRESET : 0));
  }
}

TEST_CASE("operations on a closed stream fail with bad_file_descriptor") {
  rn::io_context ctx(test::context_options());
  rn::stream s;
  auto body = [&]() -> rn::task<void> {
    char c;
    rn::stream closed(ctx, -1);
    auto r = co_await closed.recv(rn::buffer(&c, 1));
    CHECK(r.error() == std::errc::bad_file_descriptor);
    auto w = co_await closed.send(rn::buffer(&c, 1));
    CHECK(w.error() == std::errc::bad_file_descriptor);
    CHECK((co_await closed.close()).has_value());  // closing twice is fine
  };
  rn::sync_wait(ctx, body());
}

TEST_CASE("listener: port 0 reports the bound port; SO_REUSEADDR re-binds over TIME_WAIT") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  const std::uint16_t port = l->local_endpoint()->port();
  CHECK(port != 0);
  // A connection that the server closes first leaves TIME_WAIT on the server's port.
  const int client = test::raw_connect(rn::endpoint::loopback_v4(port));
  sockaddr_in client_addr{};
  socklen_t client_len = sizeof client_addr;
  ::getsockname(client, reinterpret_cast<sockaddr*>(&client_addr), &client_len);
  const std::uint16_t client_port = ntohs(client_addr.sin_port);
  auto closed_first = [&]() -> rn::task<void> {
    auto s = co_await l->accept();
    REQUIRE(s);
    CHECK((co_await s->close()).has_value());
  };
  rn::sync_wait(ctx, closed_first());
  CHECK(test::read_to_end(client).error == 0);
  ::close(client);
  const auto server_time_wait = [&] {
    return test::sockets_on_port(port, port_side::local, tcp_state::time_wait, client_port);
  };
  for (int i = 0; i < 200 && server_time_wait() == 0; ++i) std::this_thread::sleep_for(5ms);
  REQUIRE(server_time_wait() == 1);
  l->close();

  auto without = rn::listener::bind(ctx, rn::endpoint::loopback_v4(port), {.reuse_address = false});
  CHECK(without.error() == std::errc::address_in_use);
  auto with = rn::listener::bind(ctx, rn::endpoint::loopback_v4(port));  // the default
  CHECK(with.has_value());

  auto bad = rn::listener::bind(ctx, rn::endpoint{});
  CHECK(bad.error() == std::errc::address_family_not_supported);
}

TEST_CASE("listener: SO_REUSEPORT lets two listeners share a port") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto a = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0), {.reuse_port = true});
  REQUIRE(a);
  const auto port = a->local_endpoint()->port();
  auto b = rn::listener::bind(ctx, rn::endpoint::loopback_v4(port), {.reuse_port = true});
  CHECK(b.has_value());
}

TEST_CASE("listener: multishot next() takes many connections from one SQE") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  const auto ep = *l->local_endpoint();
  constexpr int n = 300;  // more than the queue holds: exercises backpressure and re-arming
  std::vector<int> clients;
  for (int i = 0; i < n; ++i) clients.push_back(test::raw_connect(ep));
  auto body = [&]() -> rn::task<int> {
    int got = 0;
    for (int i = 0; i < n; ++i) {
      auto s = co_await l->next();
      REQUIRE(s);
      ++got;
      (void)co_await s->close();
    }
    co_return got;
  };
  const auto tail = ctx.native_handle().sq.sqe_tail;
  CHECK(rn::sync_wait(ctx, body()) == n);
  MESSAGE("SQEs used to accept " << n << " connections (with closes): "
                                 << ctx.native_handle().sq.sqe_tail - tail);
  for (int c : clients) ::close(c);
}

TEST_CASE("listener: a stop cancels next() and accept(); a racing accepted connection is never lost") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  const auto ep = *l->local_endpoint();
  int connected = 0, accepted = 0;
  std::vector<int> clients;
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < 200; ++i) {
      std::stop_source stop;
      auto racer = [&]() -> rn::task<void> {
        if (i % 2) {
          clients.push_back(test::raw_connect(ep));
          ++connected;
        }
        if (i % 4 < 2) co_await ctx.schedule();
        stop.request_stop();
      };
      auto take = [&]() -> rn::task<void> {
        // Not `c ? co_await a : co_await b`: g++ 12 destroys the temporary of such a conditional
        // twice.
        rn::result<rn::stream> s = std::make_error_code(std::errc::invalid_argument);
        if (i % 3)
          s = co_await l->next(stop.get_token());
        else
          s = co_await l->accept(stop.get_token());
        if (s) ++accepted;
        else CHECK(s.error() == std::errc::operation_canceled);
      };
      co_await rn::when_all(take(), racer());
    }
    while (accepted < connected) {  // what the cancelled waits did not take is still there
      auto got = co_await rn::when_any([&](rn::inplace_stop_token t) { return l->next(t); },
                                       [&](rn::inplace_stop_token t) { return rn::sleep_for(ctx, 5s, t); });
      REQUIRE(got.index() == 0);
      REQUIRE(std::get<0>(got));
      ++accepted;
    }
  };
  rn::sync_wait(ctx, body());
  CHECK(accepted == connected);
  for (int c : clients) ::close(c);
  l->close();  // closes connections queued by the multishot but never taken
}

TEST_CASE("listener: closing it completes a pending next() with operation_canceled") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto body = [&]() -> rn::task<void> {
    auto waiter = [&]() -> rn::task<void> {
      auto s = co_await l->next();
      CHECK(s.error() == std::errc::operation_canceled);
    };
    auto closer = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 10ms)).has_value());
      l->close();
    };
    co_await rn::when_all(waiter(), closer());
    auto after = co_await l->next();
    CHECK(after.error() == std::errc::bad_file_descriptor);
  };
  rn::sync_wait(ctx, body());
}

TEST_CASE("listener: EMFILE ends the multishot with a clear error; the next call re-arms") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  const auto ep = *l->local_endpoint();
  rlimit saved{};
  ::getrlimit(RLIMIT_NOFILE, &saved);
  std::vector<int> clients;
  auto body = [&]() -> rn::task<void> {
    // The client sockets exist before the limit drops; the accepted side then hits it.
    for (int i = 0; i < 4; ++i) clients.push_back(test::raw_connect(ep));
    rlimit tight = saved;
    tight.rlim_cur = static_cast<rlim_t>(test::open_fds() + 1);
    ::setrlimit(RLIMIT_NOFILE, &tight);
    std::vector<rn::stream> got;
    rn::result<rn::stream> s = std::make_error_code(std::errc::invalid_argument);
    for (int i = 0; i < 8; ++i) {
      s = co_await l->next();
      if (!s) break;
      got.push_back(std::move(*s));
    }
    CHECK(s.error() == std::errc::too_many_files_open);
    ::setrlimit(RLIMIT_NOFILE, &saved);
    while (got.size() < clients.size()) {  // re-armed: the rest arrive
      auto again = co_await l->next();
      REQUIRE(again);
      got.push_back(std::move(*again));
    }
    CHECK(got.size() == clients.size());
  };
  rn::sync_wait(ctx, body());
  ::setrlimit(RLIMIT_NOFILE, &saved);
  for (int c : clients) ::close(c);
}

// A send alone in its turn is made at once with send(2) (io_context_options::send_inline); every
// other one is submitted. Both ways must give the same outcome in every state of the socket: the
// same error, the same count, the same bytes at the peer, the same connection_error() after.
namespace {
enum class send_state { fresh, large_to_reader, after_our_fin, peer_reset, closed, stopped_before };
constexpr std::array all_send_states = {send_state::fresh,      send_state::large_to_reader,
                                        send_state::after_our_fin, send_state::peer_reset,
                                        send_state::closed,     send_state::stopped_before};
const char* name(send_state s) {
  constexpr const char* n[] = {"fresh", "large, peer reading", "after our FIN", "peer reset", "closed",
                               "stopped before"};
  return n[static_cast<int>(s)];
}

struct send_outcome {
  std::error_code error;
  std::size_t bytes = 0;
  std::string peer_read;  // everything the peer read, to EOF or its error
  bool connection_error = false;
  bool operator==(const send_outcome&) const = default;
};

// A context that makes lone sends at once or not, and an accepted stream with its plain peer.
struct send_setup {
  rn::io_context ctx;
  rn::listener l;
  test::stream_pair pair;
  static rn::io_context_options options(bool inline_sends) {
    rn::io_context_options o = test::context_options();
    o.send_inline = inline_sends;
    return o;
  }
  explicit send_setup(bool inline_sends)
      : ctx(options(inline_sends)),
        l(rn::listener::bind(ctx, rn::endpoint::loopback_v4(0)).value()),
        pair(rn::sync_wait(ctx, test::accept_raw_client(l))) {
    test::bound_io_time(pair.peer);
  }
};

send_outcome send_in_state(send_state state, bool whole, bool inline_sends) {
  send_setup setup(inline_sends);
  rn::io_context& ctx = setup.ctx;
  rn::stream& s = setup.pair.ours;
  int& peer = setup.pair.peer;
  const std::string payload = test::pattern(state == send_state::large_to_reader ? 4 << 20 : 64);
  send_outcome out;
  std::jthread reader;  // reads to EOF from the start: the peer of a large send
  if (state == send_state::large_to_reader)
    reader = std::jthread([&, fd = peer] { out.peer_read = test::read_to_end(fd).data; });
  rn::inplace_stop_source stop;
  switch (state) {
    case send_state::after_our_fin: REQUIRE(rn::sync_wait(ctx, s.shutdown_write())); break;
    case send_state::peer_reset: {
      test::set_linger_rst(peer);
      ::close(std::exchange(peer, -1));
      pollfd p{s.native_handle(), POLLIN, 0};  // the RST has arrived once ours polls readable
      REQUIRE(::poll(&p, 1, 2000) == 1);
      break;
    }
    case send_state::closed: REQUIRE(rn::sync_wait(ctx, s.close())); break;
    case send_state::stopped_before: stop.request_stop(); break;
    default: break;
  }
  auto body = [&]() -> rn::task<void> {
    if (whole) {
      auto r = co_await s.send_all(rn::buffer(payload), stop.get_token());
      out.error = r.error;
      out.bytes = r.bytes;
    } else {
      auto r = co_await s.send(rn::buffer(payload), stop.get_token());
      if (r) out.bytes = *r;
      else out.error = r.error();
    }
    out.connection_error = static_cast<bool>(s.connection_error());
    (void)co_await s.close();
  };
  rn::sync_wait(ctx, body());
  reader = {};  // joined: the peer read to our FIN
  if (peer >= 0) {
    if (state != send_state::large_to_reader) out.peer_read = test::read_to_end(peer).data;
    ::close(peer);
  }
  return out;
}
}  // namespace

TEST_CASE("send and send_all: made at once by send(2) or submitted, the outcome is the same") {
  test::fd_leak_check fds;
  for (send_state state : all_send_states) {
    for (bool whole : {false, true}) {
      const std::string state_name = name(state);
      CAPTURE(state_name);
      CAPTURE(whole);
      const send_outcome submitted = send_in_state(state, whole, false);
      const send_outcome at_once = send_in_state(state, whole, true);
      CHECK(at_once.error == submitted.error);
      if (whole) CHECK(at_once.bytes == submitted.bytes);  // a lone send() may be short either way
      CHECK(at_once.connection_error == submitted.connection_error);
      for (const send_outcome* o : {&submitted, &at_once}) {
        const std::string sent = test::pattern(state == send_state::large_to_reader ? 4 << 20 : 64);
        // The peer reads exactly the bytes reported sent, in order.
        CHECK(o->peer_read == sent.substr(0, o->bytes));
        switch (state) {
          case send_state::fresh:
          case send_state::large_to_reader:
            CHECK(!o->error);
            CHECK(o->bytes > 0);
            if (whole || state == send_state::fresh) CHECK(o->bytes == sent.size());
            break;
          case send_state::after_our_fin: CHECK(o->error == std::errc::broken_pipe); break;
          case send_state::peer_reset:
            CHECK(o->error == std::errc::connection_reset);
            CHECK(o->connection_error);
            break;
          case send_state::closed: CHECK(o->error == std::errc::bad_file_descriptor); break;
          case send_state::stopped_before: CHECK(o->error == std::errc::operation_canceled); break;
        }
      }
    }
  }
}

TEST_CASE("send: alone in its turn it completes at once; beside other work it is submitted") {
  test::fd_leak_check fds;
  for (bool inline_sends : {false, true}) {
    CAPTURE(inline_sends);
    send_setup setup(inline_sends);
    rn::io_context& ctx = setup.ctx;
    rn::stream& s = setup.pair.ours;
    const int peer = setup.pair.peer;
    const std::string first = test::pattern(64, 1), second = test::pattern(64, 2);
    auto body = [&]() -> rn::task<void> {
      // Nothing else in this turn: made at once by send(2) when allowed, so no suspension.
      auto alone = s.send(rn::buffer(first));
      const bool at_once = alone.await_ready();
      CHECK(at_once == inline_sends);
      rn::result<std::size_t> r1 = std::size_t{0};
      if (at_once) r1 = alone.await_resume();
      else r1 = co_await s.send(rn::buffer(first));
      CHECK(r1.value() == first.size());
      // A coroutine is waiting to run in this turn: the send joins the next submission.
      rn::spawn(ctx, []() -> rn::task<void> { co_return; }());
      auto beside = s.send(rn::buffer(second));
      CHECK(!beside.await_ready());
      auto r2 = co_await beside;
      CHECK(r2.value() == second.size());
      (void)co_await s.close();
    };
    rn::sync_wait(ctx, body());
    CHECK(test::read_to_end(peer).data == first + second);
    ::close(peer);
  }
}

// A send made at once does not suspend: a loop of sends the socket keeps taking must still end
// its turn, or timers, other connections and stop() starve (and send_all's task would nest one
// resumption per send on the stack). 5,000 sends of 64 bytes to a reader that keeps up take
// milliseconds; a 1 ms timer beside them must fire before they are done.
TEST_CASE("send: a loop of sends that the socket keeps taking still lets a timer fire") {
  test::fd_leak_check fds;
  for (bool whole : {false, true}) {
    CAPTURE(whole);
    send_setup setup(true);
    rn::io_context& ctx = setup.ctx;
    rn::stream& s = setup.pair.ours;
    std::jthread reader([fd = setup.pair.peer] { (void)test::read_to_end(fd); });
    constexpr int sends = 5000;
    int sent = 0, sent_when_fired = -1;
    auto timer = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
      sent_when_fired = sent;
    };
    auto sender = [&]() -> rn::task<void> {
      static const std::string chunk(64, 's');
      for (; sent < sends; ++sent) {
        bool ok = true;
        if (whole) ok = static_cast<bool>(co_await s.send_all(rn::buffer(chunk)));
        else ok = (co_await s.send(rn::buffer(chunk))).value() == chunk.size();
        REQUIRE(ok);
      }
      (void)co_await s.close();
    };
    rn::sync_wait(ctx, rn::when_all(timer(), sender()));
    CHECK(sent_when_fired >= 0);
    CHECK(sent_when_fired < sends);
    MESSAGE("the 1 ms timer fired after " << sent_when_fired << " of " << sends << " sends");
    reader = {};
    ::close(setup.pair.peer);
  }
}
