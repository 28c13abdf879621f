// Per-thread recycling of the relay's copy buffers: a proxy moving bulk data wants about a MiB per
// direction, and a fresh malloc of that size per connection is an mmap, page faults and an munmap.
// Under AddressSanitizer the pool steps aside so use-after-free stays detectable.
#pragma once

#include <ringnet/detail/config.hpp>  // RINGNET_DETAIL_ASAN

#include <algorithm>
#include <cstddef>
#include <new>
#include <span>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class relay_buffer_pool {
  // What stays cached after a burst: enough for a few dozen bulk connections to come and go.
  static constexpr std::size_t max_cached_bytes = std::size_t{64} << 20;
#ifdef RINGNET_DETAIL_ASAN
  static constexpr bool caching = false;
#else
  static constexpr bool caching = true;
#endif

  struct block {
    block* next;
    std::size_t size;
  };

 public:
  relay_buffer_pool() = default;
  relay_buffer_pool(const relay_buffer_pool&) = delete;
  relay_buffer_pool& operator=(const relay_buffer_pool&) = delete;
  ~relay_buffer_pool() {
    while (free_) {
      block* b = std::exchange(free_, free_->next);
      ::operator delete(b);
    }
  }

  RINGNET_TLS_ACCESSOR static relay_buffer_pool& local() noexcept {
    static thread_local relay_buffer_pool pool;
    return pool;
  }

  // Blocks are matched by exact size: a proxy uses one size, so the first one fits.
  [[nodiscard]] std::byte* take(std::size_t n) {
    n = std::max(n, sizeof(block));
    for (block** p = &free_; caching && *p; p = &(*p)->next) {
      if ((*p)->size != n) continue;
      block* b = std::exchange(*p, (*p)->next);
      cached_ -= n;
      b->~block();
      return reinterpret_cast<std::byte*>(b);
    }
    return static_cast<std::byte*>(::operator new(n));
  }

  void give(std::byte* p, std::size_t n) noexcept {
    n = std::max(n, sizeof(block));
    if (caching && cached_ + n <= max_cached_bytes) {
      free_ = new (p) block{free_, n};
      cached_ += n;
      return;
    }
    ::operator delete(p);
  }

 private:
  block* free_ = nullptr;
  std::size_t cached_ = 0;
};

// A buffer taken from this thread's pool, given back when it goes away (on the same thread).
class relay_buffer {
 public:
  relay_buffer() noexcept = default;
  explicit relay_buffer(std::size_t n) : data_(relay_buffer_pool::local().take(n)), size_(n) {}
  relay_buffer(relay_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  relay_buffer& operator=(relay_buffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~relay_buffer() {
    if (data_) relay_buffer_pool::local().give(data_, size_);
  }
  [[nodiscard]] std::span<std::byte> span() const noexcept { return {data_, size_}; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace detail
RINGNET_END_NAMESPACE
