// server: accept loop, counters of how connections ended, and shutdown with idle, busy and stuck
// connections within the grace period.
#include <thread>
#include <vector>

#include "tcp_support.hpp"

namespace {

constexpr auto echo = [](rn::stream& s, rn::inplace_stop_token finish) { return test::echo(s, finish); };

// Plain-socket clients of three kinds, each on its own thread.
enum class behaviour {
  idle,   // sends nothing; sends FIN when it reads EOF
  busy,   // sends and reads echoes until it reads EOF, then sends FIN
  stuck,  // ignores our FIN and never closes
};

struct client {
  int fd = -1;
  behaviour kind;
  test::read_result ending;
  std::jthread thread;

  client(const rn::endpoint& ep, behaviour b) : fd(test::raw_connect(ep)), kind(b) {
    thread = std::jthread([this](std::stop_token quit) { run(quit); });
  }
  ~client() {
    thread.request_stop();
    thread.join();
    ::close(fd);
  }
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  void run(std::stop_token quit) {
    test::bound_io_time(fd, 1);
    const std::string msg = "ping";
    char buf[4096];
    while (!quit.stop_requested()) {
      if (kind == behaviour::busy && !test::write_all(fd, msg)) return;
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n == 0 && kind != behaviour::stuck) {  // EOF: answer with our own FIN
        ::shutdown(fd, SHUT_WR);
        return;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        ending.error = errno;
        return;
      }
      if (kind == behaviour::stuck && n == 0) std::this_thread::sleep_for(10ms);
    }
  }
};

}  // namespace

TEST_CASE("server: shutdown finishes idle and busy connections cleanly and resets stuck ones") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  rn::server srv(ctx, std::move(*l), echo);
  const auto ep = *srv.local_endpoint();
  rn::spawn(ctx, srv.run());

  std::vector<std::unique_ptr<client>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(std::make_unique<client>(ep, behaviour::idle));
  for (int i = 0; i < 4; ++i) clients.push_back(std::make_unique<client>(ep, behaviour::busy));
  for (int i = 0; i < 3; ++i) clients.push_back(std::make_unique<client>(ep, behaviour::stuck));
  auto body = [&]() -> rn::task<rn::shutdown_report> {
    for (int i = 0; i < 2000 && srv.active() < clients.size(); ++i)
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
    CHECK(srv.active() == clients.size());
    co_return co_await srv.shutdown(300ms);
  };
  const auto report = rn::sync_wait(ctx, body());
  ctx.run();
  CHECK(report.finished == 8);
  CHECK(report.aborted == 3);
  CHECK(report.errors == 0);
  CHECK(report.elapsed >= 300ms);
  CHECK(report.elapsed < 300ms + 10s);
  CHECK(srv.active() == 0);
  const auto& c = srv.counters();
  CHECK(c.accepted == 11);
  CHECK(c.clean == 8);
  CHECK(c.drain_timeout == 3);
  MESSAGE("shutdown took " << test::ms(report.elapsed) << " ms with a 300 ms grace");
  clients.clear();
}

TEST_CASE("server: without stuck connections shutdown returns well before the grace period") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  rn::server srv(ctx, std::move(*l), echo);
  rn::spawn(ctx, srv.run());
  std::vector<std::unique_ptr<client>> clients;
  for (int i = 0; i < 5; ++i) clients.push_back(std::make_unique<client>(*srv.local_endpoint(), behaviour::idle));
  auto body = [&]() -> rn::task<rn::shutdown_report> {
    for (int i = 0; i < 2000 && srv.active() < clients.size(); ++i)
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
    co_return co_await srv.shutdown(30s);
  };
  const auto report = rn::sync_wait(ctx, body());
  CHECK(report.finished == 5);
  CHECK(report.aborted == 0);
  CHECK(report.elapsed < 10s);
  CHECK_FALSE(srv.local_endpoint().has_value());  // the listener is closed
}

TEST_CASE("server: counts how connections ended before any shutdown, and handler exceptions") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  int calls = 0;
  auto handler = [&](rn::stream& s, rn::inplace_stop_token st) -> rn::task<void> {
    if (++calls == 1) throw std::runtime_error("handler failed");
    co_await echo(s, st);
  };
  rn::server srv(ctx, std::move(*l), handler);
  const auto ep = *srv.local_endpoint();
  rn::spawn(ctx, srv.run());
  std::jthread clients([&] {
    for (int i = 0; i < 3; ++i) {  // each: send, half-close, read the echo to EOF
      const int fd = test::raw_connect(ep);
      test::write_all(fd, "hello");
      ::shutdown(fd, SHUT_WR);
      (void)test::read_to_end(fd);
      ::close(fd);
    }
    const int rst = test::raw_connect(ep);  // and one that resets
    test::set_linger_rst(rst);
    ::close(rst);
  });
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < 5000 && srv.counters().clean + srv.counters().peer_reset < 4; ++i)
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
    (void)co_await srv.shutdown(1s);
  };
  rn::sync_wait(ctx, body());
  clients.join();
  const auto& c = srv.counters();
  CHECK(c.accepted == 4);
  CHECK(c.handler_exceptions == 1);
  CHECK(c.clean + c.peer_reset == 4);
  CHECK(c.peer_reset >= 1);
}

TEST_CASE("server: a handler that closes the stream itself may say how it ended") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto resets = [](rn::stream& s, rn::inplace_stop_token) -> rn::task<rn::close_outcome> {
    (void)co_await s.abort();
    co_return rn::close_outcome::canceled;
  };
  rn::server srv(ctx, std::move(*l), resets);
  const auto ep = *srv.local_endpoint();
  rn::spawn(ctx, srv.run());
  std::jthread client([&] {
    const int fd = test::raw_connect(ep);
    CHECK(test::read_to_end(fd).error == ECONNRESET);
    ::close(fd);
  });
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < 5000 && srv.counters().we_reset == 0; ++i)
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
    (void)co_await srv.shutdown(1s);
  };
  rn::sync_wait(ctx, body());
  client.join();
  CHECK(srv.counters().we_reset == 1);
  CHECK(srv.counters().closed_by_handler == 0);
}
