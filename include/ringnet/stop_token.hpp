// Stoppable tokens: std::stop_token, or anything of the same shape (stdexec's inplace_stop_token
// works), or never_stop_token, which makes cancellation support cost nothing.
#pragma once

#include <ringnet/config.hpp>

#include <atomic>
#include <concepts>
#include <cstdint>
#include <stop_token>
#include <thread>
#include <type_traits>
#include <utility>

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

class inplace_stop_source;
template <class Fn>
class inplace_stop_callback;

namespace detail {
struct inplace_callback_base {
  using execute_fn = void (*)(inplace_callback_base*) noexcept;
  inplace_callback_base(const inplace_stop_source* src, execute_fn fn) noexcept
      : source(src), execute(fn) {}
  const inplace_stop_source* source;
  execute_fn execute;
  inplace_callback_base* next = nullptr;
  inplace_callback_base** prev_ptr = nullptr;  // null: not registered (or being executed)
  bool* removed_during_callback = nullptr;
  std::atomic<bool> completed{false};
};
}  // namespace detail

/// A stop token over an inplace_stop_source.
class inplace_stop_token {
 public:
  template <class Fn>
  using callback_type = inplace_stop_callback<Fn>;

  inplace_stop_token() noexcept = default;
  [[nodiscard]] bool stop_requested() const noexcept;
  [[nodiscard]] bool stop_possible() const noexcept { return source_ != nullptr; }
  friend bool operator==(const inplace_stop_token&, const inplace_stop_token&) noexcept = default;

 private:
  friend class inplace_stop_source;
  template <class Fn>
  friend class inplace_stop_callback;
  explicit inplace_stop_token(const inplace_stop_source* s) noexcept : source_(s) {}
  const inplace_stop_source* source_ = nullptr;
};

/// A stop source that allocates nothing (std::stop_source allocates its shared state): it lives
/// in place, e.g. in a coroutine frame, and must outlive its tokens and callbacks. request_stop()
/// may be called from any thread; callbacks registered with its tokens run on that thread, and
/// deregistering a callback waits for it if it is running on another thread (as std's does).
class inplace_stop_source {
 public:
  inplace_stop_source() noexcept = default;
  inplace_stop_source(const inplace_stop_source&) = delete;
  inplace_stop_source& operator=(const inplace_stop_source&) = delete;

  [[nodiscard]] inplace_stop_token get_token() const noexcept { return inplace_stop_token(this); }
  [[nodiscard]] bool stop_requested() const noexcept {
    return (state_.load(std::memory_order_acquire) & stop_requested_flag) != 0;
  }
  [[nodiscard]] static constexpr bool stop_possible() noexcept { return true; }

  /// Returns false if stop had already been requested.
  bool request_stop() noexcept {
    if (!lock_unless_stopped(true)) return false;
    notifying_thread_ = std::this_thread::get_id();
    while (callbacks_) {
      detail::inplace_callback_base* cb = callbacks_;
      cb->prev_ptr = nullptr;
      callbacks_ = cb->next;
      if (callbacks_) callbacks_->prev_ptr = &callbacks_;
      state_.store(stop_requested_flag, std::memory_order_release);  // unlock while it runs
      bool removed = false;
      cb->removed_during_callback = &removed;
      cb->execute(cb);
      if (!removed) {
        cb->removed_during_callback = nullptr;
        cb->completed.store(true, std::memory_order_release);
        cb->completed.notify_all();
      }
      lock();
    }
    state_.store(stop_requested_flag, std::memory_order_release);
    return true;
  }

 private:
  template <class Fn>
  friend class inplace_stop_callback;

  static constexpr std::uint8_t stop_requested_flag = 1;
  static constexpr std::uint8_t locked_flag = 2;

  std::uint8_t lock() const noexcept {
    std::uint8_t old = state_.load(std::memory_order_relaxed);
    do {
      while (old & locked_flag) {
        std::this_thread::yield();
        old = state_.load(std::memory_order_relaxed);
      }
    } while (!state_.compare_exchange_weak(old, old | locked_flag, std::memory_order_acquire,
                                           std::memory_order_relaxed));
    return old;
  }
  bool lock_unless_stopped(bool and_request_stop) const noexcept {
    std::uint8_t old = state_.load(std::memory_order_relaxed);
    const std::uint8_t next = and_request_stop ? (locked_flag | stop_requested_flag) : locked_flag;
    do {
      for (;;) {
        if (old & stop_requested_flag) return false;
        if (!(old & locked_flag)) break;
        std::this_thread::yield();
        old = state_.load(std::memory_order_relaxed);
      }
    } while (!state_.compare_exchange_weak(old, next, std::memory_order_acq_rel,
                                           std::memory_order_relaxed));
    return true;
  }

  // false: stop was already requested (the caller runs the callback itself)
  bool try_add(detail::inplace_callback_base* cb) const noexcept {
    if (!lock_unless_stopped(false)) return false;
    cb->next = callbacks_;
    cb->prev_ptr = &callbacks_;
    if (callbacks_) callbacks_->prev_ptr = &cb->next;
    callbacks_ = cb;
    state_.store(0, std::memory_order_release);
    return true;
  }
  void remove(detail::inplace_callback_base* cb) const noexcept {
    const std::uint8_t old = lock();
    if (cb->prev_ptr) {  // still registered: unlink
      *cb->prev_ptr = cb->next;
      if (cb->next) cb->next->prev_ptr = cb->prev_ptr;
      state_.store(old, std::memory_order_release);
      return;
    }
    const std::thread::id notifier = notifying_thread_;
    state_.store(old, std::memory_order_release);
    if (notifier == std::this_thread::get_id()) {  // from inside the callback itself
      if (cb->removed_during_callback) *cb->removed_during_callback = true;
    } else {  // running or ran on another thread: wait until it has returned
      cb->completed.wait(false, std::memory_order_acquire);
    }
  }

  mutable std::atomic<std::uint8_t> state_{0};
  mutable detail::inplace_callback_base* callbacks_ = nullptr;
  std::thread::id notifying_thread_{};
};

inline bool inplace_stop_token::stop_requested() const noexcept {
  return source_ && source_->stop_requested();
}

template <class Fn>
class inplace_stop_callback : detail::inplace_callback_base {
 public:
  template <class Init>
  inplace_stop_callback(inplace_stop_token token, Init&& fn) noexcept(
      std::is_nothrow_constructible_v<Fn, Init&&>)
      : inplace_callback_base(token.source_, &inplace_stop_callback::run), fn_(std::forward<Init>(fn)) {
    if (source && !source->try_add(this)) {
      source = nullptr;
      fn_();
    }
  }
  inplace_stop_callback(const inplace_stop_callback&) = delete;
  inplace_stop_callback& operator=(const inplace_stop_callback&) = delete;
  ~inplace_stop_callback() {
    if (source) source->remove(this);
  }

 private:
  static void run(detail::inplace_callback_base* b) noexcept {
    static_cast<inplace_stop_callback&>(*b).fn_();
  }
  Fn fn_;
};

template <class Fn>
inplace_stop_callback(inplace_stop_token, Fn) -> inplace_stop_callback<Fn>;

RINGNET_END_NAMESPACE
