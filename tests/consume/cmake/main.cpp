// Consumer built by CMake through the ringnet::ringnet target alone (tests/consume/cmake).
#include <ringnet/ringnet.hpp>

#include "roundtrip.hpp"

int main() { return roundtrip("cmake " CONSUME_HOW); }
