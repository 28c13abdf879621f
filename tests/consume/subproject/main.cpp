// Consumer that gets ringnet as a meson subproject (subprojects/ringnet, dependency('ringnet')).
#include <ringnet/ringnet.hpp>

#include "roundtrip.hpp"

int main() { return roundtrip("meson-subproject"); }
