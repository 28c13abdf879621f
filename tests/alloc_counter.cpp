// Counts every global operator new on the calling thread, so a test can prove that an operation
// allocates nothing; and fails one on request, so a test can see what running out of memory does.
#include <cstdlib>
#include <new>

#include "support.hpp"

namespace {
thread_local std::size_t g_allocations = 0;
thread_local std::size_t g_fail_countdown = 0;  // 0: none armed
}

std::size_t test::allocations() noexcept { return g_allocations; }
void test::fail_allocation(std::size_t nth) noexcept { g_fail_countdown = nth; }
bool test::allocation_failure_armed() noexcept { return g_fail_countdown > 0; }

void* operator new(std::size_t n) {
  ++g_allocations;
  if (g_fail_countdown > 0 && --g_fail_countdown == 0) throw std::bad_alloc();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  ++g_allocations;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
