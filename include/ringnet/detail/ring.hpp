// The engine under io_context: one io_uring driven by one thread. Submissions are batched into one
// io_uring_enter per loop turn; completions are reaped in bulk and dispatched through user_data.
//
// Lifetimes: everything that holds kernel state on the ring (a socket's state, a listener's
// accept queue, a provided-buffer group) registers as a ring_resource. Destroying the ring
// cancels every request and waits for every completion, destroys the frames of detached tasks,
// then tells each resource still alive that the ring is gone, so none of them touches it later.
#pragma once

#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/config.hpp>
#include <ringnet/detail/intrusive_list.hpp>
#ifdef RINGNET_DETAIL_FAULTS
#include <ringnet/detail/fault_injection.hpp>
#endif

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
#include <limits>
#include <system_error>
#include <utility>
#include <vector>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// How to set the ring up (io_context_options, minus the public vocabulary).
struct ring_setup {
  unsigned entries = 256;
  unsigned cq_entries = 0;  // 0: 16 × entries (multishot bursts)
  int weakest_first = 0;    // 0: try DEFER_TASKRUN first, 1: COOP_TASKRUN first, 2: no flags
  std::bitset<256> disabled_ops;
  bool register_ring_fd = true;
  bool send_inline = true;
  unsigned batch_wait_us = 20;  // 0: every wait returns at the first completion
};

// What the kernel can do, by name. The probe lists opcodes, not flags: where a capability is a
// flag or a mode of an older opcode, it is read from an opcode that came with the same kernel.
struct ring_caps {
  bool socket_op = false;         // IORING_OP_SOCKET (5.19)
  bool shutdown_op = false;       // IORING_OP_SHUTDOWN (5.11)
  bool close_op = false;          // IORING_OP_CLOSE (5.6)
  bool splice_op = false;         // IORING_OP_SPLICE (5.7)
  bool multishot_accept = false;  // IORING_ACCEPT_MULTISHOT: 5.19, like IORING_OP_SOCKET
  bool multishot_recv = false;    // IORING_RECV_MULTISHOT: 6.0, like IORING_OP_SEND_ZC
  // A multishot recv that ends by itself after a number of bytes (the SQE's optlen, which shares
  // its place with file_index): 6.17, which brought no opcode to tell it by. Assumed, and found
  // out at the first use: an older kernel refuses the SQE with EINVAL (it rejects a file_index
  // on a recv), and lacks_multishot_recv_limit() records it.
  bool multishot_recv_limit = true;
  // The ring's descriptor registered with the thread that runs it (IORING_REGISTER_RING_FDS,
  // 5.18): every io_uring_enter then names it by index, without a file table lookup.
  bool registered_ring_fd = false;
  // A wait may ask for a number of completions within a time, then return with the first after
  // it (io_uring_getevents_arg's min_wait_usec, IORING_FEAT_MIN_TIMEOUT: 6.12). An older kernel
  // refuses the field (EINVAL), so it is used only where the ring's features name it.
  bool batch_wait = false;
};

// Kernel 6.12, newer than liburing 2.3's headers: the feature bit of the min-wait argument, and
// io_uring_getevents_arg with it (liburing 2.3 names the field `pad`, later ones
// `min_wait_usec`: the kernel's layout is declared here rather than either name used).
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
struct min_wait_arg {
  std::uint64_t sigmask;
  std::uint32_t sigmask_sz;
  std::uint32_t min_wait_usec;
  std::uint64_t ts;  // a __kernel_timespec*, relative
};
static_assert(sizeof(min_wait_arg) == sizeof(io_uring_getevents_arg));

[[noreturn]] inline void throw_system_error(int e, const char* what) {
  RINGNET_THROW(std::system_error(std::error_code(e, std::system_category()), what));
}

// Intrusive membership of a detached (spawned) coroutine in its ring.
struct detached_link {
  detached_link* prev = nullptr;
  detached_link* next = nullptr;
  std::coroutine_handle<> frame;
};

// Something alive beyond single requests that holds state on the ring (see the header comment).
// `draining`: the ring is about to cancel everything and wait for it, and a resource may end what
// a cancel cannot reach; `gone`: the ring is going away, nothing may keep a pointer to it.
enum class ring_event { draining, gone };
struct ring_resource {
  using event_fn = void (*)(ring_resource*, ring_event) noexcept;
  explicit ring_resource(event_fn fn) noexcept : on_event(fn) {}
  event_fn on_event;
  ring_resource* prev = nullptr;
  ring_resource* next = nullptr;
};

