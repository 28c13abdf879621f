// ringnet: the whole life of a TCP connection as C++20 coroutines on io_uring.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/buffer_ring.hpp>
#include <ringnet/config.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/lifecycle.hpp>
#include <ringnet/listener.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/relay.hpp>
#include <ringnet/server.hpp>
#include <ringnet/signal.hpp>
#include <ringnet/spawn.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>
#include <ringnet/task.hpp>
#include <ringnet/threaded_server.hpp>
#include <ringnet/timer.hpp>
#include <ringnet/when_all.hpp>
#include <ringnet/when_any.hpp>
