// A doubly linked list threaded through its elements: no allocation, O(1) insertion and removal.
// T has a pair of links (by default `T* prev` and `T* next`) for each list it can be on.
#pragma once

#include <ringnet/detail/config.hpp>

RINGNET_BEGIN_NAMESPACE
namespace detail {

template <class T, T* T::*Prev = &T::prev, T* T::*Next = &T::next>
class intrusive_list {
 public:
  void push_front(T& n) noexcept {
    n.*Prev = nullptr;
    n.*Next = head_;
    (head_ ? head_->*Prev : tail_) = &n;
    head_ = &n;
  }
  void push_back(T& n) noexcept {
    n.*Next = nullptr;
    n.*Prev = tail_;
    (tail_ ? tail_->*Next : head_) = &n;
    tail_ = &n;
  }
  void remove(T& n) noexcept {
    (n.*Prev ? n.*Prev->*Next : head_) = n.*Next;
    (n.*Next ? n.*Next->*Prev : tail_) = n.*Prev;
    n.*Prev = n.*Next = nullptr;
  }
  [[nodiscard]] T* front() const noexcept { return head_; }
  [[nodiscard]] bool empty() const noexcept { return head_ == nullptr; }
  // f(T&) for every element; f may remove the element it is given.
  template <class F>
  void for_each(F f) {
    for (T* n = head_; n;) {
      T* next = n->*Next;
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
