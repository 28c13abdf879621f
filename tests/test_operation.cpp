// The generic operation awaitable: cancellation before/during/racing completion, stop from other
// threads, timeout vs cancel, SQ/CQ pressure, zero allocations.
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <span>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

// A user-defined operation: the public extension point, and a kernel op we control fully.
struct recv_op {
  int fd;
  std::span<char> buf;
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_recv(sqe, fd, buf.data(), buf.size(), 0); }
  static rn::result<std::size_t> complete(int res, std::uint32_t) noexcept {
    return rn::detail::size_result(res);
  }
};
template <class Token = rn::never_stop_token>
auto recv_some(rn::io_context& ctx, int fd, std::span<char> b, Token t = {},
               std::chrono::nanoseconds timeout = rn::no_timeout) {
  return rn::operation<recv_op, Token>(ctx, recv_op{fd, b}, std::move(t), timeout);
}

struct socket_pair {
  int fd[2] = {-1, -1};
  socket_pair() { REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd) == 0); }
  ~socket_pair() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  socket_pair(const socket_pair&) = delete;
  socket_pair& operator=(const socket_pair&) = delete;
  void send_byte(char c) const { REQUIRE(::write(fd[1], &c, 1) == 1); }
};

std::uint32_t sq_tail(rn::io_context& ctx) { return ctx.native_handle().sq.sqe_tail; }

}  // namespace

TEST_CASE("operation: a stop requested before start completes at once and submits nothing") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  std::stop_source src;
  src.request_stop();
  char c = 0;
  auto body = [&]() -> rn::task<void> {
    const auto tail = sq_tail(ctx);
    auto r = co_await recv_some(ctx, sp.fd[0], {&c, 1}, src.get_token());
    CHECK(r.error() == std::errc::operation_canceled);
    CHECK(sq_tail(ctx) == tail);  // no SQE was even prepared
    auto s = co_await rn::sleep_for(ctx, 1h, src.get_token());
    CHECK(s.error() == std::errc::operation_canceled);
    CHECK(sq_tail(ctx) == tail);
  };
  rn::sync_wait(ctx, body());
}

TEST_CASE("operation: a stop during the operation cancels it in the kernel and resumes once") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  std::stop_source src;
  int resumed = 0;
  char c = 0;
  auto reader = [&]() -> rn::task<void> {
    auto r = co_await recv_some(ctx, sp.fd[0], {&c, 1}, src.get_token());
    ++resumed;
    CHECK(r.error() == std::errc::operation_canceled);
  };
  auto stopper = [&]() -> rn::task<void> {
    CHECK((co_await rn::sleep_for(ctx, 10ms)).has_value());
    src.request_stop();  // on the ring's thread: ASYNC_CANCEL goes straight into the SQ
  };
  rn::sync_wait(ctx, rn::when_all(reader(), stopper()));
  CHECK(resumed == 1);
  // The byte sent afterwards was not consumed by a ghost recv.
  sp.send_byte('x');
  CHECK(::read(sp.fd[0], &c, 1) == 1);
  CHECK(c == 'x');
}

