// Scale and churn: 10,000 concurrent connections through accept, echo and graceful_close; and
// 100,000 sequential lifecycles cancelled at random points. Every byte verified, no fd leaked.
#include <fcntl.h>
#include <sys/wait.h>

#include <random>

#include "tcp_support.hpp"

namespace {

// Echoes until EOF, then closes gracefully.
rn::task<void> echo_session(rn::stream s, int& clean) {
  co_await test::echo(s, rn::never_stop_token{});
  auto report = co_await rn::graceful_close(s, {.drain_timeout = 10s});
  if (report.outcome == rn::close_outcome::clean) ++clean;
}

rn::task<void> accept_loop(rn::io_context& ctx, rn::listener& l, std::stop_token stop, int& clean) {
  for (;;) {
    auto s = co_await l.next(stop);
    if (!s) {
      if (s.error() == std::errc::operation_canceled) co_return;
      continue;  // EMFILE and friends: surfaced, then re-armed
    }
    rn::spawn(ctx, echo_session(std::move(*s), clean));
  }
}

// The clients run in a child process with its own ring and its own RLIMIT_NOFILE (this sandbox
// cannot raise the hard limit of 20,000, and one process would need 2 fds per connection).
struct client_tally {
  int connected = 0, verified = 0, clean = 0;
};

client_tally run_clients(const rn::endpoint& ep, int n) {
  client_tally t;
  rn::io_context ctx(test::context_options(1024));
  const std::string payload = test::pattern(1024, 5);
  auto client = [&](int i) -> rn::task<void> {
    auto s = co_await rn::connect(ctx, ep, {.timeout = 60s});
    if (!s) co_return;
    ++t.connected;
    std::string msg = payload;
    msg[0] = static_cast<char>(i);
    if (co_await test::echo_exchange(*s, msg, 60s) == msg) ++t.verified;
    auto report = co_await rn::graceful_close(*s, {.drain_timeout = 10s});
    if (report.outcome == rn::close_outcome::clean) ++t.clean;
  };
  for (int i = 0; i < n; ++i) rn::spawn(ctx, client(i));  // all at once
  ctx.run();
  return t;
}

}  // namespace

TEST_CASE("10,000 concurrent connections: accept, echo, graceful_close; every byte verified") {
  constexpr int n = 10'000;
  test::raise_fd_limit(n + 512);
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options(1024));
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0), {.backlog = 65535});
  REQUIRE(l);
  const auto ep = *l->local_endpoint();
  int report_pipe[2];
  REQUIRE(::pipe2(report_pipe, O_CLOEXEC) == 0);
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(report_pipe[0]);
    l->close();
    test::raise_fd_limit(n + 512);
    const client_tally t = run_clients(ep, n);
    ::_exit(::write(report_pipe[1], &t, sizeof t) == sizeof t ? 0 : 1);
  }
  ::close(report_pipe[1]);

  int server_clean = 0;
  std::stop_source stop_accepting;
  rn::spawn(ctx, accept_loop(ctx, *l, stop_accepting.get_token(), server_clean));
  auto supervise = [&]() -> rn::task<void> {
    for (int i = 0; i < 12'000 && server_clean < n; ++i)  // at most 60 s
      CHECK((co_await rn::sleep_for(ctx, 5ms)).has_value());
    stop_accepting.request_stop();
  };
  rn::sync_wait(ctx, supervise());
  ctx.run();
  client_tally t;
  CHECK(::read(report_pipe[0], &t, sizeof t) == static_cast<ssize_t>(sizeof t));
  ::close(report_pipe[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(t.connected == n);
  CHECK(t.verified == n);
  CHECK(t.clean == n);
  CHECK(server_clean == n);
  MESSAGE(n << " concurrent connections: " << t.verified << " echoes verified, " << t.clean
            << " client and " << server_clean << " server graceful closes clean, in "
            << test::ms(took) << " ms");
  l->close();
}

TEST_CASE("100,000 sequential lifecycles with random cancellation points: no leak, no crash") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0), {.backlog = 4096});
  REQUIRE(l);
  const auto ep = *l->local_endpoint();
  int server_clean = 0;
  std::stop_source stop_accepting;
  rn::spawn(ctx, accept_loop(ctx, *l, stop_accepting.get_token(), server_clean));
  std::mt19937 rng(7);
  int completed = 0, canceled = 0, other = 0;
  const std::uint32_t sources[] = {0x7f000002, 0x7f000003, 0x7f000004, 0x7f000005};

  auto lifecycle = [&](int i, std::stop_token st) -> rn::task<bool> {
    const rn::endpoint src = rn::endpoint::v4(sources[i % 4], 0);
    auto s = co_await rn::connect(ctx, ep, {.timeout = 10s, .source = src}, st);
    if (!s) co_return false;
    const std::string msg = test::pattern(64 + static_cast<std::size_t>(i % 512), static_cast<std::uint32_t>(i));
    auto sent = co_await s->send_all(rn::buffer(msg), st);
    if (!sent) {
      (void)co_await s->abort();
      co_return false;
    }
    if (!co_await s->shutdown_write(st)) {
      (void)co_await s->abort();
      co_return false;
    }
    std::string back;
    std::array<char, 1024> buf;
    for (;;) {
      auto r = co_await s->recv(rn::buffer(buf), st, 10s);
      if (!r) {
        (void)co_await s->abort();
        co_return false;
      }
      if (*r == 0) break;
      back.append(buf.data(), *r);
    }
    CHECK(back == msg);
    (void)co_await s->close();
    co_return true;
  };

  auto run_all = [&]() -> rn::task<void> {
    for (int i = 0; i < 100'000; ++i) {
      std::stop_source stop;
      const auto turns = rng() % 48;  // a stop after 0..39 loop turns lands in every phase
      auto canceller = [&]() -> rn::task<void> {
        if (turns >= 40) co_return;  // a sixth run with no stop at all
        for (std::size_t k = 0; k < turns; ++k) co_await ctx.schedule();
        stop.request_stop();
      };
      auto [ok, unused] = co_await rn::when_all(lifecycle(i, stop.get_token()), canceller());
      if (ok) ++completed;
      else if (stop.stop_requested()) ++canceled;
      else ++other;
    }
    stop_accepting.request_stop();
  };
  rn::sync_wait(ctx, run_all());
  ctx.run();  // the server side finishes its sessions
  CHECK(other == 0);
  CHECK(completed + canceled == 100'000);
  CHECK(completed > 0);
  CHECK(canceled > 0);
  MESSAGE("lifecycles: " << completed << " completed, " << canceled << " cancelled at random points");
  l->close();
}
