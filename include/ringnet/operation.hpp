// The two awaitables everything in ringnet is built from, both on the one completion machinery
// of detail/request.hpp:
//
// operation<Op, Token>: one kernel request. Op is a small descriptor:
//
//   struct recv_op {
//     void prepare(io_uring_sqe*) noexcept;               // fill the SQE
//     R complete(int res, std::uint32_t flags) noexcept;  // the settled result (>= 0 or -errno)
//     // optional: std::optional<int> try_inline() noexcept;   a result without the kernel
//     // optional: std::optional<int> try_syscall() noexcept;  a result from a non-blocking
//     //           syscall instead of a request, tried once the stop token was checked
//     // optional: void submitted(detail::request&) noexcept;  it is in flight (a socket counts it)
//     // optional: int settle(detail::request&, int res, std::uint32_t flags) noexcept;  on the
//     //           ring's thread at the final CQE, before anyone resumes: interpret the result,
//     //           release what submitted() took; returns the result complete() will see
//     // optional: static void discard(int res) noexcept;      nobody will see res (ring closing)
//     // optional: static constexpr bool linkable_timeout = false;   it runs in an io-wq worker,
//     //           where a linked timeout never fires
//   };
//
// Contract: the awaiter lives in the coroutine frame (no allocation); the coroutine resumes
// exactly once, on the request's own final CQE, never on a cancel's or a timeout's. Stop before
// start: operation_canceled without touching the kernel. Stop during the request, from any
// thread: IORING_OP_ASYNC_CANCEL, issued on the ring's thread. A result that won the race
// against its cancel is kept. A linked timeout surfaces as timed_out.
//
// detail::waiting<Source, Token>: a wait on a shared source (a socket's received data, a
// listener's accepted connections, a socket going idle). A stop ends the wait at once, on the
// ring's thread, and leaves whatever the source holds for the next call.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/request.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/stop_token.hpp>

#include <liburing.h>

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

