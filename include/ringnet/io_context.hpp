// io_context: one io_uring, one thread. run() drives it; other threads reach it only through
// stop(), schedule(), spawn() and stop-token callbacks, which hand work over via one eventfd.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/ring.hpp>

#include <bitset>
#include <chrono>
#include <coroutine>
#include <exception>
#include <functional>
#include <system_error>

RINGNET_BEGIN_NAMESPACE

/// How the ring was set up, most capable first. Set-up falls back down this list.
enum class ring_mode {
  defer_taskrun,  // SINGLE_ISSUER | DEFER_TASKRUN: completions run only inside our own enter
  coop_taskrun,   // COOP_TASKRUN: no IPIs, task work runs at the next enter
  basic,          // plain io_uring_setup
};

using opcode_set = std::bitset<256>;

struct io_context_options {
  unsigned entries = 256;                      // SQ size
  unsigned cq_entries = 0;                     // 0: 16 × entries (multishot bursts)
  ring_mode mode = ring_mode::defer_taskrun;   // the most capable mode to try
  opcode_set disabled_ops;                     // treated as unsupported (forces fallbacks)
  /// Registers the ring's descriptor with the thread that runs it (a defer_taskrun ring only, which
  /// keeps to one thread; kernel 5.18): each io_uring_enter then skips a file table lookup. The
  /// registration holds the ring until ~io_context undoes it on that thread, or the thread exits.
  bool register_ring_fd = true;
  /// send() and send_all() first try send(2) with MSG_DONTWAIT when no other send is in flight on the
  /// socket and nothing else is queued for the ring in this turn; what the socket buffer does not
  /// take is submitted as usual. One syscall replaces the io_uring_enter that would carry the send
  /// alone and return with its completion. Off: every send goes through the ring.
  bool send_inline = true;
  /// After a loop turn that handled more than one completion, the next wait lets the kernel
  /// gather as many (at most 64) for up to this long, then returns with what has come: one
  /// wake-up serves several connections (io_uring's min-wait, kernel 6.12; older kernels wait for
  /// the first completion, see has_batch_wait()). After a turn of one completion, and with 0,
  /// every wait returns at the first completion. A completion is held back by at most this long:
  /// a received byte, an operation's deadline, a stop from another thread alike; only a timer
  /// (sleep_for, sleep_until) ends the wait at once. Each step of a sequence that waits may pay
  /// it. 0 to 100 ms; anything else throws std::system_error (invalid_argument).
  std::chrono::microseconds batch_wait{20};
};

class io_context;
namespace detail {
detail::ring& ring_of(io_context& ctx) noexcept;
}

class io_context {
 public:
  using options = io_context_options;

  /// Sets up the ring, falling back from DEFER_TASKRUN to COOP_TASKRUN to basic as the kernel
  /// allows. Throws std::system_error when io_uring is unavailable (ENOSYS, EPERM).
  explicit io_context(const options& opts = {})
      : ring_(detail::ring_setup{opts.entries, opts.cq_entries, static_cast<int>(opts.mode),
                                 opts.disabled_ops, opts.register_ring_fd, opts.send_inline,
                                 checked_batch_wait(opts.batch_wait)}) {}
  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;
  /// Cancels what is still in flight, waits for the kernel to let go of it, and destroys the
  /// frames of spawned tasks that did not finish (nobody is resumed). Streams, listeners and
  /// buffer rings that outlive it have their sockets closed; their operations then fail with
  /// bad_file_descriptor. Call it on the thread that ran the context.
  ~io_context() = default;

  /// Runs until stop() or until nothing is left: no operation in flight, no spawned task alive,
  /// no work_guard held. Rethrows an exception a spawned task left unhandled (when no handler is
  /// set); run() may be called again afterwards. The first run binds the context to its thread
  /// (in DEFER_TASKRUN mode for good: the kernel accepts no other submitter); run() or
  /// sync_wait() from inside the context's own loop throws resource_deadlock_would_occur.
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
  /// Whether receive() keeps one multishot recv armed (kernel 6.0), or re-arms a single-shot one
  /// per call.
  [[nodiscard]] bool has_multishot_recv() const noexcept { return ring_.caps().multishot_recv; }
  /// Whether listener::next() takes many connections from one multishot accept (kernel 5.19).
  [[nodiscard]] bool has_multishot_accept() const noexcept { return ring_.caps().multishot_accept; }
  /// Whether io_uring_enter names the ring by its registered index (see register_ring_fd; known
  /// from the first run on; ask on the context's thread).
  [[nodiscard]] bool has_registered_ring_fd() const noexcept { return ring_.caps().registered_ring_fd; }
  /// Whether the kernel takes io_context_options::batch_wait (6.12); without, it is ignored.
  [[nodiscard]] bool has_batch_wait() const noexcept { return ring_.caps().batch_wait; }
  [[nodiscard]] ring_mode mode() const noexcept { return static_cast<ring_mode>(ring_.mode_index()); }
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
  static unsigned checked_batch_wait(std::chrono::microseconds wait) {
    if (wait.count() < 0 || wait > std::chrono::milliseconds(100))
      RINGNET_THROW(std::system_error(std::make_error_code(std::errc::invalid_argument),
                                      "ringnet: io_context_options::batch_wait must be 0 to 100 ms"));
    return static_cast<unsigned>(wait.count());
  }

  friend detail::ring& detail::ring_of(io_context&) noexcept;
  detail::ring ring_;
};

namespace detail {
inline ring& ring_of(io_context& ctx) noexcept { return ctx.ring_; }
}  // namespace detail

RINGNET_END_NAMESPACE
