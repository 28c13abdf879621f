// A stream's multishot recv into a provided buffer ring: one SQE delivers data as it arrives,
// with the poll kept armed, instead of a recv (and a poll re-arm) per read.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/detail/socket_ops.hpp>

#include <liburing.h>
#include <sys/mman.h>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class multishot_recv;

// The buffers of one buffer_ring, registered with the kernel as a provided-buffer group. Buffers
// the kernel filled for a stream that has not taken them yet are queued in a per-stream list
// linked through `links_` (indexed by buffer id): no allocation, bounded by the ring size.
class provided_buffers {
 public:
  static constexpr std::uint16_t none = 0xffff;

  provided_buffers(ring& r, unsigned count, std::size_t size)
      : ring_(&r), count_(count), size_(size), mask_(io_uring_buf_ring_mask(count)),
        group_(r.next_buffer_group()), data_(new std::byte[count * size]),
        links_(new link[count]) {}
  provided_buffers(const provided_buffers&) = delete;
  provided_buffers& operator=(const provided_buffers&) = delete;
  ~provided_buffers() {
    if (br_) {
      io_uring_unregister_buf_ring(&ring_->native(), group_);
      ::munmap(br_, count_ * sizeof(io_uring_buf));
    }
  }

  // mmap the ring, register it, hand every buffer to the kernel. 0 or -errno.
  int init() noexcept {
    void* mem = ::mmap(nullptr, count_ * sizeof(io_uring_buf), PROT_READ | PROT_WRITE,
                       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) return -errno;
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(mem);
    reg.ring_entries = count_;
    reg.bgid = group_;
    if (int r = io_uring_register_buf_ring(&ring_->native(), &reg, 0); r < 0) {
      ::munmap(mem, count_ * sizeof(io_uring_buf));
      return r;
    }
    br_ = static_cast<io_uring_buf_ring*>(mem);
    io_uring_buf_ring_init(br_);
    for (unsigned i = 0; i < count_; ++i) add(static_cast<std::uint16_t>(i), static_cast<int>(i));
    io_uring_buf_ring_advance(br_, static_cast<int>(count_));
    available_ = count_;
    return 0;
  }

  [[nodiscard]] std::uint16_t group() const noexcept { return group_; }
  [[nodiscard]] std::size_t buffer_size() const noexcept { return size_; }
  [[nodiscard]] unsigned available() const noexcept { return available_; }
  [[nodiscard]] std::byte* data(std::uint16_t bid) const noexcept { return data_.get() + bid * size_; }

  void taken() noexcept { --available_; }
  // Back to the kernel; a stream that ran out of buffers (ENOBUFS) is re-armed.
  void recycle(std::uint16_t bid) noexcept;

  // Per-stream queues of filled buffers.
  void set_length(std::uint16_t bid, std::uint32_t len) noexcept { links_[bid].len = len; }
  [[nodiscard]] std::uint32_t length(std::uint16_t bid) const noexcept { return links_[bid].len; }
  void set_next(std::uint16_t bid, std::uint16_t next) noexcept { links_[bid].next = next; }
  [[nodiscard]] std::uint16_t next(std::uint16_t bid) const noexcept { return links_[bid].next; }

  void starve(multishot_recv* rx) noexcept;
  void unstarve(multishot_recv* rx) noexcept;
  [[nodiscard]] ring& owner() const noexcept { return *ring_; }

 private:
  struct link {
    std::uint32_t len;
    std::uint16_t next;
  };
  void add(std::uint16_t bid, int offset) noexcept {
    io_uring_buf_ring_add(br_, data(bid), static_cast<unsigned>(size_), bid, mask_, offset);
  }

  ring* ring_;
  unsigned count_;
  std::size_t size_;
  int mask_;
  std::uint16_t group_;
  io_uring_buf_ring* br_ = nullptr;
  std::unique_ptr<std::byte[]> data_;
  std::unique_ptr<link[]> links_;
  unsigned available_ = 0;
  multishot_recv* starved_ = nullptr;
};

// Per stream: the armed multishot recv and the buffers it filled that the stream's owner has not
// taken yet, then (at most) one terminal result: 0 for EOF, -errno.
class multishot_recv final : public completion {
 public:
  static constexpr int no_result = 1;

  multishot_recv() noexcept : completion{&multishot_recv::on_cqe} {}
  multishot_recv(const multishot_recv&) = delete;
  multishot_recv& operator=(const multishot_recv&) = delete;
  ~multishot_recv() { release(); }

  [[nodiscard]] std::uint64_t user_data() noexcept {
    return reinterpret_cast<std::uint64_t>(static_cast<completion*>(this));
  }
  [[nodiscard]] bool armed() const noexcept { return armed_; }
  [[nodiscard]] bool ready() const noexcept { return head_ != provided_buffers::none || terminal_ != no_result; }
  [[nodiscard]] provided_buffers* buffers() const noexcept { return bufs_; }

