// Consumer that vendors a copy of include/ringnet and renames its namespace:
// built with -DRINGNET_NAMESPACE=myproxy_net.
#include <ringnet/ringnet.hpp>

#include <type_traits>

#include "roundtrip.hpp"

// The renamed namespace is what the library declares...
static_assert(std::is_class_v<myproxy_net::io_context>);
static_assert(std::is_same_v<myproxy_net::RINGNET_ABI_NAMESPACE::stream, myproxy_net::stream>);
// ...and nothing was opened under the default name: this alias would collide with a
// `namespace ringnet` ("redeclared as different kind of entity"). (A type alias, not a variable:
// run.sh also checks with nm that no symbol mentions ringnet.)
using ringnet = int;

int main() { return roundtrip("vendored-as-myproxy_net"); }
