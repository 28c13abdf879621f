// io_context: one io_uring, one thread. run() drives it; other threads reach it only through
// stop(), schedule() and stop-token callbacks, which hand work over via one eventfd.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/ring.hpp>

#include <coroutine>
#include <exception>
#include <functional>

RINGNET_BEGIN_NAMESPACE

class io_context;
namespace detail {
detail::ring& ring_of(io_context& ctx) noexcept;
}

class io_context {
 public:
  using options = io_context_options;

  /// Sets up the ring, falling back from DEFER_TASKRUN to COOP_TASKRUN to basic as the kernel
  /// allows. Throws std::system_error when io_uring is unavailable (ENOSYS, EPERM).
  explicit io_context(const options& opts = {}) : ring_(opts) {}
  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;
  /// Cancels what is still in flight, waits for the kernel to let go of it, and destroys the
  /// frames of spawned tasks that did not finish. Call it on the thread that ran the context.
  ~io_context() = default;

  /// Runs until stop() or until nothing is left: no operation in flight, no spawned task alive,
  /// no work_guard held. Rethrows an exception a spawned task left unhandled (when no handler is
  /// set); run() may be called again afterwards.
  void run() {
    while (!ring_.stop_requested() && ring_.has_work()) {
      ring_.run_turn(true);
      ring_.rethrow_unhandled();
    }
  }
  /// One loop turn without blocking; returns whether work remains.
  bool poll() {
    ring_.run_turn(false);
    ring_.rethrow_unhandled();
    return ring_.has_work();
  }
  /// Makes run() return soon. Safe from any thread and from signal-free contexts.
  void stop() noexcept { ring_.request_stop(); }
  [[nodiscard]] bool stopped() const noexcept { return ring_.stop_requested(); }
  void restart() noexcept { ring_.clear_stop(); }

  /// Where unhandled exceptions of spawned tasks go; without one, run() rethrows them.
  void set_exception_handler(std::function<void(std::exception_ptr)> handler) {
    ring_.set_exception_handler(std::move(handler));
  }

  /// Whether the kernel supports an IORING_OP_* (and it was not disabled in the options).
  [[nodiscard]] bool supports(io_uring_op op) const noexcept {
    return ring_.supports(static_cast<unsigned>(op));
  }
  [[nodiscard]] ring_mode mode() const noexcept { return ring_.mode(); }
  [[nodiscard]] unsigned setup_flags() const noexcept { return ring_.setup_flags(); }
  [[nodiscard]] bool running_in_this_thread() const noexcept { return ring_.on_this_thread(); }
  [[nodiscard]] io_uring& native_handle() noexcept { return ring_.native(); }

  /// `co_await ctx.schedule()` continues the coroutine on this context's thread. From the
  /// context's own thread it yields to other ready coroutines.
  [[nodiscard]] auto schedule() noexcept {
    struct awaiter : detail::remote_node {
      detail::ring* r;
      std::coroutine_handle<> h;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> waiter) {
        h = waiter;
        if (r->on_this_thread()) {
          r->post(h);
        } else {
          run = [](detail::remote_node* n) noexcept {
            auto& self = static_cast<awaiter&>(*n);
            self.r->post(self.h);
          };
          r->post_remote(this);
        }
      }
      void await_resume() const noexcept {}
    };
    awaiter a;
    a.r = &ring_;
    return a;
  }

  /// Keeps run() from returning for lack of work while held (e.g. while another thread will
  /// schedule() onto this context).
  class work_guard {
   public:
    explicit work_guard(io_context& ctx) noexcept : ring_(&ctx.ring_) { ring_->add_work(); }
    work_guard(work_guard&& o) noexcept : ring_(std::exchange(o.ring_, nullptr)) {}
    work_guard& operator=(work_guard&&) = delete;
    ~work_guard() { reset(); }
    void reset() noexcept {
      if (ring_) std::exchange(ring_, nullptr)->remove_work();
    }

   private:
    detail::ring* ring_;
  };

 private:
  friend detail::ring& detail::ring_of(io_context&) noexcept;
  detail::ring ring_;
};

namespace detail {
inline ring& ring_of(io_context& ctx) noexcept { return ctx.ring_; }
}  // namespace detail

RINGNET_END_NAMESPACE
