// ringnet configuration, for users: the macros below are the ones to set when building.
//
//   RINGNET_NAMESPACE      top namespace (default ringnet): vendor two copies under two names
//   RINGNET_ABI_NAMESPACE  versioned inline namespace (default v0_1, or v0_1_nopool)
//   RINGNET_NO_FRAME_POOL  allocate coroutine frames with plain operator new
//   NDEBUG                 turns the library's contract checks (RINGNET_ASSERT) off
//
// Every macro ringnet defines starts with RINGNET_.
#pragma once

#include <ringnet/detail/config.hpp>
