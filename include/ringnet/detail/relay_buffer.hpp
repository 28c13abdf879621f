// The relay's copy buffers: mapped straight from the kernel, so a page is resident only once data
// touched it, and recycled per thread within a budget of resident bytes. Past the budget a buffer
// is unmapped: after a burst the memory goes back to the operating system, where the allocator's
// heap would keep it at its peak. Under AddressSanitizer nothing is cached, so every released
// buffer is unmapped and a use after release faults.
#pragma once

#include <ringnet/detail/config.hpp>  // RINGNET_DETAIL_ASAN

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <new>  // placement new
#include <span>
#include <utility>

RINGNET_BEGIN_NAMESPACE
namespace detail {

class relay_buffer_pool {
  // Resident bytes kept by idle cached buffers: a few bulk flows' worth, or thousands of buffers
  // that only ever held small messages (their first page).
  static constexpr std::size_t max_cached_resident = std::size_t{8} << 20;
  // Bounds the address space and mappings the cache holds.
  static constexpr std::size_t max_cached_count = 1024;
#ifdef RINGNET_DETAIL_ASAN
  static constexpr bool caching = false;
#else
  static constexpr bool caching = true;
#endif

  struct block {
    block* next;
    std::size_t size;      // mapped length
    std::size_t resident;  // bytes from the start that data may have touched, in whole pages
  };

 public:
  relay_buffer_pool() = default;
  relay_buffer_pool(const relay_buffer_pool&) = delete;
  relay_buffer_pool& operator=(const relay_buffer_pool&) = delete;
  ~relay_buffer_pool() {
    while (free_) {
      block* b = std::exchange(free_, free_->next);
      ::munmap(b, b->size);
    }
  }

  RINGNET_TLS_ACCESSOR static relay_buffer_pool& local() noexcept {
    static thread_local relay_buffer_pool pool;
    return pool;
  }

  // The mapped length for a request of n bytes.
  [[nodiscard]] static std::size_t mapped_size(std::size_t n) noexcept {
    const std::size_t page = page_size();
    return (std::max(n, sizeof(block)) + page - 1) / page * page;
  }

  // A buffer of mapped_size(n) bytes, or null when the kernel has no memory for it. Blocks are
  // matched by exact size: a proxy uses one size, so the most recently released (the one most
  // likely still resident) fits.
  // `resident` is set to how much of it is resident already (a cached buffer keeps its pages).
  [[nodiscard]] std::byte* take(std::size_t n, std::size_t& resident) noexcept {
    n = mapped_size(n);
    for (block** p = &free_; *p; p = &(*p)->next) {
      if ((*p)->size != n) continue;
      block* b = std::exchange(*p, (*p)->next);
      --count_;
      resident = b->resident;
      resident_ -= resident;
      ++outstanding_;
      return reinterpret_cast<std::byte*>(b);
    }
    void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    resident = 0;
    ++outstanding_;
    return static_cast<std::byte*>(m);
  }

  // Gives back a buffer of mapped_size(n) bytes of which at most the first `used` are resident.
  void give(std::byte* p, std::size_t n, std::size_t used) noexcept {
    --outstanding_;
    n = mapped_size(n);
    const std::size_t resident = std::min(n, mapped_size(used));
    if (caching && count_ < max_cached_count && resident_ + resident <= max_cached_resident) {
      free_ = new (p) block{free_, n, resident};
      ++count_;
      resident_ += resident;
      return;
    }
    ::munmap(p, n);
  }

  // Buffers taken and not given back yet: what relays hold now.
  [[nodiscard]] std::size_t outstanding() const noexcept { return outstanding_; }

 private:
  static std::size_t page_size() noexcept {
    static const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return page;
  }

  block* free_ = nullptr;
  std::size_t count_ = 0;
  std::size_t resident_ = 0;
  std::size_t outstanding_ = 0;
};

// A buffer taken from this thread's pool, given back when it goes away (on the same thread). It
// remembers how far data reached, so the pool knows what the buffer keeps resident.
class relay_buffer {
 public:
  relay_buffer() noexcept = default;
  relay_buffer(relay_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        used_(std::exchange(o.used_, 0)) {}
  relay_buffer& operator=(relay_buffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(used_, o.used_);
    return *this;
  }
  ~relay_buffer() { reset(); }

  // Takes n bytes from the pool (giving back what it held); false when there is no memory.
  [[nodiscard]] bool acquire(std::size_t n) noexcept {
    reset();
    data_ = relay_buffer_pool::local().take(n, used_);
    if (data_) size_ = n;
    return data_ != nullptr;
  }
  // Gives the memory back now.
  void reset() noexcept {
    if (data_) relay_buffer_pool::local().give(std::exchange(data_, nullptr), size_, used_);
    size_ = used_ = 0;
  }
  [[nodiscard]] explicit operator bool() const noexcept { return data_ != nullptr; }
  [[nodiscard]] std::span<std::byte> span() const noexcept { return {data_, size_}; }
  // Data was written up to byte `end`.
  void touched(std::size_t end) noexcept { used_ = std::max(used_, end); }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t used_ = 0;
};

}  // namespace detail
RINGNET_END_NAMESPACE
