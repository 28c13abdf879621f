// Runs each TU's own round trip, then one whose writer coroutine comes from tu_b and whose reader
// coroutine comes from tu_a, both driven by when_all/sync_wait instantiated here; finally checks
// that the inline thread_local variables are one entity across the three TUs.
#include <cstdio>
#include <string>

#include "odr.hpp"

int main() {
  if (const int rc = odr::tu_a_roundtrip(); rc != 0) return rc;
  if (const int rc = odr::tu_b_roundtrip(); rc != 0) return rc;

  ringnet::io_context ctx;
  auto lst = ringnet::listener::bind(ctx, ringnet::endpoint::loopback_v4(0));
  if (!lst) return 1;
  auto client = ringnet::sync_wait(ctx, ringnet::connect(ctx, lst->local_endpoint().value()));
  auto server = ringnet::sync_wait(ctx, lst->accept());
  if (!client || !server) {
    std::fprintf(stderr, "FAIL odr: connect/accept\n");
    return 1;
  }
  const std::string msg(3000, 'x');
  auto [got, sent] = ringnet::sync_wait(
      ctx, ringnet::when_all(odr::read_exactly(*server, msg.size()), odr::write_all(*client, msg)));
  if (sent != msg.size() || got != msg) {
    std::fprintf(stderr, "FAIL odr: cross-TU round trip: sent %zu, received %zu of %zu\n", sent,
                 got.size(), msg.size());
    return 1;
  }

  const void* here[2] = {&ringnet::detail::current_ring(), &ringnet::detail::frame_pool::local()};
  for (int which = 0; which < 2; ++which) {
    if (odr::tu_a_state(which) != here[which] || odr::tu_b_state(which) != here[which]) {
      std::fprintf(stderr, "FAIL odr: %s differs between translation units\n",
                   which == 0 ? "detail::current_ring" : "detail::frame_pool::local()");
      return 1;
    }
  }
  std::printf("OK odr: cross-TU coroutines, %zu bytes; one current_ring and frame pool\n", msg.size());
  return 0;
}
