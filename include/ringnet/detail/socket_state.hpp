// The one owner of a connected socket's state: what the wire said (the peer's FIN, a reset), what
// we did (our FIN), what is in flight (every request, the sends among them), who waits (any
// number of coroutines), and the multishot recv of receive() with the buffers it filled. Every
// result of every path (recv, receive, send, splice, shutdown) is interpreted here, so the same
// wire events give the same outcome whichever path saw them.
#pragma once

#include <ringnet/detail/config.hpp>
#include <ringnet/detail/errno_kind.hpp>
#include <ringnet/detail/fd_state.hpp>
#include <ringnet/detail/provided_buffers.hpp>
#include <ringnet/detail/request.hpp>
#include <ringnet/detail/ring.hpp>

#include <liburing.h>
#include <sys/socket.h>

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// The largest count one recv or send asks for: the kernel's own cap on one read or write
// (MAX_RW_COUNT), which also fits the SQE's 32-bit length and the CQE's int result.
inline constexpr std::size_t max_io_size = 0x7ffff000;

// Resets the connection now (RST, sent by connect(AF_UNSPEC)), whoever still holds the socket:
// the RST of SO_LINGER {1, 0} would wait for the last reference to go, and a request that ran in
// an io-wq worker may hold one past its CQE.
inline void reset_connection(int fd) noexcept {
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  (void)::connect(fd, &unspec, sizeof unspec);
}

class socket_state final : public fd_state, private buffer_user {
 public:
  static socket_state* open(ring& r, io_context& ctx, int fd) { return new socket_state(r, ctx, fd); }

  // ---- what the wire said --------------------------------------------------------------
  [[nodiscard]] bool read_eof() const noexcept { return read_eof_; }
  [[nodiscard]] bool write_shut() const noexcept { return write_shut_; }
  // -errno: the connection error seen on any path first (0: none). The kernel reports it once;
  // after that a recv on the dead socket returns 0 (once it has handed out what was still
  // queued), which settle_read() turns back into this error, and sends are refused with it.
  [[nodiscard]] int connection_error() const noexcept { return error_; }

  // Why a new request on the socket must not start: closed, or being closed. Reads still start
  // after a connection error: the kernel may hold bytes that arrived before the reset.
  [[nodiscard]] std::optional<int> refuse() const noexcept {
    if (!is_open()) return -EBADF;
    if (closing()) return -ECANCELED;
    return std::nullopt;
  }
  // Why a send (or shutdown) must not start: as refuse(), or the connection is over.
  [[nodiscard]] std::optional<int> refuse_write() const noexcept {
    if (auto r = refuse()) return r;
    if (error_ != 0) return error_;
    return std::nullopt;
  }
  // A read's result: bytes, the peer's FIN (0 for a read of `len` > 0), a cancellation, or the
  // end of the connection.
  int settle_read(int res, std::size_t len) noexcept {
    if (res > 0) received_ += static_cast<std::uint64_t>(res);
    if (res == 0 && len > 0) {
      if (error_ != 0) return error_;
      read_eof_ = true;
      return 0;
    }
    if (res < 0) note(res);
    return res;
  }
  // `cut_off`: cut_sends() ended it, which is a cancellation, not the connection's end.
  int settle_write(int res, bool cut_off = false) noexcept {
    if (res > 0) sent_ += static_cast<std::uint64_t>(res);
    if (res < 0 && cut_off) return -ECANCELED;
    if (res < 0) note(res);
    return res;
  }
  // A send made at once with send(2) (see ring::may_send_inline()), where it cannot overtake or
  // be overtaken: no other send in flight. Only for a send that nothing refuses (the caller asked
  // refuse_write() and write_shut() first). The settled result (bytes, or the connection's end),
  // or nullopt when it was not tried or the socket had no room: then submit.
  std::optional<int> send_inline(const void* data, std::size_t len) noexcept {
    RINGNET_ASSERT(!refuse_write() && !write_shut_, "send_inline() on a socket that refuses sends");
    if (sends_ != 0 || !owner()->may_send_inline()) return std::nullopt;
    const ssize_t n = ::send(fd(), data, std::min(len, max_io_size), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return std::nullopt;
    return settle_write(n < 0 ? -errno : static_cast<int>(n));
  }
  // Bytes that arrived (handed to a read, or queued by the multishot receive) and bytes sent.
  [[nodiscard]] std::uint64_t bytes_received() const noexcept { return received_; }
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return sent_; }
  void wrote_fin() noexcept { write_shut_ = true; }

