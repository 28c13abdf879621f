// A doubly linked list threaded through its elements: no allocation, O(1) insertion and removal.
// T has `T* prev` and `T* next`, owned by the one list it is on.
#pragma once

#include <ringnet/detail/config.hpp>

RINGNET_BEGIN_NAMESPACE
namespace detail {

template <class T>
class intrusive_list {
 public:
  void push_front(T& n) noexcept {
    n.prev = nullptr;
    n.next = head_;
    (head_ ? head_->prev : tail_) = &n;
    head_ = &n;
  }
  void push_back(T& n) noexcept {
    n.next = nullptr;
    n.prev = tail_;
    (tail_ ? tail_->next : head_) = &n;
    tail_ = &n;
  }
  void remove(T& n) noexcept {
    (n.prev ? n.prev->next : head_) = n.next;
    (n.next ? n.next->prev : tail_) = n.prev;
    n.prev = n.next = nullptr;
  }
  [[nodiscard]] T* front() const noexcept { return head_; }
  [[nodiscard]] bool empty() const noexcept { return head_ == nullptr; }
  // f(T&) for every element; f may remove the element it is given.
  template <class F>
  void for_each(F f) {
    for (T* n = head_; n;) {
      T* next = n->next;
      f(*n);
      n = next;
    }
  }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
};

}  // namespace detail
RINGNET_END_NAMESPACE
