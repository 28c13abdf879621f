#include "odr.hpp"

#include "roundtrip.hpp"

namespace odr {

ringnet::task<std::string> read_exactly(ringnet::stream& s, std::size_t n) {
  std::string got;
  char buf[5];
  while (got.size() < n) {
    auto r = co_await s.recv(ringnet::buffer(buf), ringnet::never_stop_token{}, std::chrono::seconds(10));
    if (!r || *r == 0) break;
    got.append(buf, *r);
  }
  co_return got;
}

int tu_a_roundtrip() { return roundtrip("odr tu_a"); }

const void* tu_a_state(int which) {
  if (which == 0) return &ringnet::detail::current_ring();
  return &ringnet::detail::frame_pool::local();
}

}  // namespace odr