TEST_CASE("operation: a stop requested from another std::jthread cancels through the ring thread") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  std::stop_source src;
  char c = 0;
  std::jthread other([&] {
    std::this_thread::sleep_for(20ms);
    src.request_stop();
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto r = rn::sync_wait(ctx, recv_some(ctx, sp.fd[0], {&c, 1}, src.get_token()));
  CHECK(r.error() == std::errc::operation_canceled);
  CHECK(std::chrono::steady_clock::now() - t0 < 20s);
}

TEST_CASE("operation: a cancel racing the completion keeps the result, loses no byte, resumes once") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  std::mt19937 rng(12345);
  int data = 0, canceled = 0, resumed = 0;
  constexpr int rounds = 10'000;
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < rounds; ++i) {
      std::stop_source src;
      const char sent = static_cast<char>('a' + i % 26);
      char got = 0;
      auto race = [&]() -> rn::task<void> {
        switch (rng() % 3) {
          case 0:  // data queued before the recv reaches the kernel: the recv must win
            sp.send_byte(sent);
            src.request_stop();
            break;
          case 1:  // recv pending in the kernel, cancel submitted, then data: the cancel wins
            co_await ctx.schedule();
            src.request_stop();
            co_await ctx.schedule();
            sp.send_byte(sent);
            break;
          default:  // recv pending, data arrives, cancel requested before its CQE is seen
            co_await ctx.schedule();
            sp.send_byte(sent);
            src.request_stop();
            break;
        }
      };
      auto recv = [&]() -> rn::task<rn::result<std::size_t>> {
        auto r = co_await recv_some(ctx, sp.fd[0], {&got, 1}, src.get_token());
        ++resumed;
        co_return r;
      };
      auto [r, unused] = co_await rn::when_all(recv(), race());
      if (r) {
        ++data;
        CHECK(*r == 1);
        CHECK(got == sent);
      } else {
        ++canceled;
        CHECK(r.error() == std::errc::operation_canceled);
        char again = 0;  // the byte must still be there
        CHECK(::read(sp.fd[0], &again, 1) == 1);
        CHECK(again == sent);
      }
    }
  };
  rn::sync_wait(ctx, body());
  CHECK(resumed == rounds);
  CHECK(data + canceled == rounds);
  CHECK(data > 0);
  CHECK(canceled > 0);
  MESSAGE("race outcomes: data won " << data << ", cancel won " << canceled);
}

TEST_CASE("operation: stop from another thread racing completion, 10,000 times") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  constexpr int rounds = 10'000;
  int resumed = 0, data = 0;
  std::atomic<std::stop_source*> current{nullptr};
  std::atomic<int> go{0}, stopped{0};
  std::jthread stopper([&](std::stop_token quit) {
    for (int i = 0; i < rounds && !quit.stop_requested(); ++i) {
      while (go.load() <= i) {
        if (quit.stop_requested()) return;
      }
      current.load()->request_stop();
      stopped.store(i + 1);
    }
  });
  auto body = [&]() -> rn::task<void> {
    for (int i = 0; i < rounds; ++i) {
      std::stop_source src;
      current.store(&src);
      char got = 0;
      go.store(i + 1);
      if (i % 2) sp.send_byte('q');
      auto r = co_await recv_some(ctx, sp.fd[0], {&got, 1}, src.get_token());
      ++resumed;
      if (r) ++data;
      else CHECK(r.error() == std::errc::operation_canceled);
      if (i % 2 && !r) {  // cancelled, so the byte is still queued
        CHECK(::read(sp.fd[0], &got, 1) == 1);
      }
      while (stopped.load() <= i) {}  // src must outlive the other thread's request_stop
    }
  };
  rn::sync_wait(ctx, body());
  CHECK(resumed == rounds);
  MESSAGE("cross-thread race: data won " << data << " of " << rounds);
}

TEST_CASE("operation: a linked timeout reports timed_out, a stop reports operation_canceled") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  char c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto timed = rn::sync_wait(ctx, recv_some(ctx, sp.fd[0], {&c, 1}, rn::never_stop_token{}, 50ms));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(timed.error() == std::errc::timed_out);
  CHECK(took >= 50ms);
  CHECK(took < 20s);

  std::stop_source src;
  auto stopper = [&]() -> rn::task<void> {
    CHECK((co_await rn::sleep_for(ctx, 10ms)).has_value());
    src.request_stop();
  };
  auto [canceled, unused] = rn::sync_wait(
      ctx, rn::when_all(recv_some(ctx, sp.fd[0], {&c, 1}, src.get_token(), 1h), stopper()));
  CHECK(canceled.error() == std::errc::operation_canceled);

  // Data before the deadline: the timeout never fires and the result is the data.
  sp.send_byte('d');
  auto ok = rn::sync_wait(ctx, recv_some(ctx, sp.fd[0], {&c, 1}, rn::never_stop_token{}, 10s));
  REQUIRE(ok);
  CHECK(c == 'd');
}

