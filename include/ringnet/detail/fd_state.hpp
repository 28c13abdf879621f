// One descriptor and every request in flight on it: the state a stream or a listener handle
// points to. It lives in pooled memory of its own, not in the handle, so that a handle can be
// moved or destroyed with requests in flight: the kernel's CQEs land here, and the descriptor is
// closed only once the last of them arrived, so its number is never reused while a request on
// it could still be submitted.
#pragma once

#include <ringnet/detail/config.hpp>
#include <ringnet/detail/frame_pool.hpp>
#include <ringnet/detail/request.hpp>
#include <ringnet/detail/ring.hpp>

#include <unistd.h>

#include <cstdint>
#include <utility>

RINGNET_BEGIN_NAMESPACE
class io_context;
namespace detail {

class fd_state : public ring_resource, public pooled {
 public:
  using destroy_fn = void (*)(fd_state*) noexcept;

  fd_state(ring& r, io_context& ctx, int fd, event_fn on_ring_event, destroy_fn destroy) noexcept
      : ring_resource(on_ring_event), fd_(fd), ring_(&r), ctx_(&ctx), destroy_(destroy) {
    r.add_resource(this);
  }
  fd_state(const fd_state&) = delete;
  fd_state& operator=(const fd_state&) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_; }
  [[nodiscard]] bool is_open() const noexcept { return fd_ >= 0; }
  // Null once the ring is gone: every operation then fails with bad_file_descriptor.
  [[nodiscard]] ring* owner() const noexcept { return ring_; }
  [[nodiscard]] io_context& context() const noexcept { return *ctx_; }
  [[nodiscard]] std::uint32_t in_flight() const noexcept { return ops_; }
  [[nodiscard]] bool closing() const noexcept { return closing_; }

  // ---- requests in flight ------------------------------------------------------------------
  void track(request& r) noexcept {
    RINGNET_ASSERT(ring_ && ring_->owned_here(), "a socket used from a thread that does not own its ring");
    requests_.push_front(r);
    ++ops_;
  }
  // The request's final CQE arrived. May destroy this state (the handle is gone and this was
  // the last request): touch nothing of it afterwards.
  void untrack(request& r) noexcept {
    requests_.remove(r);
    if (--ops_ > 0) return;
    if (close_when_idle_) ::close(take_fd());
    if (!idle_waiters_.empty() && !ring_->draining()) idle_waiters_.wake_all(*ring_, 0);
    if (!handle_ && pins_ == 0) destroy_(this);
  }
  // Cancels every request in flight; each completes (operation_canceled unless it won the race).
  void cancel_all() noexcept {
    requests_.for_each([](request& r) { r.cancel(); });
  }
  template <class F>
  void for_each_request(F f) {
    requests_.for_each(f);
  }

  // co_await idle(): until nothing is in flight (a source for waiting<>).
  struct idle_source {
    fd_state* st;
    ring* owner() const noexcept { return st->ring_; }
    int poll() const noexcept { return st->ops_ == 0 ? 0 : waiter::pending; }
    void enqueue(waiter& w) const noexcept { st->idle_waiters_.push(w); }
    void dequeue(waiter& w) const noexcept { st->idle_waiters_.remove(w); }
    static int complete(int res) noexcept { return res; }
  };

  // The handle (stream, listener) let go, after its own begin_close(): the state is freed once
  // nothing is in flight, and the descriptor, if still open, closed with close(2) then.
  void release_handle() noexcept {
    handle_ = false;
    if (ops_ == 0 && pins_ == 0) destroy_(this);
  }
  // A composed operation (send_all, close, graceful_close, relay, ...) keeps the state alive
  // while it runs, so the handle may be moved or destroyed meanwhile.
  void pin() noexcept { ++pins_; }
  void unpin() noexcept {
    if (--pins_ == 0 && !handle_ && ops_ == 0) destroy_(this);
  }

 protected:
  // ---- closing (what a derived state builds its own close on) ---------------------------
  // close() begins: new requests are refused, those in flight cancelled.
  void begin_close() noexcept {
    if (fd_ < 0) return;
    closing_ = true;
    cancel_all();
  }
  // Nothing in flight any more: hands the descriptor over for closing (-1 if another close
  // took it first).
  int take_fd() noexcept {
    RINGNET_ASSERT(ops_ == 0, "descriptor taken with requests in flight");
    closing_ = false;
    close_when_idle_ = false;
    return std::exchange(fd_, -1);
  }
  // close() that does not wait: the descriptor is closed with close(2) once nothing is in flight.
  void close_when_idle() noexcept {
    if (fd_ < 0) return;
    begin_close();
    if (ops_ == 0)
      ::close(take_fd());
    else
      close_when_idle_ = true;
  }
  ~fd_state() {
    idle_waiters_.clear();  // nobody will resume them: the ring is being destroyed
    if (fd_ >= 0) ::close(fd_);
    if (ring_) ring_->remove_resource(this);
  }
  // The ring is being destroyed and everything on it has completed: close the descriptor now
  // and never touch the ring again.
  void ring_gone() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    idle_waiters_.clear();
    closing_ = false;
    ring_ = nullptr;
  }
  [[nodiscard]] bool handle_alive() const noexcept { return handle_; }

 private:
  int fd_;
  ring* ring_;
  io_context* ctx_;
  destroy_fn destroy_;
  std::uint32_t ops_ = 0;
  std::uint32_t pins_ = 0;
  bool handle_ = true;
  bool closing_ = false;
  bool close_when_idle_ = false;
  intrusive_list<request> requests_;
  wait_list idle_waiters_;
};

// A descriptor with nothing more to it than its requests in flight (a signalfd).
class descriptor_state final : public fd_state {
 public:
  static descriptor_state* open(ring& r, io_context& ctx, int fd) { return new descriptor_state(r, ctx, fd); }
  // The handle let go: what is in flight is cancelled, the descriptor closed after it.
  static void release(descriptor_state* s) noexcept {
    s->begin_close();
    s->release_handle();
  }

 private:
  descriptor_state(ring& r, io_context& ctx, int fd) noexcept
      : fd_state(r, ctx, fd, &descriptor_state::on_ring_event, &descriptor_state::destroy) {}
  ~descriptor_state() = default;
  static void destroy(fd_state* s) noexcept { delete static_cast<descriptor_state*>(s); }
  static void on_ring_event(ring_resource* r, ring_event e) noexcept {
    if (e == ring_event::gone) static_cast<descriptor_state&>(static_cast<fd_state&>(*r)).ring_gone();
  }
};

}  // namespace detail
RINGNET_END_NAMESPACE
