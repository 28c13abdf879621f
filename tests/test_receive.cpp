// stream::receive(): multishot recv into a provided buffer ring — order, EOF, starvation and
// re-arming, cancellation (armed and starved), close, drain takeover, zero allocations.
#include <thread>

#include "tcp_support.hpp"

namespace {

std::string text(const rn::received_buffer& b) {
  return {reinterpret_cast<const char*>(b.data().data()), b.size()};
}

}  // namespace

TEST_CASE("receive: 4 MiB through a ring of 8 small buffers arrive complete and in order") {
  test::fd_leak_check fds;
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 8, 4096);
  REQUIRE(bufs);
  auto p = lo.accept();
  const std::string data = test::pattern(4 << 20, 11);
  std::jthread sender([&] {
    test::write_all(p.peer, data);
    ::shutdown(p.peer, SHUT_WR);
  });
  auto body = [&]() -> rn::task<std::string> {
    std::string got;
    std::vector<rn::received_buffer> held;  // hold some, so the ring runs dry and re-arms
    bool eof = false;
    for (;;) {
      auto r = co_await p.ours.receive(*bufs);
      CHECK(r);
      if (!r) break;
      if (r->size() == 0) {
        eof = true;
        break;
      }
      got += text(*r);
      held.push_back(std::move(*r));
      if (held.size() == 6) held.clear();
    }
    // Whatever failed on the way: what arrived is in order, and whole once EOF was reported.
    test::invariant(data.starts_with(got), "receive() lost or reordered bytes");
    test::invariant(!eof || got == data, "receive() reported EOF before the end");
    co_return got;
  };
  const std::string got = rn::sync_wait(ctx, body());
  CHECK(got.size() == data.size());
  CHECK(got == data);
  CHECK(p.ours.read_eof());
  CHECK(bufs->available() == 8);  // every buffer is back
  auto report = rn::sync_wait(ctx, rn::graceful_close(p.ours));
  CHECK(report.outcome == rn::close_outcome::clean);
  ::close(p.peer);
}

TEST_CASE("receive: a stop cancels the armed recv; the next call re-arms and gets the data") {
  test::fd_leak_check fds;
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 4, 1024);
  REQUIRE(bufs);
  auto p = lo.accept();
  rn::inplace_stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(20ms);
    stop.request_stop();
  });
  auto first = rn::sync_wait(ctx, p.ours.receive(*bufs, stop.get_token()));
  CHECK(first.error() == std::errc::operation_canceled);
  stopper.join();
  REQUIRE(test::write_all(p.peer, "after the stop"));
  auto second = rn::sync_wait(ctx, p.ours.receive(*bufs));
  REQUIRE(second);
  CHECK(text(*second) == "after the stop");
  second->reset();
  CHECK(bufs->available() == 4);
  (void)rn::sync_wait(ctx, p.ours.close());
  ::close(p.peer);
}

TEST_CASE("receive: a stop also ends a wait starved of buffers") {
  test::fd_leak_check fds;
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 2, 16);
  REQUIRE(bufs);
  auto p = lo.accept();
  REQUIRE(test::write_all(p.peer, std::string(16 * 8, 's')));
  rn::inplace_stop_source stop;
  auto body = [&]() -> rn::task<void> {
    auto a = co_await p.ours.receive(*bufs);
    auto b = co_await p.ours.receive(*bufs);
    REQUIRE(a);
    REQUIRE(b);  // both buffers held: the kernel has none left for the rest
    auto stopper = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 20ms)).has_value());
      stop.request_stop();
    };
    auto [c, unused] = co_await rn::when_all(p.ours.receive(*bufs, stop.get_token()), stopper());
    CHECK(c.error() == std::errc::operation_canceled);
  };
  rn::sync_wait(ctx, body());
  CHECK(bufs->available() == 2);
  (void)rn::sync_wait(ctx, p.ours.abort());
  ::close(p.peer);
}

TEST_CASE("receive: close() cancels a pending receive and returns every buffer") {
  test::fd_leak_check fds;
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 4, 1024);
  REQUIRE(bufs);
  auto p = lo.accept();
  auto body = [&]() -> rn::task<void> {
    auto reader = [&]() -> rn::task<void> {
      auto r = co_await p.ours.receive(*bufs);
      CHECK(r.error() == std::errc::operation_canceled);
    };
    auto closer = [&]() -> rn::task<void> {
      CHECK((co_await rn::sleep_for(ctx, 20ms)).has_value());
      CHECK((co_await p.ours.close()).has_value());
    };
    co_await rn::when_all(reader(), closer());
  };
  rn::sync_wait(ctx, body());
  CHECK(bufs->available() == 4);
  ::close(p.peer);
}

TEST_CASE("receive: graceful_close drains what receive() queued, in order, before reading on") {
  test::fd_leak_check fds;
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 16, 1024);
  REQUIRE(bufs);
  auto p = lo.accept();
  const std::string data = test::pattern(10'000, 4);
  REQUIRE(test::write_all(p.peer, data));
  auto body = [&]() -> rn::task<rn::close_report> {
    auto first = co_await p.ours.receive(*bufs);  // the rest stays queued or in the socket
    REQUIRE(first);
    const std::size_t taken = first->size();
    first->reset();
    for (int i = 0; i < 100 && !p.ours.receiving(); ++i) (void)co_await rn::sleep_for(ctx, 1ms);
    ::shutdown(p.peer, SHUT_WR);
    auto report = co_await rn::graceful_close(p.ours, {.drain_timeout = 10s});
    CHECK(taken + report.bytes_drained == data.size());
    co_return report;
  };
  auto report = rn::sync_wait(ctx, body());
  CHECK(report.outcome == rn::close_outcome::clean);
  CHECK(bufs->available() == 16);
  ::close(p.peer);
}

TEST_CASE("receive: bad arguments and closed streams are errors, not crashes") {
  rn::io_context ctx(test::context_options());
  CHECK(rn::buffer_ring::create(ctx, 3, 1024).error() == std::errc::invalid_argument);
  CHECK(rn::buffer_ring::create(ctx, 0, 1024).error() == std::errc::invalid_argument);
  CHECK(rn::buffer_ring::create(ctx, 4, 0).error() == std::errc::invalid_argument);
  auto bufs = rn::buffer_ring::create(ctx, 4, 64);
  REQUIRE(bufs);
  rn::stream closed;
  CHECK(rn::sync_wait(ctx, closed.receive(*bufs)).error() == std::errc::bad_file_descriptor);
}

TEST_CASE("receive: zero allocations per received buffer" * doctest::skip(!test::counting_allocations)) {
  test::loopback lo;
  rn::io_context& ctx = lo.ctx;
  auto bufs = rn::buffer_ring::create(ctx, 64, 256);
  REQUIRE(bufs);
  auto p = lo.accept();
  std::size_t during = 0;
  bool ok = true;
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < 10; ++i) {  // warm-up
      (void)::send(p.peer, "w", 1, 0);
      (void)co_await p.ours.receive(*bufs);
    }
    const std::size_t before = test::allocations();
    for (int i = 0; i < 1000; ++i) {
      (void)::send(p.peer, "z", 1, 0);
      auto r = co_await p.ours.receive(*bufs);
      ok = ok && r && r->size() == 1;
    }
    during = test::allocations() - before;
  };
  rn::sync_wait(ctx, body());
  CHECK(ok);
  CHECK(during == 0);
  (void)rn::sync_wait(ctx, p.ours.abort());
  ::close(p.peer);
}
