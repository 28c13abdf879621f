// Two libraries, each with its own vendored ringnet in its own namespace (liba_net, libb_net),
// linked into one binary: both must work, and their per-thread state must be separate.
// main itself never includes ringnet.
#include <cstdio>

int liba_roundtrip();
int libb_roundtrip();
const void* liba_state(int which);
const void* libb_state(int which);

int main() {
  const int a = liba_roundtrip();
  if (a != 0) return a;
  const int b = libb_roundtrip();
  if (b != 0) return b;
  for (int which = 0; which < 2; ++which) {
    if (liba_state(which) == libb_state(which)) {
      std::fprintf(stderr, "FAIL: liba_net and libb_net share %s\n",
                   which == 0 ? "detail::current_ring" : "the frame pool");
      return 1;
    }
  }
  std::puts("OK two copies: separate current_ring and frame pools");
  return 0;
}
