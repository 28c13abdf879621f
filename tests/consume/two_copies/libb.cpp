// "libb": vendors its own ringnet (third_party/ringnet), built with -DRINGNET_NAMESPACE=libb_net.
#include <ringnet/ringnet.hpp>

#include "roundtrip.hpp"

static_assert(std::is_class_v<libb_net::io_context>);

int libb_roundtrip() { return roundtrip("libb (libb_net)"); }

// Addresses of this copy's per-thread state, so main can tell the two copies do not share it.
const void* libb_state(int which) {
  if (which == 0) return &libb_net::detail::current_ring();
  return &libb_net::detail::frame_pool::local();
}
