// Consumer of an installed ringnet, built with plain g++ and `pkg-config --cflags --libs ringnet`.
// run.sh passes the .pc file's version as CONSUME_PC_VERSION.
#include <ringnet/ringnet.hpp>

#include <string_view>

#include "roundtrip.hpp"

#define CONSUME_STR2(x) #x
#define CONSUME_STR(x) CONSUME_STR2(x)

// The installed headers, the installed ringnet.pc and the versioned inline namespace agree.
static_assert(std::string_view(CONSUME_STR(RINGNET_VERSION_MAJOR) "." CONSUME_STR(RINGNET_VERSION_MINOR) "."
                               CONSUME_STR(RINGNET_VERSION_PATCH)) == CONSUME_PC_VERSION,
              "config.hpp RINGNET_VERSION_* differs from the version in ringnet.pc (meson.build)");
static_assert(std::string_view(CONSUME_STR(RINGNET_ABI_NAMESPACE)) ==
                  "v" CONSUME_STR(RINGNET_VERSION_MAJOR) "_" CONSUME_STR(RINGNET_VERSION_MINOR),
              "RINGNET_ABI_NAMESPACE does not follow RINGNET_VERSION_MAJOR/MINOR");

int main() { return roundtrip("installed+pkg-config"); }