// A number for the calling thread that no other thread ever gets, unlike std::thread::id, which
// is reused once a thread was joined: a ring's owner (whose thread holds its registered
// descriptor) must never be mistaken for a later thread.
RINGNET_TLS_ACCESSOR inline std::uint64_t this_thread_token() noexcept {
  static std::atomic<std::uint64_t> next{1};
  static thread_local const std::uint64_t token = next.fetch_add(1, std::memory_order_relaxed);
  return token;
}

class ring;
RINGNET_TLS_ACCESSOR inline ring*& current_ring() noexcept {
  static thread_local ring* current = nullptr;
  return current;
}

class ring {
 public:
  explicit ring(const ring_setup& s)
      : register_ring_fd_(s.register_ring_fd), send_inline_(s.send_inline), batch_wait_us_(s.batch_wait_us) {
    setup(s);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
      const int e = errno;
      io_uring_queue_exit(&ring_);
      throw_system_error(e, "eventfd");
    }
    probe(s.disabled_ops);
    ready_.reserve(64);
    running_.reserve(64);
  }

  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;

  ~ring() {
    shutdown();
    unregister_ring_fd();
    io_uring_queue_exit(&ring_);
    ::close(wake_fd_);
  }

  // ---- queries -------------------------------------------------------------------------
  [[nodiscard]] bool supports(unsigned opcode) const noexcept {
    return opcode < ops_.size() && ops_.test(opcode);
  }
  [[nodiscard]] const ring_caps& caps() const noexcept { return caps_; }
  void lacks_multishot_recv_limit() noexcept { caps_.multishot_recv_limit = false; }
  [[nodiscard]] int mode_index() const noexcept { return mode_; }
  [[nodiscard]] unsigned setup_flags() const noexcept { return ring_.flags; }
  [[nodiscard]] bool on_this_thread() const noexcept { return current_ring() == this; }
  // Whether this thread may touch the ring's queues: it runs a turn of it right now, or it is the
  // thread the ring belongs to (or none yet) and no turn runs. The check behind RINGNET_ASSERT.
  [[nodiscard]] bool owned_here() const noexcept {
    if (on_this_thread()) return true;
    const std::uint64_t owner = owner_.load(std::memory_order_relaxed);
    return owner == 0 || owner == this_thread_token();
  }
  [[nodiscard]] io_uring& native() noexcept { return ring_; }
  // True while the ring is being destroyed: completions settle but resume nobody.
  [[nodiscard]] bool draining() const noexcept { return draining_; }
  // Whether a send may be made at once with send(2) rather than submitted: only when it would be
  // the only request the next io_uring_enter submits (no SQE queued, no completion of this turn
  // left to dispatch, no coroutine left to run). That enter would return at once with the send's
  // completion and the turn after it would wait: the send(2) takes the place of one enter and one
  // completion. Where other requests are queued, the send shares their enter instead. Once per
  // turn: a send made at once does not suspend its coroutine, so a loop of sends that the socket
  // buffer keeps taking would otherwise never end the turn (timers, other connections and stop()
  // starve) and, through send_all's task, nest one resumption per send on the stack.
  [[nodiscard]] bool may_send_inline() noexcept {
    if (!send_inline_ || sent_inline_ || draining_ || io_uring_sq_ready(&ring_) != 0 ||
        turn_left_ != 0 || !ready_.empty())
      return false;
#ifdef RINGNET_DETAIL_FAULTS
    if (faults_.keep_off_inline()) return false;
#endif
    sent_inline_ = true;
    return true;
  }
  // Provided-buffer group ids are per ring.
  [[nodiscard]] std::uint16_t next_buffer_group() noexcept { return next_buffer_group_++; }

  // ---- submission (ring thread only) ---------------------------------------------------
  // `n` consecutive SQEs (for links). A full SQ is submitted first: nothing is ever dropped.
  io_uring_sqe* get_sqes(unsigned n) noexcept {
    RINGNET_ASSERT(owned_here(), "io_uring submission from a thread that does not own the ring");
#ifdef RINGNET_DETAIL_FAULTS
    if (faults_.sq_full()) submit_now();
#endif
    while (io_uring_sq_space_left(&ring_) < n) submit_now();
    return next_sqe();
  }
  // The next SQE after get_sqes(n > 1) reserved room for it.
  io_uring_sqe* next_sqe() noexcept {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) __builtin_unreachable();  // room was made above
    return sqe;
  }
  void request_started() noexcept { ++in_flight_; }
  void request_finished() noexcept { --in_flight_; }

  // Cancels the request whose user_data is `target`; its own CQE reports the outcome.
  // `report`: where the cancel's own CQE goes (ignore_cqe: nowhere).
  void cancel(std::uint64_t target, std::uint64_t report = ignore_cqe) noexcept {
    io_uring_sqe* sqe = get_sqes(1);
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, report);
  }

  // ---- scheduling ---------------------------------------------------------------------
  void post(std::coroutine_handle<> h) {  // ring thread only
    RINGNET_ASSERT(owned_here(), "a coroutine posted to a ring from a thread that does not own it");
    ready_.push_back(h);
  }
  void post_remote(remote_node* n) noexcept {  // any thread
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
    detached_.push_front(*l);
    ++detached_count_;
  }
  void detach(detached_link* l) noexcept {
    detached_.remove(*l);
    --detached_count_;
  }
  void add_resource(ring_resource* r) noexcept { resources_.push_front(*r); }
  void remove_resource(ring_resource* r) noexcept { resources_.remove(*r); }
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
  // turns, so a turn never blocks when a coroutine is waiting to run. `honour_stop`: a pending
  // stop() keeps the turn from blocking (run() returns after it); sync_wait ignores stop().
  void run_turn(bool may_block, bool honour_stop = true) {
    enter_turn();
    sent_inline_ = false;
    current_guard guard(this);
    if (!wake_armed_) arm_wake();
    const bool block = may_block && ready_.empty() && remote_.empty() &&
                       !(honour_stop && stop_requested());
#ifdef RINGNET_DETAIL_FAULTS
    faults_.rewrite(ring_);
#endif
    const unsigned batch = std::min(last_reaped_, max_batch_wait);
    const int r = !block                   ? io_uring_submit_and_get_events(&ring_)
                  : batch > 1 && batch_wait_us_ && caps_.batch_wait ? submit_and_wait_batch(batch)
                                                                  : io_uring_submit_and_wait(&ring_, 1);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN && r != -ETIME)
      throw_system_error(-r, "io_uring_enter");
    last_reaped_ = reap();
    drain_remote();
    run_ready();
  }

  // Makes this thread the ring's, to run turns on it. A turn inside a turn (sync_wait from a
  // coroutine the ring runs) would run the ready queue while it is being run, and block the
  // thread that has to make progress: refused. A SINGLE_ISSUER ring stays with the thread that
  // first ran it (the kernel refuses any other submitter); the others may move between threads
  // from one run to the next.
  void claim_for_this_thread() {
    if (on_this_thread())
      RINGNET_THROW(std::system_error(std::make_error_code(std::errc::resource_deadlock_would_occur),
                                      "ringnet: sync_wait or run() inside the context's own loop"));
    const std::uint64_t owner = owner_.load();
    if (mode_ == 0 && owner != 0 && owner != this_thread_token())
      RINGNET_THROW(std::system_error(std::make_error_code(std::errc::operation_not_permitted),
                                      "ringnet: io_context run on another thread than its first run"));
    owner_.store(this_thread_token());
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
    explicit current_guard(ring* r) noexcept : saved(std::exchange(current_ring(), r)) {}
    ~current_guard() { current_ring() = saved; }
    current_guard(const current_guard&) = delete;
    current_guard& operator=(const current_guard&) = delete;
    ring* saved;
  };

  void setup(const ring_setup& s) {
    struct attempt {
      int mode;
      unsigned flags;
    };
    // R_DISABLED: a SINGLE_ISSUER ring belongs to the thread that enables it, so an io_context
    // may be created on one thread and run on another.
    static constexpr attempt attempts[] = {
        {0, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN |
                IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED},
        {0, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED},
        {1, IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL},
        {1, IORING_SETUP_COOP_TASKRUN},
        {2, 0},
    };
    const unsigned cq = s.cq_entries ? s.cq_entries : s.entries * 16;
    int err = -EINVAL;
    for (const attempt& a : attempts) {
      if (a.mode < s.weakest_first) continue;
      io_uring_params p{};
      p.flags = a.flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
      p.cq_entries = cq;
      err = io_uring_queue_init_params(s.entries, &ring_, &p);
      if (err == 0) {
        mode_ = a.mode;
        enabled_ = !(a.flags & IORING_SETUP_R_DISABLED);
        return;
      }
      if (err != -EINVAL) break;  // ENOSYS/EPERM/ENOMEM: no point trying weaker flags
    }
    throw_system_error(-err, "io_uring_setup");
  }

  void probe(const std::bitset<256>& disabled) {
    io_uring_probe* p = io_uring_get_probe_ring(&ring_);
    if (!p) p = io_uring_get_probe();
    if (p) {  // without a probe only the 5.5 baseline is assumed
      for (unsigned op = 0; op < IORING_OP_LAST && op < ops_.size(); ++op)
        ops_.set(op, io_uring_opcode_supported(p, static_cast<int>(op)) && !disabled.test(op));
      io_uring_free_probe(p);
    }
    caps_.socket_op = supports(IORING_OP_SOCKET);
    caps_.shutdown_op = supports(IORING_OP_SHUTDOWN);
    caps_.close_op = supports(IORING_OP_CLOSE);
    caps_.splice_op = supports(IORING_OP_SPLICE);
    caps_.multishot_accept = supports(IORING_OP_SOCKET);
    caps_.multishot_recv = supports(IORING_OP_SEND_ZC);
    caps_.batch_wait = (ring_.features & IORING_FEAT_MIN_TIMEOUT) != 0;
  }

  // The first turn binds the ring to its thread (and enables a SINGLE_ISSUER ring there).
  void enter_turn() {
    claim_for_this_thread();
    if (enabled_) return;
    // liburing 2.3 declares io_uring_enable_rings but does not export it: call the kernel.
    if (::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
      throw_system_error(errno, "io_uring_register(ENABLE_RINGS)");
    enabled_ = true;
    // A registered ring fd belongs to the registering thread: only a SINGLE_ISSUER ring, which
    // never changes threads, registers it (liburing then enters through it). Refused by a kernel
    // before 5.18: the plain descriptor serves.
    if (register_ring_fd_ && io_uring_register_ring_fd(&ring_) == 1) caps_.registered_ring_fd = true;
  }

  // The registration lives in the registering thread's io_uring state and holds a reference to
  // the ring until it is undone or that thread exits. Undone on that thread (~io_context runs
  // there by contract). On another thread the same index may name that thread's registration of
  // another ring: neither this nor liburing's io_uring_queue_exit may unregister it there (kernel
  // 6.18 refuses it with EEXIST; older ones may not check), so the index liburing would pass is
  // made one every kernel refuses (EINVAL, it allows 16), and the owner thread's exit releases
  // the ring.
  void unregister_ring_fd() noexcept {
    if (!caps_.registered_ring_fd) return;
    caps_.registered_ring_fd = false;
    if (owner_.load() == this_thread_token())
      io_uring_unregister_ring_fd(&ring_);
    else
      ring_.enter_ring_fd = std::numeric_limits<int>::max();
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
#ifdef RINGNET_DETAIL_FAULTS
    faults_.rewrite(ring_);
#endif
    int r;
    do {
      r = io_uring_submit(&ring_);
    } while (r == -EINTR || r == -EAGAIN || r == -EBUSY);
  }

  void run_ready() {
    running_.swap(ready_);
    for (std::size_t i = 0, n = running_.size(); i < n; ++i) {
      turn_left_ = static_cast<unsigned>(n - i - 1);
      running_[i].resume();
    }
    turn_left_ = 0;
    running_.clear();
  }

  // Dispatches every completion in the CQ; returns how many.
  unsigned reap() {
    unsigned reaped = 0;
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
      reaped += n;
      for (unsigned i = 0; i < n; ++i) {
        // A full batch may have more behind it.
        turn_left_ = n == batch ? batch : n - i - 1;
        dispatch(copy[i].user_data, copy[i].res, copy[i].flags);
      }
      turn_left_ = 0;
      if (n < batch) break;
    }
    return reaped;
  }

  // io_uring_submit_and_wait() with the min-wait argument, which liburing 2.3 cannot pass: the
  // kernel waits up to batch_wait_us_ for `batch` completions, and after that for the first.
  // Without a timeout the kernel would end the wait at the min-wait, empty-handed (-ETIME), so
  // one is given, an hour: the loop then enters again. The SQ flush is liburing's own for a
  // ring without SQPOLL (this one never polls).
  int submit_and_wait_batch(unsigned batch) noexcept {
    io_uring_sq& sq = ring_.sq;
    const unsigned tail = sq.sqe_tail;
    if (sq.sqe_head != tail) {
      sq.sqe_head = tail;
      io_uring_smp_store_release(sq.ktail, tail);
    }
    const unsigned submit = tail - *sq.khead;
    static constexpr __kernel_timespec hour{3600, 0};
    min_wait_arg arg{};
    arg.min_wait_usec = batch_wait_us_;
    arg.ts = reinterpret_cast<std::uint64_t>(&hour);
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    int fd = ring_.ring_fd;
    if (caps_.registered_ring_fd) {
      flags |= IORING_ENTER_REGISTERED_RING;
      fd = ring_.enter_ring_fd;
    }
    const long r = ::syscall(__NR_io_uring_enter, fd, submit, batch, flags, &arg, sizeof arg);
    return r < 0 ? -errno : static_cast<int>(r);
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
  // coroutine frames until then), takes what other threads handed over (a spawn still on its
  // way is started, to be destroyed with the rest), destroys the frames of unfinished detached
  // tasks, and tells every resource still alive that the ring is gone.
  void shutdown() noexcept {
    // SINGLE_ISSUER: only the thread that ran the ring may submit and wait. Elsewhere nothing
    // may be in flight but the wake-up read (the kernel cancels it with the ring).
    const std::uint64_t owner = owner_.load();
    const bool can_wait = enabled_ && (mode_ != 0 || owner == 0 || owner == this_thread_token());
    RINGNET_ASSERT(can_wait || in_flight_ == 0,
                   "io_context destroyed with requests in flight on another thread than its own");
    current_guard guard(this);
    draining_ = true;
    if (can_wait) {
      for (ring_resource* r = resources_.front(); r; r = r->next) r->on_event(r, ring_event::draining);
      if (in_flight_ > 0 || wake_armed_) {
        io_uring_sqe* sqe = get_sqes(1);
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(sqe, ignore_cqe);
      }
      for (int spins = 0; (in_flight_ > 0 || wake_armed_) && spins < 100; ++spins) {
        __kernel_timespec ts{0, 50'000'000};
        io_uring_cqe* cqe = nullptr;
#ifdef RINGNET_DETAIL_FAULTS
        faults_.rewrite(ring_);
#endif
        io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
        reap();
      }
    }
    // With requests still in the kernel (one ignored its cancel for 5 s, or no waiting was
    // possible here) frames are left alone, leaked rather than freed under the kernel.
    if (in_flight_ == 0) {
      do {
        drain_remote();
        while (detached_link* l = detached_.front()) {
          detach(l);
          l->frame.destroy();
        }
      } while (!remote_.empty());
    }
    // Either way nothing may keep a pointer to this ring.
    while (ring_resource* r = resources_.front()) {
      remove_resource(r);
      r->on_event(r, ring_event::gone);
    }
  }

  io_uring ring_{};
  int mode_ = 2;
  bool enabled_ = true;
  bool draining_ = false;
  unsigned turn_left_ = 0;  // completions or coroutines of this turn not yet dispatched or run
  bool sent_inline_ = false;  // a send was made at once in this turn (see may_send_inline())
  bool wake_armed_ = false;
  bool register_ring_fd_ = true;
  bool send_inline_ = true;
  // Waits after a turn of more than one completion ask the kernel for as many (at most
  // max_batch_wait) within batch_wait_us_: one wake-up then serves several connections where
  // each would have cost its own. After a turn of one, a wait returns at the first completion
  // (a min-wait arms a kernel timer per wait, which costs a lone connection more than it saves).
  static constexpr unsigned max_batch_wait = 64;
  unsigned batch_wait_us_ = 20;
  unsigned last_reaped_ = 0;  // completions the previous turn dispatched
  std::atomic<std::uint64_t> owner_{0};  // this_thread_token() of the thread that runs it
  std::bitset<256> ops_;
  ring_caps caps_;

  std::size_t in_flight_ = 0;
  std::uint16_t next_buffer_group_ = 0;
  std::vector<std::coroutine_handle<>> ready_;
  std::vector<std::coroutine_handle<>> running_;
  intrusive_list<detached_link> detached_;
  std::size_t detached_count_ = 0;
  intrusive_list<ring_resource> resources_;

  int wake_fd_ = -1;
  std::uint64_t wake_value_ = 0;
  remote_stack remote_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> external_work_{0};

  std::function<void(std::exception_ptr)> exception_handler_;
  std::exception_ptr unhandled_;
#ifdef RINGNET_DETAIL_FAULTS
  fault_injector faults_;  // rewrites what is about to be submitted (see fault_injection.hpp)
#endif
};

}  // namespace detail
RINGNET_END_NAMESPACE
