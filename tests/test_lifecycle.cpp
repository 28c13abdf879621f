// The end of a connection: the RST-on-close problem shown both ways, drain deadline and cap,
// peer resets, cancellation, and what each outcome looks like to the peer.
#include <thread>

#include "tcp_support.hpp"

using test::port_side;
using test::tcp_state;


TEST_CASE("the RST problem: naive close with unread data resets the peer; graceful_close does not") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  const std::string request = test::pattern(64 * 1024, 1);   // the peer sends, we never read
  const std::string response = test::pattern(1 << 20, 2);    // we send, the peer reads slowly

  SUBCASE("naive close()") {
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    REQUIRE(test::write_all(p.peer, request));
    test::read_result seen;
    std::jthread peer([&] {
      std::this_thread::sleep_for(50ms);  // let our close happen with its data still unread
      seen = test::read_to_end(p.peer);
    });
    auto body = [&]() -> rn::task<void> {
      auto sent = co_await p.ours.send_all(rn::buffer(response));
      CHECK(sent.bytes == response.size());
      for (int i = 0; i < 200 && *p.ours.unread_bytes() < request.size(); ++i)
        CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());
      CHECK(*p.ours.unread_bytes() == request.size());  // close now means RST
      CHECK((co_await p.ours.close()).has_value());
    };
    rn::sync_wait(ctx, body());
    peer.join();
    CHECK(seen.error == ECONNRESET);
    MESSAGE("naive close: peer read " << seen.data.size() << " of " << response.size()
                                      << " bytes, then " << std::string(std::strerror(seen.error)));
    ::close(p.peer);
  }

  SUBCASE("graceful_close()") {
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    REQUIRE(test::write_all(p.peer, request));
    test::read_result seen;
    std::jthread peer([&] {
      std::this_thread::sleep_for(50ms);
      seen = test::read_to_end(p.peer);  // to our FIN
      ::shutdown(p.peer, SHUT_WR);       // then its own FIN
    });
    auto body = [&]() -> rn::task<rn::close_report> {
      auto sent = co_await p.ours.send_all(rn::buffer(response));
      CHECK(sent.bytes == response.size());
      co_return co_await rn::graceful_close(p.ours, {.drain_timeout = 10s});
    };
    auto report = rn::sync_wait(ctx, body());
    peer.join();
    CHECK(report.outcome == rn::close_outcome::clean);
    CHECK(report.bytes_drained == request.size());
    CHECK_FALSE(report.reset_sent);
    CHECK(report.unread_at_close == 0);
    CHECK(seen.error == 0);               // a clean EOF
    CHECK(seen.data == response);         // every byte, in order
    ::close(p.peer);
  }
}

TEST_CASE("graceful_close: a peer that never sends FIN ends drain_timeout, then RST") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
  const auto report = rn::sync_wait(ctx, rn::graceful_close(p.ours, {.drain_timeout = 200ms}));
  CHECK(report.outcome == rn::close_outcome::drain_timeout);
  CHECK(report.reset_sent);
  CHECK(report.elapsed >= 200ms);
  CHECK(report.elapsed < 200ms + 10s);
  CHECK_FALSE(p.ours.is_open());
  // The peer saw our FIN (EOF), then the RST ends the connection for good.
  const auto seen = test::read_to_end(p.peer);
  CHECK(seen.error == 0);
  char c = 'x';
  ssize_t w = 0;
  for (int i = 0; i < 100 && w >= 0; ++i) w = ::send(p.peer, &c, 1, MSG_NOSIGNAL);
  CHECK(w < 0);
  CHECK((errno == EPIPE || errno == ECONNRESET));
  ::close(p.peer);
}

TEST_CASE("graceful_close: a flooding peer ends drain_limit after at most max bytes + one") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
  std::atomic<bool> flooding{true};
  int flood_error = 0;
  std::jthread flood([&] {
    const std::string chunk(64 * 1024, 'f');
    while (flooding) {
      if (::send(p.peer, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0) {
        flood_error = errno;
        return;
      }
    }
  });
  constexpr std::size_t cap = 256 * 1024;
  const auto report = rn::sync_wait(ctx, rn::graceful_close(p.ours, {.drain_timeout = 30s, .max_drain_bytes = cap}));
  CHECK(report.outcome == rn::close_outcome::drain_limit);
  CHECK(report.bytes_drained > cap);
  CHECK(report.bytes_drained <= cap + 1);
  CHECK(report.reset_sent);
  flood.join();  // its send fails once our RST arrives
  CHECK((flood_error == ECONNRESET || flood_error == EPIPE));
  ::close(p.peer);
}

