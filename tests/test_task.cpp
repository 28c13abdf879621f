// task<T>, spawn, sync_wait, when_all, when_any.
#include <memory>
#include <stdexcept>

#include "support.hpp"

namespace {

rn::task<int> answer() { co_return 42; }
rn::task<void> nothing() { co_return; }
rn::task<int> throws() {
  throw std::runtime_error("boom");
  co_return 0;
}
rn::task<std::unique_ptr<int>> move_only() { co_return std::make_unique<int>(7); }

rn::task<int> add_answers() {
  int a = co_await answer();
  co_await nothing();
  auto p = co_await move_only();
  co_return a + *p;
}

rn::task<int> one() { co_return 1; }
rn::task<long> million_synchronous_awaits() {
  long sum = 0;
  for (int i = 0; i < 1'000'000; ++i) sum += co_await one();
  co_return sum;
}
rn::task<long> recurse(int depth) {
  if (depth == 0) co_return 0;
  co_return 1 + co_await recurse(depth - 1);
}

// Symmetric transfer is a tail call; g++ does not make it one without optimization or under
// AddressSanitizer, so there every resume nests (clang does).
#if !defined(__clang__) && (defined(__SANITIZE_ADDRESS__) || !defined(__OPTIMIZE__))
constexpr bool symmetric_transfer_is_a_tail_call = false;
#else
constexpr bool symmetric_transfer_is_a_tail_call = true;
#endif

struct counted {
  static inline int alive = 0;
  counted() { ++alive; }
  counted(const counted&) { ++alive; }
  ~counted() { --alive; }
};

}  // namespace

TEST_CASE("task: values, void, move-only results and exceptions reach the awaiter") {
  rn::io_context ctx(test::context_options());
  CHECK(rn::sync_wait(ctx, add_answers()) == 49);
  CHECK_THROWS_WITH_AS(rn::sync_wait(ctx, throws()), "boom", std::runtime_error);
  auto rethrows = []() -> rn::task<std::string> {
    try {
      co_await throws();
    } catch (const std::runtime_error& e) {
      co_return std::string("caught ") + e.what();
    }
    co_return "not thrown";
  };
  CHECK(rn::sync_wait(ctx, rethrows()) == "caught boom");
}

TEST_CASE("task: is lazy and frees its frame when destroyed unstarted") {
  bool started = false;
  {
    auto t = [&](counted) -> rn::task<void> {
      started = true;
      co_return;
    }(counted{});
    CHECK(counted::alive == 1);  // the frame holds its parameter
  }
  CHECK_FALSE(started);
  CHECK(counted::alive == 0);
}

TEST_CASE("task: a million synchronously completing awaits do not grow the stack" *
          doctest::skip(!symmetric_transfer_is_a_tail_call)) {
  rn::io_context ctx(test::context_options());
  // Without symmetric transfer each completion would nest one resume() deeper: ~1e6 frames of
  // native stack, far beyond the 8 MiB thread stack.
  CHECK(rn::sync_wait(ctx, million_synchronous_awaits()) == 1'000'000);
  CHECK(rn::sync_wait(ctx, recurse(100'000)) == 100'000);
}

TEST_CASE("spawn: detached tasks run, keep run() alive, and report escaping exceptions") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  int done = 0;
  for (int i = 0; i < 10; ++i)
    rn::spawn(ctx, [](rn::io_context& c, int& d) -> rn::task<void> {
      CHECK((co_await rn::sleep_for(c, 1ms)).has_value());
      ++d;
    }(ctx, done));
  ctx.run();
  CHECK(done == 10);

  SUBCASE("without a handler run() rethrows") {
    rn::spawn(ctx, throws());
    CHECK_THROWS_AS(ctx.run(), std::runtime_error);
  }
  SUBCASE("a per-spawn error sink") {
    std::exception_ptr seen;
    rn::spawn(ctx, throws(), [&](std::exception_ptr e) { seen = e; });
    ctx.run();
    CHECK(seen);
  }
  SUBCASE("the context handler") {
    int handled = 0;
    ctx.set_exception_handler([&](std::exception_ptr) { ++handled; });
    rn::spawn(ctx, throws());
    rn::spawn(ctx, throws());
    ctx.run();
    CHECK(handled == 2);
  }
}

TEST_CASE("spawn: a context destroyed with unfinished tasks destroys their frames") {
  test::fd_leak_check fds;
  {
    rn::io_context ctx(test::context_options());
    rn::spawn(ctx, [](rn::io_context& c, counted) -> rn::task<void> {
      (void)co_await rn::sleep_for(c, 1h);
    }(ctx, counted{}));
    ctx.poll();
    CHECK(counted::alive == 1);
  }
  CHECK(counted::alive == 0);
}

TEST_CASE("when_all: runs concurrently and returns every result") {
  rn::io_context ctx(test::context_options());
  auto sleepy = [](rn::io_context& c, std::chrono::milliseconds d, int v) -> rn::task<int> {
    CHECK((co_await rn::sleep_for(c, d)).has_value());
    co_return v;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto [a, b, c, v] =
      rn::sync_wait(ctx, rn::when_all(sleepy(ctx, 60ms, 1), sleepy(ctx, 60ms, 2),
                                      sleepy(ctx, 60ms, 3), rn::sleep_for(ctx, 60ms)));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(a == 1);
  CHECK(b == 2);
  CHECK(c == 3);
  CHECK(v.has_value());
  CHECK(took >= 60ms);
  CHECK(took < 60ms * 3);  // concurrent, not sequential

  auto [x, y] = rn::sync_wait(ctx, rn::when_all(answer(), one()));  // synchronous children
  CHECK(x == 42);
  CHECK(y == 1);
  CHECK_THROWS_AS(rn::sync_wait(ctx, rn::when_all(answer(), throws())), std::runtime_error);
}

TEST_CASE("when_any: the first wins, the losers are cancelled and awaited before it returns") {
  test::fd_leak_check fds;
  rn::io_context ctx(test::context_options());
  int losers_finished = 0;
  auto slow = [&](rn::inplace_stop_token st) -> rn::task<int> {
    auto r = co_await rn::sleep_for(ctx, 1h, st);
    CHECK(r.error() == std::errc::operation_canceled);
    ++losers_finished;
    co_return 1;
  };
  auto fast = [&](rn::inplace_stop_token st) -> rn::task<int> {
    auto r = co_await rn::sleep_for(ctx, 20ms, st);
    CHECK(r.has_value());
    co_return 2;
  };
  const auto t0 = std::chrono::steady_clock::now();
  auto winner = rn::sync_wait(ctx, rn::when_any(slow, fast, slow));
  CHECK(winner.index() == 1);
  CHECK(std::get<1>(winner) == 2);
  CHECK(losers_finished == 2);  // both were resumed before when_any returned
  CHECK(std::chrono::steady_clock::now() - t0 < 30s);

  // Plain awaitables work too (void → monostate).
  auto r = rn::sync_wait(ctx, rn::when_any([&](auto st) { return rn::sleep_for(ctx, 1h, st); },
                                           [&](auto st) { return rn::sleep_for(ctx, 1ms, st); }));
  CHECK(r.index() == 1);
}
