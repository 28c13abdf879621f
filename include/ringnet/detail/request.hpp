// The completion machinery every operation is built on, once:
//
// - request: the life of one kernel request (its user_data, the ring's count of requests in
//   flight, single- or multishot completion, one cancel per submission). Its owner (an operation
//   awaiter, a socket's multishot receive, a listener's multishot accept, the relay's watchdog
//   timer) is told of every CQE; the last one (no IORING_CQE_F_MORE) ends it.
// - canceller: turns a stop request from any thread into a cancel run on the ring's thread.
// - waiter / wait_list: a coroutine suspended until a shared source has something for it, any
//   number of them per source, each removable on its own when its stop arrives.
#pragma once

#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/config.hpp>
#include <ringnet/detail/intrusive_list.hpp>
#include <ringnet/detail/ring.hpp>

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

inline constexpr int erestartsys = 512;  // what a cancelled SPLICE was seen returning

// -ECANCELED, -EINTR (a request cancelled in an io-wq worker) and -ERESTARTSYS (a cancelled
// SPLICE) all mean the request was cancelled.
[[nodiscard]] constexpr bool cancelled_result(int res) noexcept {
  return res == -ECANCELED || res == -EINTR || res == -erestartsys;
}

class request : public completion {
 public:
  // Called for every CQE, after the request's own bookkeeping; `in_flight()` is false on the last.
  using handler = void (*)(request&, int res, std::uint32_t flags) noexcept;

  explicit request(handler h) noexcept : completion{&request::on_completion}, handler_(h) {}
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request() { RINGNET_ASSERT(!in_flight_, "a request destroyed while the kernel still holds it"); }

  // Reserves `sqes` consecutive SQEs and returns the first, already carrying this request's
  // user_data; the caller fills it (liburing's io_uring_prep_* leave user_data alone), and any
  // further ones (a linked timeout) with next_sqe().
  io_uring_sqe* start(ring& r, unsigned sqes = 1) noexcept {
    RINGNET_ASSERT(!in_flight_, "a request started while already in flight");
    ring_ = &r;
    io_uring_sqe* sqe = r.get_sqes(sqes);
    io_uring_sqe_set_data64(sqe, user_data());
    in_flight_ = true;
    cancel_sent_ = false;
    deadline = std::chrono::steady_clock::time_point::max();
    is_send = false;
    cut_off = false;
    r.request_started();
    return sqe;
  }

  // Asks the kernel to end the request (ring thread). Once per submission; the request's own
  // final CQE says how it ended, the cancel's own CQE goes to `report`.
  void cancel(std::uint64_t report = ignore_cqe) noexcept {
    if (!in_flight_ || cancel_sent_) return;
    cancel_sent_ = true;
    ring_->cancel(user_data(), report);
  }

  [[nodiscard]] bool in_flight() const noexcept { return in_flight_; }
  [[nodiscard]] bool cancel_sent() const noexcept { return cancel_sent_; }
  [[nodiscard]] ring* owner() const noexcept { return ring_; }
  [[nodiscard]] std::uint64_t user_data() noexcept {
    return reinterpret_cast<std::uint64_t>(static_cast<completion*>(this));
  }

  // Membership in one list of its owner's choosing (a socket's requests in flight).
  request* prev = nullptr;
  request* next = nullptr;
  // When its linked timeout ends it (max: none), whether it sends on a socket, and whether the
  // socket ended it another way (socket_state::cut_sends()): set after start(), for a socket to
  // tell which of its requests a failed cancel was aimed at, and which it cut.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  bool is_send = false;
  bool cut_off = false;

 private:
  static void on_completion(completion* c, int res, std::uint32_t flags) noexcept {
    auto& self = static_cast<request&>(*c);
    if (!(flags & IORING_CQE_F_MORE)) {
      self.in_flight_ = false;
      self.ring_->request_finished();
    }
    self.handler_(self, res, flags);
  }

  handler handler_;
  ring* ring_ = nullptr;
  bool in_flight_ = false;
  bool cancel_sent_ = false;
};

