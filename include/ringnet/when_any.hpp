// when_any: run cancellable operations concurrently; the first to finish wins, the others are
// stopped through their stop tokens and awaited before when_any returns.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/join.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>
#include <ringnet/when_all.hpp>

#include <atomic>
#include <exception>
#include <functional>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

RINGNET_BEGIN_NAMESPACE

template <class F>
using stoppable_result_t = await_result_t<std::invoke_result_t<F&, inplace_stop_token>>;

namespace detail {
template <class Result>
struct race_state {
  inplace_stop_source stop;
  std::atomic<bool> decided{false};
  std::optional<Result> winner;
  std::exception_ptr error;
};

template <std::size_t I, class F, class Result>
join_child race_body(F f, race_state<Result>& st) {
  using T = stoppable_result_t<F>;
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::invoke(f, st.stop.get_token());
      if (!st.decided.exchange(true)) {
        st.winner.emplace(std::in_place_index<I>);
        st.stop.request_stop();
      }
    } else {
      auto v = co_await std::invoke(f, st.stop.get_token());
      if (!st.decided.exchange(true)) {
        st.winner.emplace(std::in_place_index<I>, std::move(v));
        st.stop.request_stop();
      }
    }
  } catch (...) {
    if (!st.decided.exchange(true)) {
      st.error = std::current_exception();
      st.stop.request_stop();
    }
  }
}
}  // namespace detail

/// Each argument is a callable taking an inplace_stop_token and returning an awaitable. The first
/// to complete wins; the others see a stop request and when_any waits for them to finish. The
/// result is a variant whose index() names the winner (std::monostate for void results).
template <class... Fs>
task<std::variant<detail::non_void_t<stoppable_result_t<Fs>>...>> when_any(Fs... fs) {
  using result_t = std::variant<detail::non_void_t<stoppable_result_t<Fs>>...>;
  detail::race_state<result_t> st;
  auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple{detail::race_body<I>(std::move(fs), st)...};
  }(std::index_sequence_for<Fs...>{});
  detail::join_counter counter(sizeof...(Fs));
  co_await detail::join_all<decltype(children)>{counter, children};
  if (st.error) std::rethrow_exception(st.error);
  co_return std::move(*st.winner);
}

RINGNET_END_NAMESPACE
