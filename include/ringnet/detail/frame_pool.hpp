// Per-thread recycling of coroutine frames and per-connection state, so a connection costs no
// malloc in steady state. Frames are binned in power-of-two classes from 64 B to 64 KiB (a frame may hold an I/O
// buffer); larger ones go to the heap. config.hpp decides whether the pool is used.
#pragma once

#include <ringnet/detail/config.hpp>

#include <cstddef>
#include <new>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class frame_pool {
  static constexpr std::size_t min_shift = 6;      // 64 B
  static constexpr std::size_t classes = 11;       // ... 64 KiB
  static constexpr std::size_t max_cached = 1024;  // per class: bursts do not pin memory forever

  struct block {
    block* next;
  };

 public:
  frame_pool() = default;
  frame_pool(const frame_pool&) = delete;
  frame_pool& operator=(const frame_pool&) = delete;
  ~frame_pool() {
    for (block*& head : free_) {
      while (head) ::operator delete(std::exchange(head, head->next));
    }
  }

  RINGNET_TLS_ACCESSOR static frame_pool& local() noexcept {
    static thread_local frame_pool pool;
    return pool;
  }

  void* allocate(std::size_t n) {
    const std::size_t c = size_class(n);
    if (c < classes && free_[c]) {
      --count_[c];
      return std::exchange(free_[c], free_[c]->next);
    }
    return ::operator new(c < classes ? std::size_t{1} << (c + min_shift) : n);
  }

  void deallocate(void* p, std::size_t n) noexcept {
    const std::size_t c = size_class(n);
    if (c < classes && count_[c] < max_cached) {
      ++count_[c];
      free_[c] = new (p) block{free_[c]};
      return;
    }
    ::operator delete(p);
  }

 private:
  static constexpr std::size_t size_class(std::size_t n) noexcept {
    std::size_t c = 0;
    while ((std::size_t{1} << (c + min_shift)) < n && c < classes) ++c;
    return c;
  }
  block* free_[classes] = {};
  std::size_t count_[classes] = {};
};

// Base for promise types and per-connection state: allocation through this thread's pool (a
// block freed on another thread joins that thread's pool).
struct pooled {
#ifdef RINGNET_DETAIL_FRAME_POOL
  static void* operator new(std::size_t n) { return frame_pool::local().allocate(n); }
  static void operator delete(void* p, std::size_t n) noexcept {
    frame_pool::local().deallocate(p, n);
  }
#endif
};

}  // namespace detail
RINGNET_END_NAMESPACE