  // ---- sends in flight (shutdown_write waits for them: a SHUT_WR under a send fails it) ----
  void send_started() noexcept { ++sends_; }
  using fd_state::handle_alive;  // whether a stream still holds this state
  [[nodiscard]] bool sending() const noexcept { return sends_ != 0; }
  void send_finished() noexcept {
    if (--sends_ == 0 && !send_waiters_.empty() && !owner()->draining())
      send_waiters_.wake_all(*owner(), 0);
  }
  struct sends_source {
    socket_state* st;
    ring* owner() const noexcept { return st ? st->owner() : nullptr; }
    int poll() const noexcept {
      if (auto r = st->refuse()) return *r;
      return st->sends_ == 0 ? 0 : waiter::pending;
    }
    void enqueue(waiter& w) const noexcept { st->send_waiters_.push(w); }
    void dequeue(waiter& w) const noexcept { st->send_waiters_.remove(w); }
    static int complete(int res) noexcept { return res; }
  };

  // ---- sends the kernel cannot cancel (see cut_sends()) ----------------------------------
  // user_data for the CQE of a send's cancel or linked timeout, once per SQE that carries it.
  // ENOENT or EALREADY there, while a send that was asked to stop (cancelled, or past its
  // deadline) is still in flight, means the kernel could not stop it, or that it completed and its
  // CQE is yet to come. A check a moment later tells the two apart: if such a send is still in
  // flight then, cut_sends() ends it, so that the caller's stop or deadline holds, at the price of
  // our FIN: a send stopped half-way cut the byte stream anyway.
  [[nodiscard]] std::uint64_t send_cancel_report() noexcept { return expect_cqe(cancel_report_); }
  static constexpr __kernel_timespec stuck_send_check{0, 2'000'000};

  // ---- stream::cancel() and close() -------------------------------------------------------
  // Every request in flight is cancelled and every waiter woken with operation_canceled.
  void cancel_everything() noexcept {
    cancel_all();
    wake_waiters(-ECANCELED);
  }
  // `reset`: the close is abortive (SO_LINGER {1, 0} is set).
  void begin_close(bool reset = false) noexcept {
    const bool open = is_open() && !closing();
    fd_state::begin_close();
    wake_waiters(-ECANCELED);
    if (open) cut_sends(reset);
  }
  // After close(): queued buffers go back, the buffer ring is let go, the descriptor handed over.
  int take_fd() noexcept {
    rx_unbind();
    return fd_state::take_fd();
  }

