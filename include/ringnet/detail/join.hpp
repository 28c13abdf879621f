// Shared machinery of when_all / when_any / sync_wait: child coroutines that store their result
// in a slot, report to a join counter and resume the parent (by symmetric transfer) when the last
// one finishes.
#pragma once

#include <ringnet/detail/config.hpp>
#include <ringnet/detail/frame_pool.hpp>

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <type_traits>
#include <tuple>
#include <utility>
#include <variant>

RINGNET_BEGIN_NAMESPACE
namespace detail {

struct join_counter {
  explicit join_counter(std::size_t children) noexcept : remaining(children + 1) {}
  // true when the caller was the last to arrive
  bool arrive() noexcept { return remaining.fetch_sub(1, std::memory_order_acq_rel) == 1; }
  std::atomic<std::size_t> remaining;
  std::coroutine_handle<> parent;
};

struct join_child {
  struct promise_type : pooled {
    join_counter* counter = nullptr;
    join_child get_return_object() noexcept {
      return join_child{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    auto final_suspend() const noexcept {
      struct last_resumes_parent {
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
          join_counter* c = h.promise().counter;
          return c->arrive() ? c->parent : std::noop_coroutine();
        }
        void await_resume() const noexcept {}
      };
      return last_resumes_parent{};
    }
    void return_void() const noexcept {}
    void unhandled_exception() const noexcept { std::terminate(); }  // bodies catch all
  };

  explicit join_child(std::coroutine_handle<promise_type> h) noexcept : coro(h) {}
  join_child(join_child&& o) noexcept : coro(std::exchange(o.coro, {})) {}
  join_child& operator=(join_child&&) = delete;
  ~join_child() {
    if (coro) coro.destroy();
  }
  std::coroutine_handle<promise_type> coro;
};

// Awaiting this starts every child and resumes once all of them have finished.
template <class Children>
struct join_all {
  join_counter& counter;
  Children& children;  // a tuple or range of join_child
  bool await_ready() const noexcept { return false; }
  bool await_suspend(std::coroutine_handle<> parent) noexcept {
    counter.parent = parent;
    auto start = [this](join_child& c) {
      c.coro.promise().counter = &counter;
      c.coro.resume();
    };
    if constexpr (requires { children.begin(); }) {
      for (join_child& c : children) start(c);
    } else {
      std::apply([&](auto&... c) { (start(c), ...); }, children);
    }
    return !counter.arrive();  // all finished synchronously: do not suspend
  }
  void await_resume() const noexcept {}
};

template <class T>
using non_void_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
struct join_slot {
  std::optional<non_void_t<T>> value;
  std::exception_ptr error;
};

template <class Awaitable, class T>
join_child join_body(Awaitable aw, join_slot<T>& slot) {
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(aw);
      slot.value.emplace();
    } else {
      slot.value.emplace(co_await std::move(aw));
    }
  } catch (...) {
    slot.error = std::current_exception();
  }
}

}  // namespace detail
RINGNET_END_NAMESPACE