// A request embedded in the object that handles its CQEs: (owner.*Fn)(res, flags).
template <class Owner, void (Owner::*Fn)(int res, std::uint32_t flags) noexcept>
class member_request : public request {
 public:
  explicit member_request(Owner& o) noexcept : request(&member_request::forward), owner_(&o) {}

 private:
  static void forward(request& r, int res, std::uint32_t flags) noexcept {
    auto& self = static_cast<member_request&>(r);
    (self.owner_->*Fn)(res, flags);
  }
  Owner* owner_;
};

// Turns a stop request (from any thread) into `fn(target)` on the ring's thread: a request's
// cancel, or the end of a wait. Lives next to the awaiting coroutine; settle() before that
// coroutine resumes.
class canceller : public remote_node {
 public:
  using cancel_fn = void (*)(void* target) noexcept;
  canceller(ring* r, cancel_fn fn, void* target) noexcept
      : remote_node{&canceller::cancel_from_remote}, ring_(r), fn_(fn), target_(target) {}
  canceller(const canceller&) = delete;
  canceller& operator=(const canceller&) = delete;

  // The stop callback itself: never touches the ring's queues off the ring's thread.
  void request() noexcept {
    if (ring_->on_this_thread()) {
      cancel_here();
    } else {
      remote_queued_.store(true, std::memory_order_release);
      ring_->post_remote(this);
    }
  }
  // The target is done. Call after deregistering the stop callback (which waits for a callback
  // running on another thread): a node it queued for the ring is run now, before it can go away.
  void settle() noexcept {
    finished_ = true;
    if (remote_queued_.load(std::memory_order_acquire)) ring_->drain_remote();
  }
  [[nodiscard]] ring* owner() const noexcept { return ring_; }

  struct callback_fn {
    canceller* self;
    void operator()() const noexcept { self->request(); }
  };

 private:
  void cancel_here() noexcept {
    if (finished_ || sent_) return;
    sent_ = true;
    fn_(target_);
  }
  static void cancel_from_remote(remote_node* n) noexcept {
    auto& self = static_cast<canceller&>(*n);
    self.cancel_here();
    self.remote_queued_.store(false, std::memory_order_release);
  }

  ring* ring_;
  cancel_fn fn_;
  void* target_;
  bool finished_ = false;
  bool sent_ = false;
  std::atomic<bool> remote_queued_{false};
};

// A coroutine waiting on a shared source. The source wakes it with `res`: `ready` means "take
// what you waited for now" and is only ever given while resuming it inline, so the source is
// alive when it takes; any other value (0, -errno) is final and may be posted.
struct waiter {
  static constexpr int ready = 1;
  static constexpr int pending = 2;  // what a source's poll() says when there is nothing yet
  waiter* prev = nullptr;
  waiter* next = nullptr;
  bool queued = false;
  int res = 0;
  std::coroutine_handle<> coro;
};

// Waiters in the order they came (FIFO).
class wait_list {
 public:
  void push(waiter& w) noexcept {
    RINGNET_ASSERT(!w.queued, "a waiter queued twice");
    w.queued = true;
    list_.push_back(w);
  }
  void remove(waiter& w) noexcept {
    if (!w.queued) return;
    list_.remove(w);
    w.queued = false;
  }
  [[nodiscard]] bool empty() const noexcept { return list_.empty(); }
  [[nodiscard]] waiter* front() const noexcept { return list_.front(); }

  // Wakes the first waiter with `ready`: the caller resumes the returned handle last, after its
  // own bookkeeping (the resumed coroutine may destroy the source).
  [[nodiscard]] std::coroutine_handle<> take_front() noexcept {
    waiter* w = list_.front();
    remove(*w);
    w->res = waiter::ready;
    return w->coro;
  }
  // Wakes every waiter with a final result, through the ring's ready queue.
  void wake_all(ring& r, int res) {
    while (waiter* w = list_.front()) {
      remove(*w);
      w->res = res;
      r.post(w->coro);
    }
  }
  // Forgets every waiter without waking it (the ring is gone; nobody will run them).
  void clear() noexcept {
    while (waiter* w = list_.front()) remove(*w);
  }

 private:
  intrusive_list<waiter> list_;
};

}  // namespace detail
RINGNET_END_NAMESPACE
