// Per-thread recycling of coroutine frames and per-connection state, so a connection costs no
// malloc in steady state. Frames are binned in size classes from 64 B to 64 KiB (a frame may hold an
// I/O buffer); larger ones go to the heap. config.hpp decides whether the pool is used.
#pragma once

#include <ringnet/detail/config.hpp>

#include <cstddef>
#include <new>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class frame_pool {
  // Classes every 64 B up to 2 KiB (where most frames are: power-of-two classes would waste a
  // third of the memory of an idle connection), then powers of two up to 64 KiB.
  static constexpr std::size_t fine_step = 64;
  static constexpr std::size_t fine_limit = 2048;
  static constexpr std::size_t fine_classes = fine_limit / fine_step;  // 64 B ... 2 KiB
  static constexpr std::size_t classes = fine_classes + 5;              // 4 KiB ... 64 KiB
  // Kept per class: at most 1,024 blocks and 1 MiB, so a burst does not pin memory forever.
  static constexpr std::size_t max_cached = 1024;
  static constexpr std::size_t max_cached_bytes = std::size_t{1} << 20;

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
    return ::operator new(c < classes ? class_size(c) : n);
  }

  void deallocate(void* p, std::size_t n) noexcept {
    const std::size_t c = size_class(n);
    if (c < classes && count_[c] < cache_limit(c)) {
      ++count_[c];
      free_[c] = new (p) block{free_[c]};
      return;
    }
    ::operator delete(p);
  }

 private:
  static constexpr std::size_t size_class(std::size_t n) noexcept {
    if (n <= fine_limit) return n == 0 ? 0 : (n - 1) / fine_step;
    std::size_t c = fine_classes;
    while (class_size(c) < n && c < classes) ++c;
    return c;
  }
  static constexpr std::size_t class_size(std::size_t c) noexcept {
    return c < fine_classes ? (c + 1) * fine_step : fine_limit << (c - fine_classes + 1);
  }
  static constexpr std::size_t cache_limit(std::size_t c) noexcept {
    return max_cached_bytes / class_size(c) < max_cached ? max_cached_bytes / class_size(c) : max_cached;
  }

  block* free_[classes] = {};
  std::size_t count_[classes] = {};

  friend struct frame_pool_classes_check;
};

struct frame_pool_classes_check {
  using p = frame_pool;
  static_assert(p::class_size(p::size_class(64)) == 64 && p::class_size(p::size_class(65)) == 128);
  static_assert(p::class_size(p::size_class(2048)) == 2048 && p::class_size(p::size_class(2049)) == 4096);
  static_assert(p::class_size(p::classes - 1) == 65536 && p::size_class(65537) == p::classes);
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
