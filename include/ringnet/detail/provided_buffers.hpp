// The buffers of one buffer_ring, registered with the kernel as a provided-buffer group, which a
// multishot recv picks from. Buffers filled for a stream that has not taken them yet are queued
// per stream through `links_` (indexed by buffer id): no allocation, bounded by the ring size.
//
// Lifetime: the memory stays until the handle (buffer_ring) is gone, no buffer is out (queued in
// a stream or held by a received_buffer) and no stream is bound to it. When the handle goes, every
// bound stream's recv is cancelled and the group is unregistered once none is in flight.
#pragma once

#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/config.hpp>
#include <ringnet/detail/intrusive_list.hpp>
#include <ringnet/detail/ring.hpp>

#include <liburing.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// What a provided-buffer group needs from the streams bound to it.
struct buffer_user {
  // A buffer came back after the kernel found none (ENOBUFS) for this user: re-arm if someone
  // still waits. false: nobody does, offer the buffer to the next starved user.
  bool (*refill)(buffer_user*) noexcept;
  void (*retire)(buffer_user*) noexcept;  // the buffer_ring is going away: stop receiving into it
  buffer_user* prev = nullptr;  // in the list of bound users
  buffer_user* next = nullptr;
  buffer_user* starved_prev = nullptr;  // in the list of starved users, oldest first
  buffer_user* starved_next = nullptr;
  bool starved = false;
};

class provided_buffers final : public ring_resource, public remote_node {
 public:
  static constexpr std::uint16_t none = 0xffff;

  // `count` (a power of two) buffers of `size` bytes; -errno on failure.
  static std::unique_ptr<provided_buffers, void (*)(provided_buffers*)> create(ring& r, unsigned count,
                                                                               std::size_t size, int& err) {
    std::unique_ptr<provided_buffers, void (*)(provided_buffers*)> b(new provided_buffers(r, count, size),
                                                                     &provided_buffers::release_handle);
    err = b->init();
    if (err < 0) b.reset();
    return b;
  }

  [[nodiscard]] ring* owner() const noexcept { return ring_; }
  [[nodiscard]] std::uint16_t group() const noexcept { return group_; }
  [[nodiscard]] std::size_t buffer_size() const noexcept { return size_; }
  [[nodiscard]] unsigned available() const noexcept { return available_; }
  // How many filled buffers one stream may hold queued before its recv is stopped until it
  // takes them: a sixteenth of the ring (at least two, so one is read while the next fills), so
  // a connection whose data nobody consumes (its peer floods while the replies are stuck) cannot
  // take every buffer from the others.
  [[nodiscard]] unsigned stream_share() const noexcept { return std::max(count_ / 16, 2u); }
  [[nodiscard]] bool retired() const noexcept { return retired_; }
  [[nodiscard]] std::byte* data(std::uint16_t bid) const noexcept { return data_.get() + bid * size_; }

  // ---- buffers ---------------------------------------------------------------------------
  // The kernel filled `bid`: it is out until recycled.
  void taken() noexcept {
    --available_;
    ++out_;
  }
  // Back to the kernel (ring thread); the stream starved longest that still waits is re-armed.
  void recycle(std::uint16_t bid) noexcept {
    --out_;
    if (!retired_ && ring_) {
      add(bid, 0);
      io_uring_buf_ring_advance(br_, 1);
      ++available_;
      while (buffer_user* u = starved_.front()) {
        unstarve(u);
        if (u->refill(u)) break;
      }
    }
    maybe_free();
  }
  // From any thread: on the ring's thread (or its owner thread between turns) at once, else
  // handed to the ring through a lock-free stack of buffer ids.
  void recycle_from_any_thread(std::uint16_t bid) noexcept {
    if (!ring_ || ring_->owned_here()) {
      recycle(bid);
      return;
    }
    // Acquire: when the stack was empty, the ring is done with this node (it emptied the stack
    // from inside the node's handler, after its last touch of the node), so it may be posted again.
    std::uint32_t head = returned_.load(std::memory_order_acquire);
    do {
      links_[bid].returned_next = static_cast<std::uint16_t>(head);
    } while (!returned_.compare_exchange_weak(head, bid, std::memory_order_acq_rel,
                                              std::memory_order_acquire));
    if (head == none) ring_->post_remote(this);  // the stack was empty: nobody has asked yet
  }

