// Stoppable tokens: std::stop_token, or anything of the same shape (stdexec's inplace_stop_token
// works), or never_stop_token, which makes cancellation support cost nothing.
#pragma once

#include <ringnet/config.hpp>

#include <concepts>
#include <stop_token>

RINGNET_BEGIN_NAMESPACE

/// A token that can never be stopped; operations taking it register no callback at all.
struct never_stop_token {
  template <class Fn>
  struct callback_type {
    callback_type(never_stop_token, Fn) noexcept {}
  };
  [[nodiscard]] static constexpr bool stop_requested() noexcept { return false; }
  [[nodiscard]] static constexpr bool stop_possible() noexcept { return false; }
  friend constexpr bool operator==(never_stop_token, never_stop_token) noexcept { return true; }
};

namespace detail {
template <class Token, class Fn>
struct stop_callback_of {
  using type = typename Token::template callback_type<Fn>;
};
template <class Fn>
struct stop_callback_of<std::stop_token, Fn> {
  using type = std::stop_callback<Fn>;
};
}  // namespace detail

/// The callback type registered with `Token` for a callable `Fn`.
template <class Token, class Fn>
using stop_callback_for_t = typename detail::stop_callback_of<Token, Fn>::type;

template <class T>
concept stoppable_token = std::copy_constructible<T> && requires(const T& t) {
  { t.stop_requested() } noexcept -> std::convertible_to<bool>;
  { t.stop_possible() } noexcept -> std::convertible_to<bool>;
};

RINGNET_END_NAMESPACE
