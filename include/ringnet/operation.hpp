// The one generic operation awaitable: fill one SQE, suspend, resume on its CQE.
//
// Every io_uring operation in ringnet is an `operation<Op, Token>` where Op is a small descriptor:
//
//   struct recv_op {
//     void prepare(io_uring_sqe*) noexcept;             // fill the SQE
//     R complete(int res, std::uint32_t flags) noexcept; // res: >= 0 or -errno, mapped to R
//     // optional: std::optional<int> try_inline() noexcept;  complete without the kernel
//     // optional: static void discard(int res) noexcept;      nobody will see res (ring closing)
//     // optional: static constexpr bool linkable_timeout = false;  runs in io-wq (FACTS #6)
//     // optional: void submitted() noexcept; void completed() noexcept;  per-fd bookkeeping
//   };
//
// Contract: the awaiter lives in the coroutine frame (no allocation); its address is user_data.
// The coroutine resumes exactly once, on the operation's own CQE, never on a cancel's or a
// timeout's. Stop before start: operation_canceled without touching the kernel. Stop during the
// operation, from any thread: IORING_OP_ASYNC_CANCEL, issued on the ring's thread. A result that
// won the race against its cancel is kept. A linked timeout surfaces as timed_out.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/stop_token.hpp>

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>

RINGNET_BEGIN_NAMESPACE

/// "No timeout" for the timeout parameter of every operation.
inline constexpr std::chrono::nanoseconds no_timeout = std::chrono::nanoseconds::max();

