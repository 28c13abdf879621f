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

// What every operation shares, independent of its descriptor and token types.
class op_base : public completion, public remote_node {
 protected:
  op_base(ring& r, completion::handler h) noexcept
      : completion{h}, remote_node{&op_base::cancel_from_remote}, ring_(&r) {}

  [[nodiscard]] std::uint64_t user_data() noexcept {
    return reinterpret_cast<std::uint64_t>(static_cast<completion*>(this));
  }

  // The stop callback: runs on whichever thread requested stop, never touches the SQ off-thread.
  void request_cancel() noexcept {
    if (ring_->on_this_thread()) {
      cancel_here();
    } else {
      remote_queued_.store(true, std::memory_order_release);
      ring_->post_remote(this);
    }
  }
  void cancel_here() noexcept {
    if (finished_ || cancel_sent_) return;
    cancel_sent_ = true;
    ring_->cancel(user_data());
  }
  static void cancel_from_remote(remote_node* n) noexcept {
    static_cast<op_base&>(*n).cancel_here();
  }
  // Once the stop callback is deregistered, our node may still sit in the remote stack: drain
  // it before the frame can go away.
  void settle_remote() noexcept {
    if (remote_queued_.load(std::memory_order_acquire)) ring_->drain_remote();
  }

  struct canceller {
    op_base* op;
    void operator()() const noexcept { op->request_cancel(); }
  };

  ring* ring_;
  std::coroutine_handle<> waiter_;
  int res_ = 0;
  std::uint32_t cqe_flags_ = 0;
  bool finished_ = false;
  bool cancel_sent_ = false;
  std::atomic<bool> remote_queued_{false};
};

}  // namespace detail

template <class Op, stoppable_token Token = never_stop_token>
class [[nodiscard]] operation : detail::op_base {
  static constexpr bool can_stop = !std::is_same_v<Token, never_stop_token>;
  using callback = stop_callback_for_t<Token, canceller>;

 public:
  operation(io_context& ctx, Op op, Token token = {}) noexcept
      : op_base(detail::ring_of(ctx), &operation::on_complete),
        op_(std::move(op)),
        token_(std::move(token)) {}

  operation(io_context& ctx, Op op, Token token, std::chrono::nanoseconds timeout) noexcept
    requires detail::linkable_timeout_v<Op>
      : operation(ctx, std::move(op), std::move(token)) {
    timeout_ = timeout;
  }

  // Movable until awaited (so combinators can take operations by value).
  operation(operation&& o) noexcept
      : op_base(*o.ring_, &operation::on_complete),
        op_(std::move(o.op_)),
        token_(std::move(o.token_)),
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
    const bool timed = timeout_ != no_timeout;
    io_uring_sqe* sqe = ring_->get_sqes(timed ? 2u : 1u);
    op_.prepare(sqe);
    io_uring_sqe_set_data64(sqe, user_data());
    if (timed) {
      sqe->flags |= IOSQE_IO_LINK;
      deadline_ = std::chrono::steady_clock::now() + timeout_;
      ts_ = detail::to_timespec(timeout_);
      io_uring_sqe* t = ring_->next_sqe();
      io_uring_prep_link_timeout(t, &ts_, 0);
      io_uring_sqe_set_data64(t, detail::ignore_cqe);
    }
    ring_->op_started();
    if constexpr (can_stop) {
      if (token_.stop_possible()) callback_.emplace(token_, canceller{this});
    }
  }

  decltype(auto) await_resume() noexcept(noexcept(op_.complete(0, 0))) {
    return op_.complete(res_, cqe_flags_);
  }

 private:
  static void on_complete(detail::completion* c, int res, std::uint32_t flags) noexcept {
    auto* self = static_cast<operation*>(c);
    self->ring_->op_finished();
    self->finished_ = true;
    if constexpr (can_stop) self->callback_.reset();  // waits for a callback running elsewhere
    self->settle_remote();
    if (self->ring_->draining()) {
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
  std::chrono::nanoseconds timeout_ = no_timeout;
  std::chrono::steady_clock::time_point deadline_{};
  __kernel_timespec ts_{};
  struct no_callback {};
  [[no_unique_address]] std::conditional_t<can_stop, std::optional<callback>, no_callback> callback_;
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