TEST_CASE("drain: a peer reset is reported as reset; graceful_close as peer_reset") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  {
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    REQUIRE(test::write_all(p.peer, "some bytes"));
    test::set_linger_rst(p.peer);
    ::close(p.peer);
    auto d = rn::sync_wait(ctx, rn::drain(p.ours, {.timeout = 10s}));
    CHECK(d.outcome == rn::drain_outcome::reset);
    CHECK(d.error == std::errc::connection_reset);
    (void)rn::sync_wait(ctx, p.ours.close());
  }
  {
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    test::set_linger_rst(p.peer);
    ::close(p.peer);
    std::this_thread::sleep_for(10ms);
    auto report = rn::sync_wait(ctx, rn::graceful_close(p.ours));
    CHECK(report.outcome == rn::close_outcome::peer_reset);
    CHECK_FALSE(report.reset_sent);
    CHECK_FALSE(p.ours.is_open());
  }
}

TEST_CASE("drain: exact max_bytes then FIN is eof; on_data sees every byte") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
  const std::string data = test::pattern(100'000, 3);
  REQUIRE(test::write_all(p.peer, data));
  ::shutdown(p.peer, SHUT_WR);
  std::string got;
  std::array<std::byte, 1000> buf{};
  auto d = rn::sync_wait(ctx, rn::drain(p.ours, {.timeout = 10s, .max_bytes = data.size(), .buffer = buf},
                                        rn::never_stop_token{}, [&](rn::const_buffer b) {
                                          got.append(reinterpret_cast<const char*>(b.data()), b.size());
                                        }));
  CHECK(d.outcome == rn::drain_outcome::eof);
  CHECK(d.bytes == data.size());
  CHECK(got == data);
  // Whatever ended it: on_data saw the bytes counted, in order, and all of them at EOF.
  test::invariant(d.bytes == got.size() && data.starts_with(got), "drain lost or reordered bytes");
  test::invariant(d.outcome != rn::drain_outcome::eof || got == data, "drain ended eof before the end");
  (void)rn::sync_wait(ctx, p.ours.close());
  ::close(p.peer);
}

TEST_CASE("graceful_close: a stop request aborts it, reported as canceled") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
  std::stop_source stop;
  std::jthread stopper([&] {
    std::this_thread::sleep_for(50ms);
    stop.request_stop();
  });
  auto report = rn::sync_wait(ctx, rn::graceful_close(p.ours, {.drain_timeout = 1h}, stop.get_token()));
  CHECK(report.outcome == rn::close_outcome::canceled);
  CHECK(report.reset_sent);
  CHECK(report.elapsed < 30s);
  ::close(p.peer);
}

TEST_CASE("graceful_close after the peer's FIN: close(2) sends our FIN, a send in flight first ends") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  REQUIRE(l);
  auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
  std::size_t send_bytes = 0;
  SUBCASE("nothing to send") {}
  // More than the socket buffers hold while the peer does not read: still in flight when
  // graceful_close() begins, which must wait for it (closing now would cut it short).
  SUBCASE("16 MiB still being sent") {
    send_bytes = 16 << 20;
    const int small = 64 * 1024;
    REQUIRE(::setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
  }
  REQUIRE(test::write_all(p.peer, "bye"));
  ::shutdown(p.peer, SHUT_WR);
  const std::string response = test::pattern(send_bytes, 3);
  test::read_result seen;
  std::jthread peer([&] {
    std::this_thread::sleep_for(50ms);
    seen = test::read_to_end(p.peer);
  });
  auto body = [&]() -> rn::task<rn::close_report> {
    char buf[16];
    auto got = co_await p.ours.recv(rn::buffer(buf));
    CHECK(got.value_or(0) == 3);
    got = co_await p.ours.recv(rn::buffer(buf));
    CHECK(got.value_or(1) == 0);  // the peer's FIN
    REQUIRE(p.ours.read_eof());
    bool sent_all = false;
    if (!response.empty()) {
      rn::spawn(ctx, [](rn::stream& s, const std::string& r, bool& done) -> rn::task<void> {
        done = (co_await s.send_all(rn::buffer(r))).bytes == r.size();
      }(p.ours, response, sent_all));
      CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());  // the spawned send starts meanwhile
      REQUIRE_FALSE(sent_all);                                 // and is still in flight
    }
    auto report = co_await rn::graceful_close(p.ours, {.drain_timeout = 10s});
    CHECK(sent_all == !response.empty());
    co_return report;
  };
  const auto report = rn::sync_wait(ctx, body());
  peer.join();
  CHECK(report.outcome == rn::close_outcome::clean);
  CHECK_FALSE(report.reset_sent);
  CHECK(report.bytes_drained == 0);
  CHECK(seen.error == 0);  // our FIN, not a reset
  CHECK(seen.data == response);
  ::close(p.peer);
}