namespace detail {

inline constexpr int erestartsys = 512;  // what a cancelled SPLICE was seen returning

inline __kernel_timespec to_timespec(std::chrono::nanoseconds d) noexcept {
  if (d.count() < 0) d = std::chrono::nanoseconds::zero();
  return {static_cast<long long>(d.count() / 1'000'000'000),
          static_cast<long long>(d.count() % 1'000'000'000)};
}

template <class Op>
concept inline_completing = requires(Op& op) {
  { op.try_inline() } noexcept -> std::same_as<std::optional<int>>;
};
template <class Op>
concept discarding = requires(int res) { Op::discard(res); };
template <class Op>
inline constexpr bool linkable_timeout_v = [] {
  if constexpr (requires { Op::linkable_timeout; })
    return Op::linkable_timeout;
  else
    return true;
}();

template <class Op>
concept submit_hooked = requires(Op& op) { op.submitted(); };
template <class Op>
concept complete_hooked = requires(Op& op) { op.completed(); };

// Turns a stop request (from any thread) into an ASYNC_CANCEL of `target`, issued on the ring's
// thread. Lives next to the awaiting coroutine; settle() before that coroutine resumes.
class canceller : public remote_node {
 public:
  // `custom`, if given, replaces the ASYNC_CANCEL of `target` (still run on the ring's thread).
  using custom_cancel = void (*)(std::uint64_t target) noexcept;
  canceller(ring& r, std::uint64_t target, custom_cancel custom = nullptr) noexcept
      : remote_node{&canceller::cancel_from_remote}, ring_(&r), target_(target), custom_(custom) {}
  canceller(const canceller&) = delete;
  canceller& operator=(const canceller&) = delete;

  // The stop callback itself: never touches the SQ off the ring's thread.
  void request() noexcept {
    if (ring_->on_this_thread()) {
      cancel_here();
    } else {
      remote_queued_.store(true, std::memory_order_release);
      ring_->post_remote(this);
    }
  }
  // The target's final CQE arrived. Call after deregistering the stop callback: our node may
  // still sit in the remote stack, so drain it before the memory can go away.
  void settle() noexcept {
    finished_ = true;
    if (remote_queued_.load(std::memory_order_acquire)) ring_->drain_remote();
  }
  void retarget(std::uint64_t target) noexcept { target_ = target; }
  [[nodiscard]] ring& owner() const noexcept { return *ring_; }

  struct callback_fn {
    canceller* self;
    void operator()() const noexcept { self->request(); }
  };

 private:
  void cancel_here() noexcept {
    if (finished_ || sent_) return;
    sent_ = true;
    if (custom_)
      custom_(target_);
    else
      ring_->cancel(target_);
  }
  static void cancel_from_remote(remote_node* n) noexcept {
    static_cast<canceller&>(*n).cancel_here();
  }

  ring* ring_;
  std::uint64_t target_;
  custom_cancel custom_;
  bool finished_ = false;
  bool sent_ = false;
  std::atomic<bool> remote_queued_{false};
};

// A stop callback registration for any stoppable token; nothing at all for never_stop_token.
template <class Token>
class stop_registration {
  static constexpr bool can_stop = !std::is_same_v<Token, never_stop_token>;

 public:
  void arm(const Token& token, canceller& c) noexcept {
    if constexpr (can_stop) {
      if (token.stop_possible()) callback_.emplace(token, canceller::callback_fn{&c});
    }
  }
  void disarm() noexcept {  // waits for a callback running on another thread
    if constexpr (can_stop) callback_.reset();
  }

 private:
  struct none {};
  using callback = stop_callback_for_t<Token, canceller::callback_fn>;
  [[no_unique_address]] std::conditional_t<can_stop, std::optional<callback>, none> callback_;
};

}  // namespace detail

template <class Op, stoppable_token Token = never_stop_token>
class [[nodiscard]] operation : detail::completion {
 public:
  operation(io_context& ctx, Op op, Token token = {}) noexcept
      : completion{&operation::on_complete},
        op_(std::move(op)),
        token_(std::move(token)),
        cancel_(detail::ring_of(ctx), user_data()) {}

  operation(io_context& ctx, Op op, Token token, std::chrono::nanoseconds timeout) noexcept
    requires detail::linkable_timeout_v<Op>
      : operation(ctx, std::move(op), std::move(token)) {
    timeout_ = timeout;
  }

  // Movable until awaited (so combinators can take operations by value).
  operation(operation&& o) noexcept
      : completion{&operation::on_complete},
        op_(std::move(o.op_)),
        token_(std::move(o.token_)),
        cancel_(o.cancel_.owner(), user_data()),
        timeout_(o.timeout_) {}
  operation& operator=(operation&&) = delete;

  bool await_ready() noexcept {
    if constexpr (detail::inline_completing<Op>) {
      if (std::optional<int> r = op_.try_inline()) {
        res_ = *r;
        return true;
      }
    }
    if (token_.stop_requested()) {
      res_ = -ECANCELED;
      return true;
    }
    return false;
  }

  void await_suspend(std::coroutine_handle<> waiter) noexcept {
    waiter_ = waiter;
    detail::ring& r = cancel_.owner();
    const bool timed = timeout_ != no_timeout;
    io_uring_sqe* sqe = r.get_sqes(timed ? 2u : 1u);
    op_.prepare(sqe);
    io_uring_sqe_set_data64(sqe, user_data());
    if (timed) {
      sqe->flags |= IOSQE_IO_LINK;
      deadline_ = std::chrono::steady_clock::now() + timeout_;
      ts_ = detail::to_timespec(timeout_);
      io_uring_sqe* t = r.next_sqe();
      io_uring_prep_link_timeout(t, &ts_, 0);
      io_uring_sqe_set_data64(t, detail::ignore_cqe);
    }
    r.op_started();
    if constexpr (detail::submit_hooked<Op>) op_.submitted();
    stop_.arm(token_, cancel_);
  }

  decltype(auto) await_resume() noexcept(noexcept(op_.complete(0, 0))) {
    return op_.complete(res_, cqe_flags_);
  }

 private:
  [[nodiscard]] std::uint64_t user_data() noexcept {
    return reinterpret_cast<std::uint64_t>(static_cast<completion*>(this));
  }

  static void on_complete(detail::completion* c, int res, std::uint32_t flags) noexcept {
    auto* self = static_cast<operation*>(c);
    detail::ring& r = self->cancel_.owner();
    r.op_finished();
    self->stop_.disarm();
    self->cancel_.settle();
    if constexpr (detail::complete_hooked<Op>) self->op_.completed();
    if (r.draining()) {
      if constexpr (detail::discarding<Op>) Op::discard(res);
      return;
    }
    self->res_ = self->classify(res);
    self->cqe_flags_ = flags;
    self->waiter_.resume();
  }

  // -ECANCELED / -EINTR (io-wq) / -ERESTARTSYS all mean "cancelled": by our stop token, by our
  // linked timeout, or by someone cancelling the fd (close).
  [[nodiscard]] int classify(int res) const noexcept {
    if (res >= 0 || (res != -ECANCELED && res != -EINTR && res != -detail::erestartsys)) return res;
    if (token_.stop_requested()) return -ECANCELED;
    if (timeout_ != no_timeout && std::chrono::steady_clock::now() >= deadline_) return -ETIMEDOUT;
    return -ECANCELED;
  }

  Op op_;
  [[no_unique_address]] Token token_;
  detail::canceller cancel_;
  detail::stop_registration<Token> stop_;
  std::coroutine_handle<> waiter_;
  int res_ = 0;
  std::uint32_t cqe_flags_ = 0;
  std::chrono::nanoseconds timeout_ = no_timeout;
  std::chrono::steady_clock::time_point deadline_{};
  __kernel_timespec ts_{};
};

namespace detail {
// Result helpers for descriptors.
inline result<std::size_t> size_result(int res) noexcept {
  if (res < 0) return errno_code(-res);
  return static_cast<std::size_t>(res);
}
inline result<void> void_result(int res) noexcept {
  if (res < 0) return errno_code(-res);
  return {};
}
}  // namespace detail

RINGNET_END_NAMESPACE
