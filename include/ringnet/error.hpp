// Errors are values: result<T> carries either a T or a std::error_code (system_category errno).
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/errno_kind.hpp>

#include <cerrno>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

RINGNET_BEGIN_NAMESPACE

/// errno → std::error_code in the system category (compares equal to std::errc values).
[[nodiscard]] inline std::error_code errno_code(int e) noexcept {
  return {e, std::system_category()};
}

/// What an error says about the connection it came from: the one vocabulary under drain(),
/// graceful_close(), relay() and the server's counters.
enum class error_kind {
  none,       // no error
  canceled,   // operation_canceled: a stop token, close() or cancel()
  timed_out,  // a deadline passed (ours, or the kernel's retransmission timeout)
  reset,      // the connection ended abortively: the peer's RST (connection_reset), or a write or
              // shutdown that found it gone (broken_pipe, not_connected, connection_aborted)
  other,      // anything else
};

[[nodiscard]] inline error_kind classify(std::error_code ec) noexcept {
  if (!ec) return error_kind::none;
  if (ec == std::errc::operation_canceled) return error_kind::canceled;
  if (ec == std::errc::timed_out) return error_kind::timed_out;
  const std::error_condition c = ec.default_error_condition();
  if (c.category() == std::generic_category() && detail::reset_errno(c.value())) return error_kind::reset;
  return error_kind::other;
}

/// Throws std::system_error (or aborts under -fno-exceptions).
[[noreturn]] inline void throw_error(std::error_code ec, const char* what = "ringnet") {
  RINGNET_THROW(std::system_error(ec, what));
}

/// Either a value or an error code. Accessing value() of an error throws std::system_error.
template <class T>
class [[nodiscard]] result {
 public:
  using value_type = T;

  result(T value) noexcept(std::is_nothrow_move_constructible_v<T>)  // NOLINT: implicit by design
      : value_(std::move(value)) {}
  result(std::error_code ec) noexcept : error_(ec) {}  // NOLINT: implicit by design

  [[nodiscard]] bool has_value() const noexcept { return value_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  [[nodiscard]] std::error_code error() const noexcept { return error_; }

  T& value() & { check(); return *value_; }
  const T& value() const& { check(); return *value_; }
  T&& value() && { check(); return std::move(*value_); }

  T& operator*() & noexcept { return *value_; }
  const T& operator*() const& noexcept { return *value_; }
  T&& operator*() && noexcept { return std::move(*value_); }
  T* operator->() noexcept { return &*value_; }
  const T* operator->() const noexcept { return &*value_; }

  template <class U>
  T value_or(U&& fallback) const& { return value_ ? *value_ : static_cast<T>(std::forward<U>(fallback)); }

 private:
  void check() const {
    if (!value_) throw_error(error_);
  }
  std::optional<T> value_;
  std::error_code error_;
};

template <>
class [[nodiscard]] result<void> {
 public:
  using value_type = void;
  result() noexcept = default;
  result(std::error_code ec) noexcept : error_(ec) {}  // NOLINT: implicit by design

  [[nodiscard]] bool has_value() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return has_value(); }
  [[nodiscard]] std::error_code error() const noexcept { return error_; }
  void value() const {
    if (error_) throw_error(error_);
  }

 private:
  std::error_code error_;
};

RINGNET_END_NAMESPACE