  // ---- receive(): a multishot recv into a provided-buffer ring ---------------------------
  // A receive() on `b` now: waiter::ready (take_received()), pending, 0 (the peer's FIN), or
  // -errno. A stream receives into one ring at a time, of its own context: another one while the
  // first is armed or holds data, or one of another context, is invalid_argument.
  int rx_poll(const provided_buffers* b) const noexcept {
    if (auto r = refuse()) return *r;
    if (!b || b->owner() != owner()) return -EINVAL;
    if (rx_bufs_ && rx_bufs_ != b && rx_busy()) return -EINVAL;
    if (rx_bufs_ == b && rx_head_ != provided_buffers::none) return waiter::ready;
    if (read_eof_) return 0;
    return waiter::pending;
  }
  void rx_enqueue(waiter& w, provided_buffers& b) noexcept {
    if (rx_bufs_ != &b) {
      rx_unbind();
      rx_bufs_ = &b;
      b.bind(this);
    }
    rx_waiters_.push(w);
    rx_arm();
  }
  // A waiter's stop: nobody waiting any more, so stop the kernel filling buffers for us (what
  // it filled meanwhile stays queued for the next call).
  void rx_dequeue(waiter& w) noexcept {
    rx_waiters_.remove(w);
    if (rx_waiters_.empty()) rx_stop();
  }
  // The oldest buffer received and not taken yet (provided_buffers::none if none).
  [[nodiscard]] std::uint16_t take_received() noexcept {
    const std::uint16_t bid = rx_head_;
    if (bid == provided_buffers::none) return bid;
    rx_head_ = rx_bufs_->next(bid);
    if (rx_head_ == provided_buffers::none) rx_tail_ = provided_buffers::none;
    --rx_queued_;
    return bid;
  }
  [[nodiscard]] provided_buffers* receiving_into() const noexcept { return rx_bufs_; }
  // Armed, waiting for buffers, or holding received data.
  [[nodiscard]] bool rx_busy() const noexcept {
    return rx_.in_flight() || starved || rx_head_ != provided_buffers::none;
  }
  [[nodiscard]] bool rx_armed() const noexcept { return rx_.in_flight(); }
  // Ends the multishot (drain takes over): cancel it, then wait on rx_disarmed_source.
  void rx_stop() noexcept {
    rx_.cancel();
    if (rx_bufs_) rx_bufs_->unstarve(this);
  }
  struct rx_disarmed_source {
    socket_state* st;
    ring* owner() const noexcept { return st->owner(); }
    int poll() const noexcept { return st->rx_.in_flight() ? waiter::pending : 0; }
    void enqueue(waiter& w) const noexcept { st->rx_disarmed_waiters_.push(w); }
    void dequeue(waiter& w) const noexcept { st->rx_disarmed_waiters_.remove(w); }
    static int complete(int res) noexcept { return res; }
  };

 private:
  socket_state(ring& r, io_context& ctx, int fd) noexcept
      : fd_state(r, ctx, fd, &socket_state::on_ring_event, &socket_state::destroy),
        buffer_user{&socket_state::on_refill, &socket_state::on_retire},
        rx_(*this) {}
  ~socket_state() {
    forget_waiters();
    rx_unbind();
  }

  static socket_state& of(buffer_user* u) noexcept { return static_cast<socket_state&>(*u); }
  static void destroy(fd_state* s) noexcept { delete static_cast<socket_state*>(s); }

  // A send waiting for room that the kernel wakes without room (the peer's FIN wakes it, for one)
  // is retried in an io-wq worker, where it blocks until there is room and a cancel does not reach
  // it (IORING_OP_ASYNC_CANCEL answers ENOENT). It would hold a close, or the ring's teardown,
  // until the peer reads everything, which it may never do. Ending our side ends it, with the
  // bytes it moved: SHUT_WR queues the FIN the close sends anyway, behind the same data; an
  // abortive close resets at once instead. Only while a send is in flight.
  void cut_sends(bool reset = false) noexcept {
    if (sends_ == 0 || !is_open()) return;
    bool uncut = false;
    for_each_request([&](request& r) {
      if (r.is_send && !r.cut_off) uncut = r.cut_off = true;
    });
    if (!uncut) return;
    write_shut_ = true;
    if (reset)
      reset_connection(fd());
    else
      (void)::shutdown(fd(), SHUT_WR);
  }
  // A CQE for one of this state's own completions: keeps the state alive and the ring waiting
  // until it arrives (got_cqe()).
  struct own_completion : completion {
    socket_state* st;
  };
  std::uint64_t expect_cqe(own_completion& c) noexcept {
    pin();  // it may come after the send's own CQE, and after the handle let go
    owner()->request_started();
    return reinterpret_cast<std::uint64_t>(&c);
  }
  static socket_state& got_cqe(completion* c) noexcept {
    socket_state& st = *static_cast<own_completion*>(c)->st;
    st.owner()->request_finished();
    return st;
  }
  static void on_send_cancel_report(completion* c, int res, std::uint32_t) noexcept {
    socket_state& st = got_cqe(c);
    if ((res == -ENOENT || res == -EALREADY) && !st.checking_ && !st.owner()->draining() &&
        st.stopped_send_in_flight()) {
      st.checking_ = true;
      io_uring_sqe* sqe = st.owner()->get_sqes(1);
      io_uring_prep_timeout(sqe, const_cast<__kernel_timespec*>(&stuck_send_check), 0, 0);
      io_uring_sqe_set_data64(sqe, st.expect_cqe(st.stuck_check_));
    }
    st.unpin();  // may destroy the state: last
  }
  static void on_stuck_check(completion* c, int, std::uint32_t) noexcept {
    socket_state& st = got_cqe(c);
    st.checking_ = false;
    if (!st.owner()->draining() && st.stopped_send_in_flight()) st.cut_sends();
    st.unpin();  // may destroy the state: last
  }
  [[nodiscard]] bool stopped_send_in_flight() noexcept {
    if (sends_ == 0 || !is_open()) return false;
    const auto now = std::chrono::steady_clock::now();
    bool found = false;
    for_each_request([&](request& r) { found |= r.is_send && (r.cancel_sent() || r.deadline <= now); });
    return found;
  }
  void note(int res) noexcept {
    if (error_ == 0 && connection_lost_errno(-res, write_shut_)) error_ = res;
  }
  void wake_waiters(int res) noexcept {
    if (!owner() || owner()->draining()) return forget_waiters();
    rx_waiters_.wake_all(*owner(), res);
    send_waiters_.wake_all(*owner(), res);
  }
  // Nobody will resume them (the ring is going away): unlinked, so that their frames, destroyed
  // later, find nothing of this state to touch.
  void forget_waiters() noexcept {
    rx_waiters_.clear();
    send_waiters_.clear();
    rx_disarmed_waiters_.clear();
  }

