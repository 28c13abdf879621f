// io_context: set-up fallbacks, probing, cross-thread wake-ups, stop, destruction.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <latch>
#include <system_error>
#include <memory>
#include <thread>

#include "support.hpp"

TEST_CASE("io_context: every ring mode works, falling back where the kernel refuses") {
  test::fd_leak_check fds;
  for (auto mode : {rn::ring_mode::defer_taskrun, rn::ring_mode::coop_taskrun, rn::ring_mode::basic}) {
    auto opts = test::context_options();
    opts.mode = mode;
    rn::io_context ctx(opts);
    CHECK(ctx.mode() >= mode);  // never more capable than asked for
    if (ctx.mode() == rn::ring_mode::defer_taskrun) {
      CHECK((ctx.setup_flags() & IORING_SETUP_DEFER_TASKRUN) != 0);
      CHECK((ctx.setup_flags() & IORING_SETUP_SINGLE_ISSUER) != 0);
    } else {
      CHECK((ctx.setup_flags() & IORING_SETUP_DEFER_TASKRUN) == 0);
    }
    auto r = rn::sync_wait(ctx, rn::sleep_for(ctx, 1ms));
    CHECK(r.has_value());
    MESSAGE("asked for mode " << static_cast<int>(mode) << ", got "
                              << static_cast<int>(ctx.mode()) << " (flags 0x" << std::hex
                              << ctx.setup_flags() << ")");
  }
}

TEST_CASE("io_context: probes opcodes once and honours disabled ones") {
  auto opts = test::context_options();
  rn::io_context plain(opts);
  CHECK(plain.supports(IORING_OP_NOP));
  CHECK(plain.supports(IORING_OP_TIMEOUT));
  opts.disabled_ops.set(IORING_OP_SHUTDOWN);
  rn::io_context restricted(opts);
  CHECK_FALSE(restricted.supports(IORING_OP_SHUTDOWN));
  CHECK(restricted.supports(IORING_OP_TIMEOUT));
}

TEST_CASE("io_context: created on one thread, run on another") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  bool ran = false;
  std::jthread runner([&] {
    ran = rn::sync_wait(ctx, [](rn::io_context& c) -> rn::task<bool> {
      co_return (co_await rn::sleep_for(c, 1ms)).has_value();
    }(ctx));
  });
  runner.join();
  CHECK(ran);
}

TEST_CASE("io_context: schedule() moves a coroutine onto the context's thread") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  rn::io_context::work_guard guard(ctx);
  std::thread::id seen;
  std::jthread loop([&] { ctx.run(); });
  // A coroutine started on this thread hops onto the loop thread.
  std::atomic<bool> done{false};
  auto hop = [&]() -> rn::task<void> {
    co_await ctx.schedule();
    seen = std::this_thread::get_id();
    CHECK((co_await rn::sleep_for(ctx, 1ms)).has_value());  // and does I/O there
    done = true;
  };
  auto t = hop();
  auto h = t.release();
  h.resume();  // runs up to schedule() here, then continues on the loop thread
  for (int i = 0; i < 2000 && !done; ++i) std::this_thread::sleep_for(5ms);
  CHECK(done);
  CHECK(seen == loop.get_id());
  guard.reset();  // run() returns once out of work
  loop.join();
  h.destroy();
}

TEST_CASE("io_context: stop() from another thread makes run() return; destruction frees frames") {
  test::fd_leak_check fds;
  int socks[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, socks) == 0);
  {
    rn::io_context ctx(test::context_options());
    rn::spawn(ctx, [](rn::io_context& c) -> rn::task<void> { (void)co_await rn::sleep_for(c, 1h); }(ctx));
    std::jthread stopper([&] {
      std::this_thread::sleep_for(20ms);
      ctx.stop();
    });
    const auto t0 = std::chrono::steady_clock::now();
    ctx.run();
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
    CHECK(ctx.stopped());
    // The sleeping task is still owned by the context; its destructor cancels and frees it.
  }
  ::close(socks[0]);
  ::close(socks[1]);
}

TEST_CASE("io_context: spawn from another thread while running") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  std::atomic<int> count{0};
  rn::io_context::work_guard guard(ctx);
  std::jthread loop([&] { ctx.run(); });
  for (int i = 0; i < 100; ++i)
    rn::spawn(ctx, [](rn::io_context& c, std::atomic<int>& n) -> rn::task<void> {
      CHECK((co_await rn::sleep_for(c, 1ms)).has_value());
      ++n;
    }(ctx, count));
  for (int i = 0; i < 2000 && count < 100; ++i) std::this_thread::sleep_for(5ms);
  guard.reset();
  loop.join();
  CHECK(count == 100);
}

