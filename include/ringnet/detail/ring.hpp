// The engine under io_context: one io_uring driven by one thread. Submissions are batched into one
// io_uring_enter per loop turn; completions are reaped in bulk and dispatched through user_data.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/completion.hpp>
#include <ringnet/error.hpp>

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <bitset>
#include <cerrno>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

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
};

namespace detail {

// Intrusive membership of a detached (spawned) coroutine in its ring.
struct detached_link {
  detached_link* prev = nullptr;
  detached_link* next = nullptr;
  std::coroutine_handle<> frame;
};

class ring;
inline thread_local ring* current_ring = nullptr;

class ring {
 public:
  explicit ring(const io_context_options& opts) {
    setup(opts);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
      int e = errno;
      io_uring_queue_exit(&ring_);
      throw_error(errno_code(e), "eventfd");
    }
    probe(opts.disabled_ops);
  }

  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;

  ~ring() {
    shutdown();
    io_uring_queue_exit(&ring_);
    ::close(wake_fd_);
  }

  // ---- queries -------------------------------------------------------------------------
  [[nodiscard]] bool supports(unsigned opcode) const noexcept {
    return opcode < ops_.size() && ops_.test(opcode);
  }
  [[nodiscard]] ring_mode mode() const noexcept { return mode_; }
  [[nodiscard]] unsigned setup_flags() const noexcept { return ring_.flags; }
  [[nodiscard]] bool on_this_thread() const noexcept { return current_ring == this; }
  [[nodiscard]] io_uring& native() noexcept { return ring_; }
  [[nodiscard]] bool draining() const noexcept { return draining_; }
  [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_; }
  [[nodiscard]] bool cq_nodrop() const noexcept { return nodrop_; }
  // Provided-buffer group ids are per ring.
  [[nodiscard]] std::uint16_t next_buffer_group() noexcept { return next_buffer_group_++; }