inline __kernel_timespec to_timespec(std::chrono::nanoseconds d) noexcept {
  if (d.count() < 0) d = std::chrono::nanoseconds::zero();
  return {static_cast<long long>(d.count() / 1'000'000'000),
          static_cast<long long>(d.count() % 1'000'000'000)};
}

// `t + d` on the steady clock, saturating at time_point::max() (no_timeout, or just far away).
inline std::chrono::steady_clock::time_point deadline_after(std::chrono::steady_clock::time_point t,
                                                            std::chrono::nanoseconds d) noexcept {
  using tp = std::chrono::steady_clock::time_point;
  if (d.count() <= 0) return t;
  if (d >= tp::max() - t) return tp::max();
  return t + std::chrono::duration_cast<tp::duration>(d);
}
inline std::chrono::steady_clock::time_point deadline_after(std::chrono::nanoseconds d) noexcept {
  // No clock read for the untimed case: it is on the path of every send_all.
  if (d == no_timeout) return std::chrono::steady_clock::time_point::max();
  return deadline_after(std::chrono::steady_clock::now(), d);
}
// What is left until `t` (zero once passed; no_timeout for time_point::max()).
inline std::chrono::nanoseconds until(std::chrono::steady_clock::time_point t) noexcept {
  if (t == std::chrono::steady_clock::time_point::max()) return no_timeout;
  const auto left = t - std::chrono::steady_clock::now();
  return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                          : std::chrono::nanoseconds::zero();
}

template <class Op>
concept inline_completing = requires(Op& op) {
  { op.try_inline() } noexcept -> std::same_as<std::optional<int>>;
};
template <class Op>
concept syscall_completing = requires(Op& op) {
  { op.try_syscall() } noexcept -> std::same_as<std::optional<int>>;
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
concept submit_hooked = requires(Op& op, request& r) { op.submitted(r); };
// An op the kernel may fail to cancel (it runs in an io-wq worker) names where the CQEs of its
// cancel and of its linked timeout go, which end it another way when they report that failure.
template <class Op>
concept cancel_reporting = requires(const Op& op) {
  { op.cancel_report() } noexcept -> std::same_as<std::uint64_t>;
};
template <class Op>
concept settling = requires(Op& op, request& r, int res, std::uint32_t flags) {
  { op.settle(r, res, flags) } noexcept -> std::same_as<int>;
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
class [[nodiscard]] operation : detail::request {
 public:
  operation(io_context& ctx, Op op, Token token = {}) noexcept
      : operation(&detail::ring_of(ctx), std::move(op), std::move(token)) {}
  operation(io_context& ctx, Op op, Token token, std::chrono::nanoseconds timeout) noexcept
    requires detail::linkable_timeout_v<Op>
      : operation(&detail::ring_of(ctx), std::move(op), std::move(token), timeout) {}

  // On a ring that may be absent (a stream without a socket): then it completes with
  // bad_file_descriptor at once.
  operation(detail::ring* r, Op op, Token token = {},
            std::chrono::nanoseconds timeout = no_timeout) noexcept
      : request(&operation::on_cqe),
        op_(std::move(op)),
        token_(std::move(token)),
        ring_(r),
        cancel_(r, &operation::cancel_request, static_cast<detail::request*>(this)),
        timeout_(detail::linkable_timeout_v<Op> ? timeout : no_timeout) {}

  // Movable until awaited (so combinators can take operations by value).
  operation(operation&& o) noexcept
      : operation(o.ring_, std::move(o.op_), std::move(o.token_), o.timeout_) {}
  operation& operator=(operation&&) = delete;

  bool await_ready() noexcept {
    if (!ring_) {
      res_ = -EBADF;
      return true;
    }
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
    if constexpr (detail::syscall_completing<Op>) {
      if (timeout_.count() <= 0) return false;  // past its deadline before it began
      if (std::optional<int> r = op_.try_syscall()) {
        res_ = *r;
        return true;
      }
    }
    return false;
  }

  void await_suspend(std::coroutine_handle<> waiter) noexcept {
    waiter_ = waiter;
    const bool timed = timeout_ != no_timeout;
    io_uring_sqe* sqe = start(*ring_, timed ? 2u : 1u);
    op_.prepare(sqe);
    if (timed) {
      sqe->flags |= IOSQE_IO_LINK;
      deadline = detail::deadline_after(timeout_);
      ts_ = detail::to_timespec(timeout_);
      io_uring_sqe* t = ring_->next_sqe();
      io_uring_prep_link_timeout(t, &ts_, 0);
      if constexpr (detail::cancel_reporting<Op>)
        io_uring_sqe_set_data64(t, op_.cancel_report());
      else
        io_uring_sqe_set_data64(t, detail::ignore_cqe);
    }
    if constexpr (detail::submit_hooked<Op>) op_.submitted(*this);
    stop_.arm(token_, cancel_);
  }

  decltype(auto) await_resume() noexcept(noexcept(op_.complete(0, 0))) {
    return op_.complete(res_, cqe_flags_);
  }

 private:
  static void cancel_request(void* r) noexcept {
    auto& self = static_cast<operation&>(*static_cast<detail::request*>(r));
    if constexpr (detail::cancel_reporting<Op>) {
      if (self.in_flight() && !self.cancel_sent()) return self.cancel(self.op_.cancel_report());
    }
    self.cancel();
  }

  static void on_cqe(detail::request& req, int res, std::uint32_t flags) noexcept {
    auto& self = static_cast<operation&>(req);
    self.stop_.disarm();
    self.cancel_.settle();
    if constexpr (detail::settling<Op>) res = self.op_.settle(req, res, flags);
    if (self.ring_->draining()) {
      if constexpr (detail::discarding<Op>) Op::discard(res);
      return;
    }
    self.res_ = self.classify(res);
    self.cqe_flags_ = flags;
    self.waiter_.resume();
  }

  // A cancelled request was cancelled by our stop token, by our linked timeout, or by someone
  // cancelling everything on the socket (close).
  [[nodiscard]] int classify(int res) const noexcept {
    if (!detail::cancelled_result(res)) return res;
    if (token_.stop_requested()) return -ECANCELED;
    if (timeout_ != no_timeout && std::chrono::steady_clock::now() >= deadline) return -ETIMEDOUT;
    return -ECANCELED;
  }

  Op op_;
  [[no_unique_address]] Token token_;
  detail::ring* ring_;
  detail::canceller cancel_;
  detail::stop_registration<Token> stop_;
  std::coroutine_handle<> waiter_;
  int res_ = 0;
  std::uint32_t cqe_flags_ = 0;
  std::chrono::nanoseconds timeout_ = no_timeout;
  __kernel_timespec ts_{};
};

namespace detail {

// A source a coroutine can wait on (see waiting below):
//   ring* owner();                 null: there is nothing to wait on (completes with EBADF)
//   int poll();                    waiter::pending to wait; else the result to give now
//   void enqueue(waiter&);         suspend on it (and start what will wake it)
//   void dequeue(waiter&);         the waiter's stop came first: forget it
//   R complete(int res);           the result for the caller
template <class S>
concept wait_source = requires(S& s, waiter& w, int res) {
  { s.owner() } noexcept -> std::same_as<ring*>;
  { s.poll() } noexcept -> std::same_as<int>;
  s.enqueue(w);
  s.dequeue(w);
  s.complete(res);
};

template <wait_source Source, stoppable_token Token>
class [[nodiscard]] waiting {
 public:
  waiting(Source src, Token token) noexcept
      : src_(std::move(src)), token_(std::move(token)), cancel_(src_.owner(), &waiting::end_wait, this) {}
  waiting(waiting&& o) noexcept : waiting(std::move(o.src_), std::move(o.token_)) {}  // before start
  waiting& operator=(waiting&&) = delete;
  ~waiting() {  // a frame destroyed while it waits (its ring is being destroyed)
    stop_.disarm();
    if (w_.queued) src_.dequeue(w_);
    if (w_.coro) cancel_.settle();
  }

  bool await_ready() noexcept {
    if (!src_.owner()) {
      w_.res = -EBADF;
      return true;
    }
    if (token_.stop_requested()) {
      w_.res = -ECANCELED;
      return true;
    }
    w_.res = src_.poll();
    return w_.res != waiter::pending;
  }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    w_.coro = h;
    src_.enqueue(w_);
    stop_.arm(token_, cancel_);
  }
  decltype(auto) await_resume() noexcept {
    if (w_.coro) {
      stop_.disarm();
      cancel_.settle();
    }
    return src_.complete(w_.res);
  }

 private:
  static void end_wait(void* p) noexcept {
    auto& self = *static_cast<waiting*>(p);
    if (!self.w_.queued) return;  // already woken: what woke it stands
    self.src_.dequeue(self.w_);
    self.w_.res = -ECANCELED;
    self.src_.owner()->post(self.w_.coro);
  }

  Source src_;
  [[no_unique_address]] Token token_;
  canceller cancel_;
  stop_registration<Token> stop_;
  waiter w_;
};

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