  void rx_arm() noexcept {
    if (rx_.in_flight() || starved || !is_open() || closing() || read_eof_ || !rx_bufs_ ||
        rx_bufs_->retired() || !owner() || owner()->draining())
      return;
    io_uring_sqe* sqe = rx_.start(*owner());
    io_uring_prep_recv(sqe, fd(), nullptr, 0, 0);
    rx_limited_ = false;
    if (owner()->caps().multishot_recv) {
      sqe->ioprio |= IORING_RECV_MULTISHOT;
      // The kernel ends the multishot once it read what is left of the stream's share of the
      // ring, so even a burst already queued in the socket cannot take more (a cancel sent
      // after the CQEs would land only after the kernel had filled every buffer it could).
      if (owner()->caps().multishot_recv_limit) {
        sqe->file_index = rx_limit_bytes();  // the SQE's optlen
        rx_limited_ = true;
      }
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = rx_bufs_->group();
    track(rx_);
    rx_bufs_->recv_started();
  }
  // Bytes the stream's share of the ring still holds: at least one buffer.
  [[nodiscard]] std::uint32_t rx_limit_bytes() const noexcept {
    const unsigned share = rx_bufs_->stream_share();
    const std::uint64_t buffers = rx_queued_ < share ? share - rx_queued_ : 1;
    return static_cast<std::uint32_t>(
        std::min<std::uint64_t>(buffers * rx_bufs_->buffer_size(), std::numeric_limits<std::uint32_t>::max()));
  }
  void rx_push(std::uint16_t bid, std::uint32_t len) noexcept {
    rx_bufs_->set_length(bid, len);
    rx_bufs_->set_next(bid, provided_buffers::none);
    if (rx_tail_ == provided_buffers::none)
      rx_head_ = bid;
    else
      rx_bufs_->set_next(rx_tail_, bid);
    rx_tail_ = bid;
    // Its share of the ring is full: stop receiving until the caller takes some (the next
    // receive() that finds the queue empty re-arms). With the kernel's byte limit the multishot
    // has ended by itself by then; without it, this cancel bounds a steady flood, though a burst
    // the kernel read before the cancel landed still overshoots.
    if (++rx_queued_ >= rx_bufs_->stream_share() && rx_.in_flight()) rx_.cancel();
  }
  // Gives every queued buffer back and leaves the buffer ring.
  void rx_unbind() noexcept {
    provided_buffers* b = rx_bufs_;
    if (!b) return;
    RINGNET_ASSERT(!rx_.in_flight(), "a receive left its buffer ring while armed");
    for (std::uint16_t bid = take_received(); bid != provided_buffers::none; bid = take_received())
      b->recycle(bid);
    rx_bufs_ = nullptr;
    b->unbind(this);  // may free b
  }

  void on_rx(int res, std::uint32_t flags) noexcept {
    provided_buffers& b = *rx_bufs_;
    const bool final = !rx_.in_flight();
    const bool draining = owner()->draining();
    if (flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      b.taken();
      if (res > 0) received_ += static_cast<std::uint64_t>(res);
      if (res > 0 && !draining)
        rx_push(bid, static_cast<std::uint32_t>(res));
      else
        b.recycle(bid);
    }
    if (res == -ENOBUFS) {
      // The kernel found the ring empty. Buffers may have come back since (their CQEs and our
      // recycling race it): re-armed below if so, else when one comes back, if anyone waits
      // (else the next receive() arms).
      if (b.available() == 0 && !b.retired() && !rx_waiters_.empty()) b.starve(this);
    } else if (res == -EINVAL && rx_limited_ && final) {
      owner()->lacks_multishot_recv_limit();  // an older kernel: re-armed below without it
    } else if (res <= 0) {
      (void)settle_read(res, 1);
    }
    if (final) b.recv_ended();
    std::coroutine_handle<> wake;
    if (!draining) {
      if (final && !rx_disarmed_waiters_.empty()) rx_disarmed_waiters_.wake_all(*owner(), 0);
      if (!rx_waiters_.empty()) {
        if (rx_head_ != provided_buffers::none)
          wake = rx_waiters_.take_front();
        else if (error_ != 0 || read_eof_)
          rx_waiters_.wake_all(*owner(), error_);
      }
      // Ended with someone still waiting: a single-shot recv after each buffer, a stop while
      // another came, buffers back after ENOBUFS, a CQ overflow.
      if (final && !rx_waiters_.empty()) rx_arm();
    }
    if (final) untrack(rx_);  // frees the state when its handle is gone (nobody waits then)
    if (wake) wake.resume();
  }

  static bool on_refill(buffer_user* u) noexcept {
    socket_state& st = of(u);
    if (st.rx_waiters_.empty()) return false;
    st.rx_arm();
    return true;
  }
  static void on_retire(buffer_user* u) noexcept {
    socket_state& st = of(u);
    st.rx_.cancel();
    if (st.owner() && !st.owner()->draining()) st.rx_waiters_.wake_all(*st.owner(), -ECANCELED);
  }
  static void on_ring_event(ring_resource* res, ring_event e) noexcept {
    auto& st = static_cast<socket_state&>(static_cast<fd_state&>(*res));
    if (e == ring_event::draining) return st.cut_sends();
    st.forget_waiters();
    st.rx_unbind();
    st.ring_gone();
  }

  bool read_eof_ = false;
  bool write_shut_ = false;
  int error_ = 0;
  std::uint64_t received_ = 0;
  std::uint64_t sent_ = 0;
  std::uint32_t sends_ = 0;
  bool checking_ = false;  // stuck_check_ is armed
  own_completion cancel_report_{{&socket_state::on_send_cancel_report}, this};
  own_completion stuck_check_{{&socket_state::on_stuck_check}, this};
  wait_list send_waiters_;
  member_request<socket_state, &socket_state::on_rx> rx_;
  provided_buffers* rx_bufs_ = nullptr;
  std::uint16_t rx_head_ = provided_buffers::none;
  std::uint16_t rx_tail_ = provided_buffers::none;
  unsigned rx_queued_ = 0;  // buffers between rx_head_ and rx_tail_
  bool rx_limited_ = false;  // the armed recv carries the kernel's byte limit
  wait_list rx_waiters_;
  wait_list rx_disarmed_waiters_;
};

}  // namespace detail
RINGNET_END_NAMESPACE
