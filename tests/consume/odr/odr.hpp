// Two-TU ODR test: tu_a.cpp, tu_b.cpp and main.cpp all include <ringnet/ringnet.hpp> with the
// default namespace and instantiate the same templates (task<T> promises, operation<Op, Token>,
// when_all, sync_wait, the frame pool's thread_local, the inline thread_local current_ring).
// Coroutines defined in one TU are awaited, resumed and destroyed from another.
#pragma once

#include <ringnet/ringnet.hpp>

#include <cstddef>
#include <string>
#include <string_view>

namespace odr {
// tu_a.cpp
ringnet::task<std::string> read_exactly(ringnet::stream& s, std::size_t n);
int tu_a_roundtrip();
const void* tu_a_state(int which);
// tu_b.cpp
ringnet::task<std::size_t> write_all(ringnet::stream& s, std::string_view data);
int tu_b_roundtrip();
const void* tu_b_state(int which);
}  // namespace odr
