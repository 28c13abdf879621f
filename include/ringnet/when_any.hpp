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

/// What when_any returns: the winner, as a variant whose index() names it, and what each loser
/// returned although it lost (a recv that read bytes, an accept that got a connection, or just
/// operation_canceled): nothing a loser completed is discarded.
template <class... Ts>
class race_result : public std::variant<Ts...> {
 public:
  race_result(std::variant<Ts...> winner, std::tuple<std::optional<Ts>...> losers)
      : std::variant<Ts...>(std::move(winner)), losers_(std::move(losers)) {}
  /// What branch I returned, if it lost and completed (empty for the winner and for a branch
  /// that threw).
  template <std::size_t I>
  [[nodiscard]] auto& loser() noexcept { return std::get<I>(losers_); }
  template <std::size_t I>
  [[nodiscard]] const auto& loser() const noexcept { return std::get<I>(losers_); }

 private:
  std::tuple<std::optional<Ts>...> losers_;
};

namespace detail {
template <class... Ts>
struct race_state {
  inplace_stop_source stop;
  std::atomic<bool> decided{false};
  std::optional<std::variant<Ts...>> winner;
  std::tuple<std::optional<Ts>...> losers;
  std::exception_ptr error;
};

template <std::size_t I, class F, class... Ts>
join_child race_body(F f, race_state<Ts...>& st) {
  using T = stoppable_result_t<F>;
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::invoke(f, st.stop.get_token());
      if (!st.decided.exchange(true)) {
        st.winner.emplace(std::in_place_index<I>);
        st.stop.request_stop();
      } else {
        std::get<I>(st.losers).emplace();
      }
    } else {
      auto v = co_await std::invoke(f, st.stop.get_token());
      if (!st.decided.exchange(true)) {
        st.winner.emplace(std::in_place_index<I>, std::move(v));
        st.stop.request_stop();
      } else {
        std::get<I>(st.losers).emplace(std::move(v));
      }
    }
  } catch (...) {
    if (!st.decided.exchange(true)) {
      st.error = std::current_exception();
      st.stop.request_stop();
    }
  }
}

template <class... Ts>
task<race_result<Ts...>> race(auto... fs) {
  race_state<Ts...> st;
  auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple{race_body<I>(std::move(fs), st)...};
  }(std::index_sequence_for<Ts...>{});
  join_counter counter(sizeof...(Ts));
  co_await join_all<decltype(children)>{counter, children};
  if (st.error) std::rethrow_exception(st.error);
  co_return race_result<Ts...>(std::move(*st.winner), std::move(st.losers));
}
}  // namespace detail

/// Each argument is a callable taking an inplace_stop_token and returning an awaitable. The first
/// to complete wins; the others see a stop request and when_any waits for them to finish. The
/// result is a variant whose index() names the winner (std::monostate for void results), with
/// what the losers returned in loser<I>().
template <class... Fs>
task<race_result<detail::non_void_t<stoppable_result_t<Fs>>...>> when_any(Fs... fs) {
  return detail::race<detail::non_void_t<stoppable_result_t<Fs>>...>(std::move(fs)...);
}

RINGNET_END_NAMESPACE
