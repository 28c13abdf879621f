#include "odr.hpp"

#include "roundtrip.hpp"

namespace odr {

ringnet::task<std::size_t> write_all(ringnet::stream& s, std::string_view data) {
  // A short sleep first: the reader in the other TU is suspended in recv meanwhile.
  if (auto r = co_await ringnet::sleep_for(s.context(), std::chrono::milliseconds(5)); !r)
    co_return 0;
  auto sent = co_await s.send_all(ringnet::buffer(data));
  co_return sent.bytes;
}

int tu_b_roundtrip() { return roundtrip("odr tu_b"); }

const void* tu_b_state(int which) {
  if (which == 0) return &ringnet::detail::current_ring();
  return &ringnet::detail::frame_pool::local();
}

}  // namespace odr
