// "liba": vendors its own ringnet (third_party/ringnet), built with -DRINGNET_NAMESPACE=liba_net.
#include <ringnet/ringnet.hpp>

#include "roundtrip.hpp"

static_assert(std::is_class_v<liba_net::io_context>);

int liba_roundtrip() { return roundtrip("liba (liba_net)"); }

// Addresses of this copy's per-thread state, so main can tell the two copies do not share it.
const void* liba_state(int which) {
  if (which == 0) return &liba_net::detail::current_ring();
  return &liba_net::detail::frame_pool::local();
}
