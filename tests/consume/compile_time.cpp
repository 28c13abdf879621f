// Only the umbrella header: run.sh times `-fsyntax-only` on this file.
#include <ringnet/ringnet.hpp>