TEST_CASE("io_context: the ring's descriptor is registered with the thread that runs it, and only there") {
  test::watchdog dog(std::chrono::seconds(30));  // a ring entered through another's index hangs
  test::fd_leak_check fds;
  auto tick = [](rn::io_context& c) -> rn::task<bool> { co_return (co_await rn::sleep_for(c, 1ms)).has_value(); };
  auto opts = test::context_options();
  const bool wanted = opts.register_ring_fd;
  SUBCASE("registered at the first run of a defer_taskrun ring, unless switched off") {
    for (bool on : {true, false}) {
      opts.register_ring_fd = on && wanted;
      rn::io_context ctx(opts);
      CHECK_FALSE(ctx.has_registered_ring_fd());  // not before it runs: it belongs to a thread
      CHECK(rn::sync_wait(ctx, tick(ctx)));
      CHECK(ctx.has_registered_ring_fd() == (on && wanted && ctx.mode() == rn::ring_mode::defer_taskrun));
      CHECK(rn::sync_wait(ctx, tick(ctx)));
    }
    auto coop = opts;
    coop.register_ring_fd = true;
    coop.mode = rn::ring_mode::coop_taskrun;  // may move between threads: never registered
    rn::io_context c(coop);
    CHECK(rn::sync_wait(c, tick(c)));
    CHECK_FALSE(c.has_registered_ring_fd());
  }
  SUBCASE("destroyed on another thread, it leaves that thread's own registration alone") {
    // Ring X runs on thread A, which stays alive; ring Y runs here. Both registrations have
    // index 0 (each thread counts from 0). Destroying X here must not unregister index 0 here,
    // which is Y's: Y's next io_uring_enter would fail with EBADF. (Kernel 6.18 itself refuses
    // to unregister another ring's index, with EEXIST; ringnet does not count on it.)
    auto x = std::make_unique<rn::io_context>(opts);
    rn::io_context y(opts);
    CHECK(rn::sync_wait(y, tick(y)));
    std::latch x_ran(1), x_gone(1);
    std::jthread a([&] {
      CHECK(rn::sync_wait(*x, tick(*x)));
      x_ran.count_down();
      x_gone.wait();  // thread A lives on while X is destroyed elsewhere
    });
    x_ran.wait();
    x.reset();
    for (int i = 0; i < 3; ++i) CHECK(rn::sync_wait(y, tick(y)));
    x_gone.count_down();
  }
  SUBCASE("a later thread with the same std::thread::id is not the owner") {
    // glibc hands a joined thread's id (its stack) to the next thread. Ring X ran on thread A,
    // joined; thread B, likely with A's id, runs its own ring Y (registered at index 0 like X was)
    // and destroys X: X must not be run there, nor enter or unregister through index 0, which is
    // Y's there.
    for (int round = 0; round < 4; ++round) {
      auto x = std::make_unique<rn::io_context>(opts);
      std::thread::id a_id, b_id;
      std::thread([&] {
        CHECK(rn::sync_wait(*x, tick(*x)));
        a_id = std::this_thread::get_id();
      }).join();
      std::thread([&] {
        b_id = std::this_thread::get_id();
        rn::io_context y(opts);
        CHECK(rn::sync_wait(y, tick(y)));
        if (x->mode() == rn::ring_mode::defer_taskrun)  // X stays thread A's, whatever B's id
          CHECK_THROWS_AS((void)rn::sync_wait(*x, tick(*x)), std::system_error);
        x.reset();
        for (int i = 0; i < 3; ++i) CHECK(rn::sync_wait(y, tick(y)));
      }).join();
      if (a_id == b_id) MESSAGE("round " << round << ": the second thread had the first one's id");
    }
  }
}

// io_context_options::batch_wait: after a turn of several completions the next wait asks the
// kernel for as many within the batch wait. A wait that gets fewer returns when the batch wait
// is over, never later; a wait after a turn of one completion returns at its first. (A timer's
// completion always ends a wait at once, so the lone completion here is a read.)
namespace {
struct pipe_read_op {
  int fd;
  char* byte;
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_read(sqe, fd, byte, 1, 0); }
  static rn::result<void> complete(int res, std::uint32_t) noexcept { return rn::detail::void_result(res); }
};