  // Starts (or keeps) receiving on `st` into `b`; `multishot` false: one recv per arm (pre-6.0).
  void arm(fd_state& st, provided_buffers& b, bool multishot) noexcept {
    if (bufs_ && bufs_ != &b) release();
    st_ = &st;
    bufs_ = &b;
    multishot_ = multishot;
    if (armed_ || starved_ || st.fd < 0 || st.closing || b.owner().draining()) return;
    io_uring_sqe* sqe = b.owner().get_sqes(1);
    io_uring_prep_recv(sqe, st.fd, nullptr, 0, 0);
    if (multishot) sqe->ioprio |= IORING_RECV_MULTISHOT;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = b.group();
    io_uring_sqe_set_data64(sqe, user_data());
    armed_ = true;
    b.owner().op_started();
    ++st.ops;
  }
  void rearm_after_starving() noexcept {
    starved_ = false;
    if (waiter_) arm(*st_, *bufs_, multishot_);
  }
  [[nodiscard]] bool receiving() const noexcept { return armed_ || starved_ || head_ != provided_buffers::none; }

  // A stop for the waiting receive: cancel the armed recv (its final CQE wakes the waiter), or,
  // when none is armed (starved of buffers), end the wait here.
  void cancel_wait() noexcept {
    if (armed_) {
      bufs_->owner().cancel(user_data());
    } else if (waiter_) {
      terminal_ = -ECANCELED;
      bufs_->owner().post(std::exchange(waiter_, {}));
    }
  }

  // The next queued buffer id, or none; then the terminal result (which stays, except a
  // cancellation, so the next receive re-arms).
  std::uint16_t pop(int& terminal) noexcept {
    terminal = no_result;
    if (head_ != provided_buffers::none) {
      const std::uint16_t bid = head_;
      head_ = bufs_->next(bid);
      if (head_ == provided_buffers::none) tail_ = provided_buffers::none;
      return bid;
    }
    terminal = terminal_;
    if (terminal_ == -ECANCELED) terminal_ = no_result;
    return provided_buffers::none;
  }
  void wait(std::coroutine_handle<> h) noexcept { waiter_ = h; }
  void wait_disarmed(std::coroutine_handle<> h) noexcept { disarmed_waiter_ = h; }

  // Gives every queued buffer back and leaves the starved list (stream closed or destroyed).
  void release() noexcept {
    if (!bufs_) return;
    if (starved_) bufs_->unstarve(this);
    starved_ = false;
    int t;
    for (std::uint16_t bid = pop(t); bid != provided_buffers::none; bid = pop(t)) bufs_->recycle(bid);
    terminal_ = no_result;
  }

 private:
  static void on_cqe(completion* c, int res, std::uint32_t flags) noexcept {
    auto* rx = static_cast<multishot_recv*>(c);
    provided_buffers& b = *rx->bufs_;
    const bool final = !(flags & IORING_CQE_F_MORE);
    if (final) {
      rx->armed_ = false;
      b.owner().op_finished();
      rx->st_->op_done(false);
    }
    if (flags & IORING_CQE_F_BUFFER) {
      const auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
      b.taken();
      if (res > 0 && !b.owner().draining()) {
        b.set_length(bid, static_cast<std::uint32_t>(res));
        rx->push(bid);
      } else {
        b.recycle(bid);
      }
    }
    if (res == 0 && rx->st_->closing) {
      rx->terminal_ = -ECANCELED;  // close() woke it with shutdown(SHUT_RDWR): not the peer's FIN
    } else if (res == 0) {
      rx->terminal_ = 0;
      rx->st_->read_eof = true;
    } else if (res == -ENOBUFS) {
      // The kernel found the ring empty. Buffers may have come back since (their CQEs and our
      // recycling race it): re-arm now if so, else when one comes back.
      if (b.available() == 0) {
        rx->starved_ = true;
        b.starve(rx);
      }
    } else if (res < 0) {
      rx->terminal_ = rx->st_->closing || res == -EINTR ? -ECANCELED : res;
    }
    if (final && rx->disarmed_waiter_) b.owner().post(std::exchange(rx->disarmed_waiter_, {}));
    if (b.owner().draining() || !rx->waiter_) return;
    if (rx->ready()) {
      std::exchange(rx->waiter_, {}).resume();
    } else if (final && !rx->starved_) {
      rx->arm(*rx->st_, b, rx->multishot_);  // ended without data or error (e.g. CQ overflow)
    }
  }
  void push(std::uint16_t bid) noexcept {
    bufs_->set_next(bid, provided_buffers::none);
    if (tail_ == provided_buffers::none) head_ = bid;
    else bufs_->set_next(tail_, bid);
    tail_ = bid;
  }

  friend class provided_buffers;
  fd_state* st_ = nullptr;
  provided_buffers* bufs_ = nullptr;
  std::coroutine_handle<> waiter_;
  std::coroutine_handle<> disarmed_waiter_;
  multishot_recv* next_starved_ = nullptr;
  std::uint16_t head_ = provided_buffers::none;
  std::uint16_t tail_ = provided_buffers::none;
  int terminal_ = no_result;
  bool armed_ = false;
  bool starved_ = false;
  bool multishot_ = true;
};

inline void provided_buffers::recycle(std::uint16_t bid) noexcept {
  add(bid, 0);
  io_uring_buf_ring_advance(br_, 1);
  ++available_;
  if (multishot_recv* rx = starved_) {
    starved_ = rx->next_starved_;
    rx->rearm_after_starving();
  }
}
inline void provided_buffers::starve(multishot_recv* rx) noexcept {
  rx->next_starved_ = starved_;
  starved_ = rx;
}
inline void provided_buffers::unstarve(multishot_recv* rx) noexcept {
  for (multishot_recv** p = &starved_; *p; p = &(*p)->next_starved_) {
    if (*p == rx) {
      *p = rx->next_starved_;
      return;
    }
  }
}

}  // namespace detail
RINGNET_END_NAMESPACE
