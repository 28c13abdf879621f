// task<T>: a lazy, move-only coroutine. Awaiting it starts it; its completion resumes the awaiter
// by symmetric transfer, so arbitrarily long chains of synchronous completions use constant stack.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/frame_pool.hpp>

#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>
#include <variant>

RINGNET_BEGIN_NAMESPACE

template <class T = void>
class task;

namespace detail {

struct task_promise_base : pooled {
  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
      return h.promise().continuation_;
    }
    void await_resume() const noexcept {}
  };

  std::suspend_always initial_suspend() const noexcept { return {}; }
  final_awaiter final_suspend() const noexcept { return {}; }

  std::coroutine_handle<> continuation_ = std::noop_coroutine();
};

template <class T>
struct task_promise final : task_promise_base {
  task<T> get_return_object() noexcept;
  template <class U>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    state_.template emplace<1>(std::forward<U>(v));
  }
  void unhandled_exception() noexcept { state_.template emplace<2>(std::current_exception()); }
  T take() {
    if (state_.index() == 2) std::rethrow_exception(std::get<2>(state_));
    return std::move(std::get<1>(state_));
  }
  std::variant<std::monostate, T, std::exception_ptr> state_;
};

template <>
struct task_promise<void> final : task_promise_base {
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  void take() {
    if (exception_) std::rethrow_exception(exception_);
  }
  std::exception_ptr exception_;
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;
  using value_type = T;

  task() noexcept = default;
  explicit task(std::coroutine_handle<promise_type> h) noexcept : coro_(h) {}
  task(task&& other) noexcept : coro_(std::exchange(other.coro_, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      destroy();
      coro_ = std::exchange(other.coro_, {});
    }
    return *this;
  }
  ~task() { destroy(); }

  [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(coro_); }

  auto operator co_await() && noexcept {
    struct awaiter {
      std::coroutine_handle<promise_type> coro;
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> waiter) noexcept {
        coro.promise().continuation_ = waiter;
        return coro;
      }
      T await_resume() { return coro.promise().take(); }
    };
    return awaiter{coro_};
  }

  /// Releases ownership of the coroutine frame (used by spawn and the combinators).
  std::coroutine_handle<promise_type> release() noexcept { return std::exchange(coro_, {}); }

 private:
  void destroy() noexcept {
    if (coro_) coro_.destroy();
  }
  std::coroutine_handle<promise_type> coro_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}

// What `co_await x` yields, for the combinators.
template <class A>
decltype(auto) get_awaiter(A&& a) {
  if constexpr (requires { std::forward<A>(a).operator co_await(); })
    return std::forward<A>(a).operator co_await();
  else if constexpr (requires { operator co_await(std::forward<A>(a)); })
    return operator co_await(std::forward<A>(a));
  else
    return std::forward<A>(a);
}
}  // namespace detail

template <class A>
using await_result_t = decltype(detail::get_awaiter(std::declval<A>()).await_resume());

RINGNET_END_NAMESPACE