// After the peer's FIN the kernel moves a send that has to wait for room into an io-wq worker,
// where neither IORING_OP_ASYNC_CANCEL nor a linked timeout reaches it. Ending the send, the
// stream or its context must not wait until the peer reads (it may never): generated over {the
// peer's FIN first or not} x {stop token, timeout, close, abort, destructor, context destroyed} x
// {how long the send ran first}.
TEST_CASE("ending a send the peer does not read, or its stream, ends it at once") {
  enum class end_by { stop, timeout, close, abort, destroy, context_destroyed };
  for (const bool fin_first : {false, true}) {
    for (const end_by how : {end_by::stop, end_by::timeout, end_by::close, end_by::abort, end_by::destroy,
                             end_by::context_destroyed}) {
      for (const auto ran : {100us, 1000us, 20000us}) {
        CAPTURE(fin_first);
        CAPTURE(static_cast<int>(how));
        CAPTURE(ran.count());
        test::fd_leak_check fds;
        std::optional<rn::io_context> ctx(std::in_place, test::context_options());
        auto l = rn::listener::bind(*ctx, rn::endpoint::loopback_v4(0));
        REQUIRE(l);
        auto p = rn::sync_wait(*ctx, test::accept_raw_client(*l));
        const int small = 64 * 1024;
        REQUIRE(::setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
        if (fin_first) ::shutdown(p.peer, SHUT_WR);
        const std::string response = test::pattern(16 << 20, 4);
        auto stream = std::make_unique<rn::stream>(std::move(p.ours));
        std::optional<rn::transfer_result> sent;
        std::stop_source stop;
        const auto deadline = how == end_by::timeout ? ran + 20ms : rn::no_timeout;
        auto body = [&]() -> rn::task<std::chrono::steady_clock::duration> {
          if (fin_first) {
            char b[8];
            CHECK((co_await stream->recv(rn::buffer(b))).value_or(1) == 0);
          }
          const auto t0 = std::chrono::steady_clock::now();
          rn::spawn(*ctx, [](rn::stream& s, const std::string& r, std::stop_token token,
                             std::chrono::nanoseconds timeout,
                             std::optional<rn::transfer_result>& out) -> rn::task<void> {
            out = co_await s.send_all(rn::buffer(r), token, timeout);
          }(*stream, response, stop.get_token(), deadline, sent));
          CHECK((co_await rn::sleep_for(*ctx, ran)).has_value());
          // Nothing but the deadline can have ended the send yet; and on a machine that stalled
          // this thread past the deadline, it may have done so already.
          if (how != end_by::timeout || std::chrono::steady_clock::now() < t0 + deadline)
            REQUIRE_FALSE(sent.has_value());
          const auto t1 = std::chrono::steady_clock::now();
          switch (how) {
            case end_by::stop: stop.request_stop(); break;
            case end_by::timeout: break;
            case end_by::close: CHECK((co_await stream->close()).has_value()); break;
            case end_by::abort: CHECK((co_await stream->abort()).has_value()); break;
            case end_by::destroy: stream.reset(); break;
            case end_by::context_destroyed: co_return std::chrono::steady_clock::duration{};
          }
          for (int i = 0; i < 200 && !sent; ++i) CHECK((co_await rn::sleep_for(*ctx, 5ms)).has_value());
          // From what ended it: a deadline counts from the start.
          co_return std::chrono::steady_clock::now() - (how == end_by::timeout ? t0 + deadline : t1);
        };
        // The peer reads once the stream ended, or after 1.5 s (so that a stuck send fails the
        // test instead of hanging it): what it sees is what the kernel had queued.
        test::read_result seen;
        std::atomic<bool> ended{false};
        std::jthread peer([&] {
          for (int i = 0; i < 150 && !ended; ++i) std::this_thread::sleep_for(10ms);
          seen = test::read_to_end(p.peer);
        });
        auto took = rn::sync_wait(*ctx, body());
        if (how == end_by::context_destroyed) {
          const auto t0 = std::chrono::steady_clock::now();
          ctx.reset();  // the send's detached task is destroyed, never resumed
          took = std::chrono::steady_clock::now() - t0;
          CHECK_FALSE(sent.has_value());
          CHECK_FALSE(stream->is_open());
        } else {
          REQUIRE(sent.has_value());
          CHECK(sent->error == (how == end_by::timeout ? std::errc::timed_out : std::errc::operation_canceled));
          CHECK(sent->bytes < response.size());
        }
        if (how == end_by::stop || how == end_by::timeout) {
          REQUIRE(stream->is_open());  // only the send ended: closing is the caller's
          CHECK(rn::sync_wait(*ctx, stream->close()).has_value());
        }
        ended = true;
        peer.join();
        CHECK(took < 500ms);
        if (how == end_by::abort) {
          CHECK(seen.error == ECONNRESET);
        } else {
          CHECK(seen.error == 0);  // the queued bytes, then our FIN
          CHECK(seen.data == response.substr(0, seen.data.size()));
          if (sent) CHECK(seen.data.size() >= sent->bytes);
        }
        stream.reset();
        l->close();
        ::close(p.peer);
      }
    }
  }
}

// The other side of the check above: a stop that loses its race (the send completed, its cancel
// answers ENOENT) must not end another send that nobody asked to stop, here one waiting for room
// at a peer that starts reading 30 ms later.
TEST_CASE("a stop that loses its race to a send's completion ends no other send") {
  for (const std::size_t stopped_len : {std::size_t{0}, std::size_t{16}}) {
    CAPTURE(stopped_len);
    test::fd_leak_check fds;
    rn::io_context ctx(test::context_options());
    auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
    REQUIRE(l);
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    const int small = 64 * 1024;
    REQUIRE(::setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    const std::string big = test::pattern(8 << 20, 7);
    std::optional<rn::transfer_result> healthy;
    std::optional<rn::result<std::size_t>> stopped;
    std::atomic<bool> read_now{false};
    test::read_result seen;
    std::jthread peer([&] {
      for (int i = 0; i < 300 && !read_now; ++i) std::this_thread::sleep_for(1ms);
      seen = test::read_to_end(p.peer);
    });
    auto body = [&]() -> rn::task<void> {
      rn::spawn(ctx, [](rn::stream& s, const std::string& r,
                        std::optional<rn::transfer_result>& out) -> rn::task<void> {
        out = co_await s.send_all(rn::buffer(r));
      }(p.ours, big, healthy));
      CHECK((co_await rn::sleep_for(ctx, 2ms)).has_value());  // it waits for room now
      std::stop_source stop;
      static const char header[16] = {};
      rn::spawn(ctx, [](rn::stream& s, std::size_t n, std::stop_token token,
                        std::optional<rn::result<std::size_t>>& out) -> rn::task<void> {
        out = co_await s.send(rn::buffer(header, n), token);  // completes inline
      }(p.ours, stopped_len, stop.get_token(), stopped));
      rn::spawn(ctx, [](std::stop_source& s) -> rn::task<void> {
        s.request_stop();  // in the same turn: its cancel finds the send gone
        co_return;
      }(stop));
      CHECK((co_await rn::sleep_for(ctx, 30ms)).has_value());  // the check would have fired
      read_now = true;
      for (int i = 0; i < 400 && !healthy; ++i) CHECK((co_await rn::sleep_for(ctx, 5ms)).has_value());
      CHECK_FALSE(p.ours.write_shut());
      CHECK((co_await p.ours.close()).has_value());
    };
    rn::sync_wait(ctx, body());
    peer.join();
    REQUIRE(healthy.has_value());
    CHECK_FALSE(healthy->error);
    CHECK(healthy->bytes == big.size());
    CHECK(seen.error == 0);
    CHECK(seen.data.size() == big.size() + (stopped && stopped->has_value() ? **stopped : 0));
    ::close(p.peer);
  }
}

// A send_all whose deadline comes while its send is stuck (the peer half-closed and reads
// nothing) reports timed_out, also when the cut send had moved bytes (MSG_WAITALL returns them).
TEST_CASE("send_all stuck at its deadline reports timed_out") {
  for (int round = 0; round < 6; ++round) {
    CAPTURE(round);
    test::fd_leak_check fds;
    rn::io_context ctx(test::context_options());
    auto l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
    REQUIRE(l);
    auto p = rn::sync_wait(ctx, test::accept_raw_client(*l));
    const int small = 64 * 1024;
    REQUIRE(::setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0);
    ::shutdown(p.peer, SHUT_WR);
    const std::string big = test::pattern(16 << 20, 4);
    auto body = [&]() -> rn::task<rn::transfer_result> {
      char b[8];
      CHECK((co_await p.ours.recv(rn::buffer(b))).value_or(1) == 0);
      co_return co_await p.ours.send_all(rn::buffer(big), rn::never_stop_token{}, 3ms);
    };
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = rn::sync_wait(ctx, body());
    CHECK(std::chrono::steady_clock::now() - t0 < 500ms);
    CHECK(r.error == std::errc::timed_out);
    CHECK(r.bytes < big.size());
    CHECK(rn::sync_wait(ctx, p.ours.close()).has_value());
    ::close(p.peer);
  }
}
