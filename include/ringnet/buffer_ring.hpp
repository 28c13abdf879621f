// buffer_ring: a pool of receive buffers the kernel picks from (a provided-buffer ring), for
// stream::receive(). Many streams share one ring; a buffer returns to it when the
// received_buffer holding it is destroyed.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/config.hpp>
#include <ringnet/detail/provided_buffers.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

RINGNET_BEGIN_NAMESPACE

namespace detail {
class socket_ops;
}

class buffer_ring {
 public:
  /// `count` buffers (a power of two, at most 32768) of `size` bytes each. Create and destroy it
  /// on the context's thread (or before the context first runs). Destroying it while streams
  /// receive into it is safe: their pending receive() completes with operation_canceled, data
  /// they received stays readable (try_receive(), drain()), and the memory is freed once the
  /// last received_buffer is gone. Destroying the context first is safe too.
  static result<buffer_ring> create(io_context& ctx, unsigned count, std::size_t size) {
    if (count == 0 || count > 32768 || (count & (count - 1)) != 0 || size == 0 || size > (1u << 31))
      return std::make_error_code(std::errc::invalid_argument);
    int err = 0;
    auto b = detail::provided_buffers::create(detail::ring_of(ctx), count, size, err);
    if (!b) return errno_code(-err);
    return buffer_ring(std::move(b));
  }

  [[nodiscard]] std::size_t buffer_size() const noexcept { return impl_->buffer_size(); }
  /// Buffers the kernel may fill right now (not queued in a stream, not held by the caller).
  [[nodiscard]] unsigned available() const noexcept { return impl_->available(); }

 private:
  friend class detail::socket_ops;
  using impl = std::unique_ptr<detail::provided_buffers, void (*)(detail::provided_buffers*)>;
  explicit buffer_ring(impl b) noexcept : impl_(std::move(b)) {}
  impl impl_;
};

/// Bytes stream::receive() got, in a buffer of a buffer_ring; the buffer goes back to the ring
/// when this is destroyed (on any thread). Empty (size() == 0) means the peer's FIN.
class received_buffer {
 public:
  received_buffer() noexcept = default;
  received_buffer(received_buffer&& o) noexcept
      : bufs_(std::exchange(o.bufs_, nullptr)), bid_(o.bid_) {}
  received_buffer& operator=(received_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      bufs_ = std::exchange(o.bufs_, nullptr);
      bid_ = o.bid_;
    }
    return *this;
  }
  ~received_buffer() { reset(); }

  [[nodiscard]] const_buffer data() const noexcept {
    if (!bufs_) return {};
    return {bufs_->data(bid_), bufs_->length(bid_)};
  }
  [[nodiscard]] std::size_t size() const noexcept { return bufs_ ? bufs_->length(bid_) : 0; }
  /// Gives the buffer back now.
  void reset() noexcept {
    if (bufs_) std::exchange(bufs_, nullptr)->recycle_from_any_thread(bid_);
  }

 private:
  friend class detail::socket_ops;
  received_buffer(detail::provided_buffers* b, std::uint16_t bid) noexcept : bufs_(b), bid_(bid) {}
  detail::provided_buffers* bufs_ = nullptr;
  std::uint16_t bid_ = 0;
};

RINGNET_END_NAMESPACE