// Reads one byte another thread writes into a pipe `delay` after the read started; returns how
// long the read took. With `busy_turn_first`, four NOPs submitted together come first: one turn
// reaps their four CQEs, so the read's wait asks for four.
rn::task<std::chrono::steady_clock::duration> lone_read(rn::io_context& ctx, bool busy_turn_first,
                                                        std::chrono::milliseconds delay = std::chrono::milliseconds(1)) {
  if (busy_turn_first)
    (void)co_await rn::when_all(rn::operation<test::nop_op>(ctx, test::nop_op{}),
                                rn::operation<test::nop_op>(ctx, test::nop_op{}),
                                rn::operation<test::nop_op>(ctx, test::nop_op{}),
                                rn::operation<test::nop_op>(ctx, test::nop_op{}));
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  std::thread writer([w = p[1], delay] {
    std::this_thread::sleep_for(delay);
    CHECK(::write(w, "x", 1) == 1);
  });
  char byte = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto r = co_await rn::operation<pipe_read_op>(ctx, pipe_read_op{p[0], &byte});
  const auto took = std::chrono::steady_clock::now() - start;
  writer.join();
  ::close(p[0]);
  ::close(p[1]);
  CHECK(r.has_value());
  CHECK(byte == 'x');
  co_return took;
}
}  // namespace

TEST_CASE("io_context: batch_wait holds a lone completion after a busy turn for at most the batch wait") {
  using namespace std::chrono_literals;
  test::watchdog dog(std::chrono::seconds(30));  // a wait for four that never come hangs
  auto o = test::context_options();
  o.batch_wait = 100ms;
  rn::io_context ctx(o);
  if (!ctx.has_batch_wait()) {
    CHECK_MESSAGE(!test::kernel_at_least(6, 12), "kernel 6.12 has min-wait, but the ring does not say so");
    return;
  }
  const auto held = rn::sync_wait(ctx, lone_read(ctx, true));
  CHECK(held >= 90ms);
  CHECK(held < 1s);
  // After that turn of one completion the next wait returns at the first.
  CHECK(rn::sync_wait(ctx, lone_read(ctx, false)) < 90ms);

  // A completion that comes after the batch wait ended ends the wait: the kernel went on waiting
  // for the first (the hour's timeout given to it is not what ends it).
  o.batch_wait = 5ms;
  rn::io_context late(o);
  const auto after = rn::sync_wait(late, lone_read(late, true, 50ms));
  CHECK(after >= 50ms);
  CHECK(after < 1s);

  // Off: the same sequence is not held.
  o.batch_wait = 0us;
  rn::io_context plain(o);
  CHECK(rn::sync_wait(plain, lone_read(plain, true)) < 90ms);
}

TEST_CASE("io_context: stop() from another thread ends a batched wait") {
  using namespace std::chrono_literals;
  test::watchdog dog(std::chrono::seconds(30));
  auto o = test::context_options();
  o.batch_wait = 100ms;
  rn::io_context ctx(o);
  bool finished = false;
  rn::spawn(ctx, [](rn::io_context& c, bool& done) -> rn::task<void> {
    (void)co_await rn::when_all(rn::operation<test::nop_op>(c, test::nop_op{}),
                                rn::operation<test::nop_op>(c, test::nop_op{}));
    (void)co_await rn::sleep_for(c, 30s);  // cancelled by ~io_context
    done = true;
  }(ctx, finished));
  std::thread stopper([&] {
    std::this_thread::sleep_for(20ms);
    ctx.stop();
  });
  const auto start = std::chrono::steady_clock::now();
  ctx.run();
  const auto took = std::chrono::steady_clock::now() - start;
  stopper.join();
  CHECK(ctx.stopped());
  CHECK_FALSE(finished);
  CHECK(took < 1s);  // the stop's wake-up is held by at most the batch wait (100 ms)
}

TEST_CASE("io_context: batch_wait outside 0 to 100 ms is refused") {
  using namespace std::chrono_literals;
  for (const auto bad : {-1us, 100ms + 1us, std::chrono::microseconds(std::chrono::hours(1))}) {
    auto o = test::context_options();
    o.batch_wait = bad;
    try {
      rn::io_context ctx(o);
      FAIL("accepted batch_wait " << bad.count() << " us");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::invalid_argument);
    }
  }
  for (const auto good : {0us, 1us, std::chrono::microseconds(100ms)}) {
    auto o = test::context_options();
    o.batch_wait = good;
    rn::io_context ctx(o);
    CHECK(rn::sync_wait(ctx, rn::sleep_for(ctx, std::chrono::milliseconds(1))).has_value());
  }
}
