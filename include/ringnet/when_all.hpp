// when_all: run awaitables concurrently, resume when all have finished.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/join.hpp>
#include <ringnet/task.hpp>

#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

RINGNET_BEGIN_NAMESPACE

/// Runs every awaitable concurrently (on the current thread, interleaved at suspension points)
/// and returns a tuple of their results (std::monostate for void). If any threw, the first
/// exception in argument order is rethrown after all have finished.
template <class... Awaitables>
task<std::tuple<detail::non_void_t<await_result_t<Awaitables>>...>> when_all(Awaitables... aws) {
  std::tuple<detail::join_slot<await_result_t<Awaitables>>...> slots;
  auto children = [&]<std::size_t... I>(std::index_sequence<I...>) {
    return std::tuple{detail::join_body<Awaitables, await_result_t<Awaitables>>(
        std::move(aws), std::get<I>(slots))...};
  }(std::index_sequence_for<Awaitables...>{});
  detail::join_counter counter(sizeof...(Awaitables));
  co_await detail::join_all<decltype(children)>{counter, children};
  std::apply([](auto&... s) { ((s.error ? std::rethrow_exception(s.error) : void()), ...); }, slots);
  co_return std::apply([](auto&... s) { return std::tuple{std::move(*s.value)...}; }, slots);
}

RINGNET_END_NAMESPACE