  // ---- submission (ring thread only) ---------------------------------------------------
  // `n` consecutive SQEs (for links). A full SQ is submitted first: nothing is ever dropped.
  io_uring_sqe* get_sqes(unsigned n) noexcept {
    while (io_uring_sq_space_left(&ring_) < n) submit_now();
    return next_sqe();
  }
  // The next SQE after get_sqes(n > 1) reserved room for it.
  io_uring_sqe* next_sqe() noexcept {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) __builtin_unreachable();  // room was made above
    return sqe;
  }
  void op_started() noexcept { ++in_flight_; }
  void op_finished() noexcept { --in_flight_; }

  // Cancels the operation whose user_data is `target`; its own CQE reports the outcome.
  void cancel(std::uint64_t target) noexcept {
    io_uring_sqe* sqe = get_sqes(1);
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, ignore_cqe);
  }
  // Cancels every operation on `fd` (kernel 5.19+).
  void cancel_fd(int fd) noexcept {
    io_uring_sqe* sqe = get_sqes(1);
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, ignore_cqe);
  }

  // ---- scheduling ---------------------------------------------------------------------
  void post(std::coroutine_handle<> h) { ready_.push_back(h); }  // ring thread only
  void post_remote(remote_node* n) noexcept {                     // any thread
    if (remote_.push(n)) wake();
  }
  void request_stop() noexcept {
    stop_.store(true, std::memory_order_release);
    if (!on_this_thread()) wake();
  }
  [[nodiscard]] bool stop_requested() const noexcept {
    return stop_.load(std::memory_order_acquire);
  }
  void clear_stop() noexcept { stop_.store(false, std::memory_order_release); }

  void attach(detached_link* l) noexcept {
    l->next = detached_;
    if (detached_) detached_->prev = l;
    detached_ = l;
    ++detached_count_;
  }
  void detach(detached_link* l) noexcept {
    (l->prev ? l->prev->next : detached_) = l->next;
    if (l->next) l->next->prev = l->prev;
    --detached_count_;
  }
  void add_work() noexcept { external_work_.fetch_add(1, std::memory_order_relaxed); }
  void remove_work() noexcept {
    if (external_work_.fetch_sub(1, std::memory_order_acq_rel) == 1) wake();
  }

  void set_exception_handler(std::function<void(std::exception_ptr)> h) {
    exception_handler_ = std::move(h);
  }
  void report(std::exception_ptr e) noexcept {
    if (exception_handler_) {
      exception_handler_(std::move(e));
    } else if (!unhandled_) {
      unhandled_ = std::move(e);
    }
  }
  void rethrow_unhandled() {
    if (unhandled_) std::rethrow_exception(std::exchange(unhandled_, nullptr));
  }

  [[nodiscard]] bool has_work() const noexcept {
    return in_flight_ > 0 || !ready_.empty() || detached_count_ > 0 || !remote_.empty() ||
           external_work_.load(std::memory_order_acquire) > 0;
  }

  // ---- the loop --------------------------------------------------------------------------
  // One turn: one io_uring_enter (submit, and wait only if nothing is ready to run), dispatch
  // every completion, then run what became ready. Callers check their exit condition between
  // turns, so a turn never blocks when a coroutine is waiting to run.
  void run_turn(bool may_block) {
    current_guard guard(this);
    enable_on_first_run();
    if (!wake_armed_) arm_wake();
    const bool block = may_block && ready_.empty() && remote_.empty() && !stop_requested();
    const int r = block ? io_uring_submit_and_wait(&ring_, 1)
                        : io_uring_submit_and_get_events(&ring_);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN && r != -ETIME)
      throw_error(errno_code(-r), "io_uring_enter");
    reap();
    drain_remote();
    run_ready();
  }

  // Takes every request handed over by other threads and runs it here.
  void drain_remote() noexcept {
    for (remote_node* n = remote_.take_all(); n;) {
      remote_node* next = n->next;
      n->run(n);
      n = next;
    }
  }

 private:
  struct current_guard {
    explicit current_guard(ring* r) noexcept : saved(std::exchange(current_ring, r)) {}
    ~current_guard() { current_ring = saved; }
    current_guard(const current_guard&) = delete;
    current_guard& operator=(const current_guard&) = delete;
    ring* saved;
  };

  void setup(const io_context_options& opts) {
    struct attempt {
      ring_mode mode;
      unsigned flags;
    };
    // R_DISABLED: a SINGLE_ISSUER ring belongs to the thread that enables it, so an io_context
    // may be created on one thread and run on another.
    static constexpr attempt attempts[] = {
        {ring_mode::defer_taskrun, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
                                       IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL |
                                       IORING_SETUP_R_DISABLED},
        {ring_mode::defer_taskrun,
         IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED},
        {ring_mode::coop_taskrun, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL},
        {ring_mode::coop_taskrun, IORING_SETUP_COOP_TASKRUN},
        {ring_mode::basic, 0},
    };
    const unsigned cq = opts.cq_entries ? opts.cq_entries : opts.entries * 16;
    int err = -EINVAL;
    for (const attempt& a : attempts) {
      if (a.mode < opts.mode) continue;
      io_uring_params p{};
      p.flags = a.flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
      p.cq_entries = cq;
      err = io_uring_queue_init_params(opts.entries, &ring_, &p);
      if (err == 0) {
        mode_ = a.mode;
        enabled_ = !(a.flags & IORING_SETUP_R_DISABLED);
        nodrop_ = (p.features & IORING_FEAT_NODROP) != 0;
        return;
      }
      if (err != -EINVAL) break;  // ENOSYS/EPERM/ENOMEM: no point trying weaker flags
    }
    throw_error(errno_code(-err), "io_uring_setup");
  }

  void probe(const opcode_set& disabled) {
    io_uring_probe* p = io_uring_get_probe_ring(&ring_);
    if (!p) p = io_uring_get_probe();
    if (!p) return;  // no probe support: only the 5.5 baseline is assumed
    for (unsigned op = 0; op < IORING_OP_LAST && op < ops_.size(); ++op)
      ops_.set(op, io_uring_opcode_supported(p, static_cast<int>(op)) && !disabled.test(op));
    io_uring_free_probe(p);
  }

  void enable_on_first_run() {
    if (enabled_) return;
    // liburing 2.3 declares io_uring_enable_rings but does not export it: call the kernel.
    if (::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
      throw_error(errno_code(errno), "io_uring_register(ENABLE_RINGS)");
    enabled_ = true;
    owner_ = std::this_thread::get_id();
  }

  void wake() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof one);
  }
  void arm_wake() noexcept {
    io_uring_sqe* sqe = get_sqes(1);
    io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof wake_value_, 0);
    io_uring_sqe_set_data64(sqe, wake_cqe);
    wake_armed_ = true;
  }

  void submit_now() noexcept {
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR || r == -EAGAIN || r == -EBUSY);
  }

  void run_ready() {
    running_.swap(ready_);
    for (std::coroutine_handle<> h : running_) h.resume();
    running_.clear();
  }

  void reap() {
    struct entry {
      std::uint64_t user_data;
      int res;
      std::uint32_t flags;
    };
    constexpr unsigned batch = 64;
    io_uring_cqe* cqes[batch];
    entry copy[batch];
    for (;;) {
      const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, batch);
      if (n == 0) break;
      // Copy and release the CQ slots before resuming anyone: handlers may submit and enter.
      for (unsigned i = 0; i < n; ++i) copy[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
      io_uring_cq_advance(&ring_, n);
      for (unsigned i = 0; i < n; ++i) dispatch(copy[i].user_data, copy[i].res, copy[i].flags);
      if (n < batch) break;
    }
  }

  void dispatch(std::uint64_t user_data, int res, std::uint32_t flags) noexcept {
    if (user_data == ignore_cqe) return;
    if (user_data == wake_cqe) {
      wake_armed_ = false;  // re-armed at the start of the next turn
      if (!draining_) drain_remote();
      return;
    }
    auto* c = reinterpret_cast<completion*>(user_data);
    c->on_cqe(c, res, flags);
  }

  // Cancels everything still in flight and waits for every CQE (the kernel may write into
  // coroutine frames until then), then destroys the frames of unfinished detached tasks.
  void shutdown() noexcept {
    if (!enabled_ || (owner_ != std::thread::id{} && owner_ != std::this_thread::get_id())) {
      return;  // cannot wait here (SINGLE_ISSUER): leave the frames rather than free live memory
    }
    current_guard guard(this);
    draining_ = true;
    if (in_flight_ > 0 || wake_armed_) {
      io_uring_sqe* sqe = get_sqes(1);
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, ignore_cqe);
    }
    for (int spins = 0; (in_flight_ > 0 || wake_armed_) && spins < 100; ++spins) {
      __kernel_timespec ts{0, 50'000'000};
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      reap();
    }
    if (in_flight_ > 0) return;  // an op ignored its cancel for 5 s: leak its frame, never free it
    while (detached_) {
      detached_link* l = detached_;
      detach(l);
      l->frame.destroy();
    }
  }

  io_uring ring_{};
  ring_mode mode_ = ring_mode::basic;
  bool enabled_ = true;
  bool nodrop_ = false;
  bool draining_ = false;
  bool wake_armed_ = false;
  std::thread::id owner_{};
  opcode_set ops_;

  std::size_t in_flight_ = 0;
  std::uint16_t next_buffer_group_ = 0;
  std::vector<std::coroutine_handle<>> ready_;
  std::vector<std::coroutine_handle<>> running_;
  detached_link* detached_ = nullptr;
  std::size_t detached_count_ = 0;

  int wake_fd_ = -1;
  std::uint64_t wake_value_ = 0;
  remote_stack remote_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> external_work_{0};

  std::function<void(std::exception_ptr)> exception_handler_;
  std::exception_ptr unhandled_;
};

}  // namespace detail
RINGNET_END_NAMESPACE
