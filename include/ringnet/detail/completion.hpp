// The two intrusive hooks everything in the engine hangs on; no allocation anywhere.
#pragma once

#include <ringnet/detail/config.hpp>

#include <atomic>
#include <cstdint>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// Target of a CQE. Its address is the SQE's user_data; on_cqe runs on the ring's thread.
struct completion {
  using handler = void (*)(completion*, int res, std::uint32_t flags) noexcept;
  handler on_cqe;
};

// user_data values that are not completions (objects are at least 8-byte aligned).
inline constexpr std::uint64_t ignore_cqe = 0;  // cancels, link timeouts: result is unused
inline constexpr std::uint64_t wake_cqe = 1;    // the eventfd read that carries cross-thread work

// A request handed to the ring's thread from any thread (Treiber stack; the ring drains it).
struct remote_node {
  using handler = void (*)(remote_node*) noexcept;
  handler run;
  remote_node* next = nullptr;
};

// Lock-free multi-producer stack, drained wholesale by the single consumer.
class remote_stack {
 public:
  // Returns true when the stack was empty, i.e. the consumer may need a wake-up.
  bool push(remote_node* n) noexcept {
    remote_node* head = head_.load(std::memory_order_relaxed);
    do {
      n->next = head;
    } while (!head_.compare_exchange_weak(head, n, std::memory_order_release,
                                          std::memory_order_relaxed));
    return head == nullptr;
  }
  // Takes everything, oldest first.
  remote_node* take_all() noexcept {
    remote_node* n = head_.exchange(nullptr, std::memory_order_acquire);
    remote_node* reversed = nullptr;
    while (n) {
      remote_node* next = n->next;
      n->next = reversed;
      reversed = n;
      n = next;
    }
    return reversed;
  }
  [[nodiscard]] bool empty() const noexcept {
    return head_.load(std::memory_order_relaxed) == nullptr;
  }

 private:
  std::atomic<remote_node*> head_{nullptr};
};

}  // namespace detail
RINGNET_END_NAMESPACE