TEST_CASE("operation: 4,096 operations in flight on an 8-entry ring") {
  test::fd_leak_check fds;
  auto opts = test::context_options(8);
  opts.cq_entries = 16;  // completions overflow the CQ too
  rn::io_context ctx(opts);
  constexpr int n = 4096;
  int finished = 0, canceled = 0;
  std::stop_source src;
  for (int i = 0; i < n; ++i) {
    rn::spawn(ctx, [](rn::io_context& c, int& f) -> rn::task<void> {
      auto r = co_await rn::sleep_for(c, 1ms);
      CHECK(r.has_value());
      ++f;
    }(ctx, finished));
    rn::spawn(ctx, [](rn::io_context& c, std::stop_token st, int& k) -> rn::task<void> {
      auto r = co_await rn::sleep_for(c, 1h, st);
      if (r.error() == std::errc::operation_canceled) ++k;
    }(ctx, src.get_token(), canceled));
  }
  rn::spawn(ctx, [](rn::io_context& c, std::stop_source& s) -> rn::task<void> {
    CHECK((co_await rn::sleep_for(c, 50ms)).has_value());
    s.request_stop();  // 4,096 cancels through the same 8 SQ slots
  }(ctx, src));
  ctx.run();
  CHECK(finished == n);
  CHECK(canceled == n);
}

TEST_CASE("operation: zero heap allocations per operation" * doctest::skip(!test::counting_allocations)) {
  rn::io_context ctx(test::context_options());
  socket_pair sp;
  std::stop_source src;
  std::size_t during = 0;
  bool all_ok = true;
  auto body = [&]() -> rn::task<void> {
    char c = 0;
    auto round = [&]() -> rn::task<void> { co_return; };
    co_await round();
    for (int i = 0; i < 100; ++i) {  // warm-up: ring vectors reach their steady size
      sp.send_byte('w');
      (void)co_await recv_some(ctx, sp.fd[0], {&c, 1});
    }
    const std::size_t before = test::allocations();
    for (int i = 0; i < 1000; ++i) {
      sp.send_byte('z');
      auto r1 = co_await recv_some(ctx, sp.fd[0], {&c, 1});
      sp.send_byte('y');
      auto r2 = co_await recv_some(ctx, sp.fd[0], {&c, 1}, src.get_token(), 5s);
      auto r3 = co_await rn::sleep_for(ctx, 0ns, src.get_token());
      all_ok = all_ok && r1 && r2 && r3;  // CHECK itself might allocate: assert afterwards
    }
    during = test::allocations() - before;
  };
  rn::sync_wait(ctx, body());
  CHECK(all_ok);
  CHECK(during == 0);
  MESSAGE("heap allocations for 3,000 operations: " << during);
}

TEST_CASE("task frames are recycled: spawn, when_all and nested tasks allocate nothing in steady state" *
          doctest::skip(!test::counting_allocations)) {
  rn::io_context ctx(test::context_options());
  int finished = 0;
  auto child = [](rn::io_context& c) -> rn::task<int> {
    co_return (co_await rn::sleep_for(c, 0ns)).has_value() ? 1 : 0;
  };
  auto connection = [&](rn::io_context& c) -> rn::task<void> {
    auto [a, b] = co_await rn::when_all(child(c), child(c));
    finished += a + b;
  };
  auto spawn_some = [&] {
    for (int i = 0; i < 64; ++i) rn::spawn(ctx, connection(ctx));
    ctx.run();
  };
  spawn_some();  // warm-up: the frame pool and both of the ring's ready vectors reach their
  spawn_some();  // steady size
  const std::size_t before = test::allocations();
  for (int round = 0; round < 10; ++round) spawn_some();
  const std::size_t during = test::allocations() - before;
  CHECK(finished == 12 * 64 * 2);
#ifdef RINGNET_DETAIL_FRAME_POOL
  CHECK(during == 0);
#endif
  MESSAGE("heap allocations for 640 spawned tasks with 1,920 child frames: " << during);
}