  // Per-stream queues of filled buffers.
  void set_length(std::uint16_t bid, std::uint32_t len) noexcept { links_[bid].len = len; }
  [[nodiscard]] std::uint32_t length(std::uint16_t bid) const noexcept { return links_[bid].len; }
  void set_next(std::uint16_t bid, std::uint16_t next) noexcept { links_[bid].next = next; }
  [[nodiscard]] std::uint16_t next(std::uint16_t bid) const noexcept { return links_[bid].next; }

  // ---- the streams receiving into it ------------------------------------------------------
  void bind(buffer_user* u) noexcept { bound_.push_front(*u); }
  void unbind(buffer_user* u) noexcept {
    unstarve(u);
    bound_.remove(*u);
    maybe_free();
  }
  void starve(buffer_user* u) noexcept {
    if (u->starved) return;
    u->starved = true;
    starved_.push_back(*u);
  }
  void unstarve(buffer_user* u) noexcept {
    if (!u->starved) return;
    u->starved = false;
    starved_.remove(*u);
  }
  // A bound stream's recv on this group started / ended (the group is unregistered only when
  // none is in flight).
  void recv_started() noexcept { ++recvs_; }
  void recv_ended() noexcept {
    --recvs_;
    if (retired_ && recvs_ == 0) unregister();
  }

  // The buffer_ring handle is gone.
  static void release_handle(provided_buffers* b) noexcept {
    b->retired_ = true;
    b->bound_.for_each([b](buffer_user& u) {
      b->unstarve(&u);
      u.retire(&u);
    });
    if (b->recvs_ == 0) b->unregister();
    b->handle_ = false;
    b->maybe_free();
  }

 private:
  struct link {
    std::uint32_t len;
    std::uint16_t next;
    std::uint16_t returned_next;
  };

  provided_buffers(ring& r, unsigned count, std::size_t size)
      : ring_resource(&provided_buffers::on_ring_event), remote_node{&provided_buffers::take_returned},
        ring_(&r), count_(count), size_(size), mask_(io_uring_buf_ring_mask(count)),
        group_(r.next_buffer_group()), data_(new std::byte[count * size]),
        links_(new link[count]) {}
  ~provided_buffers() {
    unregister();
    if (br_) ::munmap(br_, count_ * sizeof(io_uring_buf));
    if (ring_) ring_->remove_resource(this);
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
    registered_ = true;
    io_uring_buf_ring_init(br_);
    for (unsigned i = 0; i < count_; ++i) add(static_cast<std::uint16_t>(i), static_cast<int>(i));
    io_uring_buf_ring_advance(br_, static_cast<int>(count_));
    available_ = count_;
    ring_->add_resource(this);
    return 0;
  }

  void add(std::uint16_t bid, int offset) noexcept {
    io_uring_buf_ring_add(br_, data(bid), static_cast<unsigned>(size_), bid, mask_, offset);
  }
  void unregister() noexcept {
    if (!registered_ || !ring_) return;
    registered_ = false;
    io_uring_unregister_buf_ring(&ring_->native(), group_);
  }
  void maybe_free() noexcept {
    if (!handle_ && out_ == 0 && bound_.empty() && recvs_ == 0) delete this;
  }

  static void take_returned(remote_node* n) noexcept {
    auto& self = static_cast<provided_buffers&>(*n);
    std::uint32_t bid = self.returned_.exchange(none, std::memory_order_acq_rel);
    while (bid != none) {
      const std::uint16_t next = self.links_[bid].returned_next;
      self.recycle(static_cast<std::uint16_t>(bid));  // the last one may free `self`
      bid = next;
    }
  }
  static void on_ring_event(ring_resource* r, ring_event e) noexcept {
    if (e != ring_event::gone) return;
    auto& self = static_cast<provided_buffers&>(*r);
    self.registered_ = false;  // the kernel drops the group with the ring
    self.ring_ = nullptr;
    self.available_ = 0;
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
  unsigned out_ = 0;
  unsigned recvs_ = 0;
  bool registered_ = false;
  bool retired_ = false;
  bool handle_ = true;
  intrusive_list<buffer_user, &buffer_user::starved_prev, &buffer_user::starved_next> starved_;
  intrusive_list<buffer_user> bound_;
  std::atomic<std::uint32_t> returned_{none};
};

}  // namespace detail
RINGNET_END_NAMESPACE
