// inplace_stop_source: the allocation-free stop source used for per-connection cancellation.
#include <functional>
#include <optional>
#include <thread>

#include "support.hpp"

static_assert(rn::stoppable_token<rn::inplace_stop_token>);
static_assert(rn::stoppable_token<std::stop_token>);
static_assert(rn::stoppable_token<rn::never_stop_token>);

TEST_CASE("inplace_stop_source: tokens, callbacks, and a stop requested only once") {
  rn::inplace_stop_source src;
  const rn::inplace_stop_token tok = src.get_token();
  CHECK(tok.stop_possible());
  CHECK_FALSE(tok.stop_requested());
  CHECK_FALSE(rn::inplace_stop_token{}.stop_possible());
  int a = 0, b = 0;
  rn::inplace_stop_callback cb_a(tok, [&]() noexcept { ++a; });
  {
    rn::inplace_stop_callback cb_b(tok, [&]() noexcept { ++b; });
  }  // deregistered before the stop: never runs
  CHECK(src.request_stop());
  CHECK_FALSE(src.request_stop());
  CHECK(tok.stop_requested());
  CHECK(a == 1);
  CHECK(b == 0);
  int late = 0;
  rn::inplace_stop_callback cb_late(tok, [&]() noexcept { ++late; });  // runs inline
  CHECK(late == 1);
}

TEST_CASE("inplace_stop_source: a callback may deregister itself while it runs") {
  rn::inplace_stop_source src;
  std::optional<rn::inplace_stop_callback<std::function<void()>>> cb;
  int ran = 0;
  cb.emplace(src.get_token(), [&] {
    ++ran;
    cb.reset();  // would deadlock if removal waited for this very callback
  });
  int other = 0;
  rn::inplace_stop_callback second(src.get_token(), [&]() noexcept { ++other; });
  src.request_stop();
  CHECK(ran == 1);
  CHECK(other == 1);
}

TEST_CASE("inplace_stop_source: deregistration racing a stop on another thread, 10,000 times") {
  int ran_total = 0;
  for (int i = 0; i < 10'000; ++i) {
    rn::inplace_stop_source src;
    std::atomic<int> running{0}, ran{0};
    std::atomic<bool> ready{false};
    std::jthread stopper([&] {
      while (!ready.load()) {}
      src.request_stop();
    });
    {
      rn::inplace_stop_callback cb(src.get_token(), [&]() noexcept {
        running.fetch_add(1);
        ran.fetch_add(1);
        running.fetch_sub(1);
      });
      ready.store(true);
      if (i % 2) std::this_thread::yield();
    }  // after this the callback is guaranteed not to be running
    CHECK(running.load() == 0);
    CHECK(ran.load() <= 1);
    ran_total += ran.load();
    stopper.join();
  }
  MESSAGE("callback ran in " << ran_total << " of 10000 races");
}

TEST_CASE("inplace_stop_source cancels ring operations, from any thread") {
  rn::io_context ctx(test::context_options());
  rn::inplace_stop_source src;
  std::jthread other([&] {
    std::this_thread::sleep_for(20ms);
    src.request_stop();
  });
  auto r = rn::sync_wait(ctx, rn::sleep_for(ctx, 1h, src.get_token()));
  CHECK(r.error() == std::errc::operation_canceled);
}
