// ringnet-echo: the lifecycle echo server of the benchmark protocol (README, "Benchmarks").
//
//   ringnet-echo --listen HOST:PORT [--grace SECONDS] [--threads N] [--pin-threads] [--max-connections N]
//                [--idle-timeout SECONDS] [--first-byte-timeout SECONDS]
//
// Echoes every byte as it arrives; after the client's FIN it finishes sending, half-closes and
// closes (nothing unread, so never an RST). SIGINT/SIGTERM: stop accepting, let connections
// finish within the grace period, reset the rest, exit 0. With --threads N, rn::threaded_server:
// N rings each with their own SO_REUSEPORT listener (thread per core, shared nothing).
#include <ringnet/ringnet.hpp>

#include <array>
#include <system_error>
#include <chrono>
#include <cstdio>

#include "cli.hpp"

namespace rn = ringnet;
using namespace std::chrono_literals;

namespace {

constexpr const char* usage =
    "ringnet-echo --listen HOST:PORT [--grace SECONDS] [--threads N] [--pin-threads] [--shutdown syscall|io_uring] "
    "[--max-connections N] [--idle-timeout SECONDS] [--first-byte-timeout SECONDS]";
constexpr const char* help =
    "usage: ringnet-echo --listen HOST:PORT [options]\n"
    "\n"
    "Echoes every byte as it arrives; after the client's FIN it finishes sending, half-closes and\n"
    "closes (never an RST for a well-behaved client). SIGINT/SIGTERM: stops accepting, lets open\n"
    "connections finish within the grace period, resets the rest, prints its counters to stderr\n"
    "and exits 0.\n"
    "\n"
    "options:\n"
    "  --listen HOST:PORT        address to listen on (required; IPv6 as [::1]:PORT). Port 0 picks\n"
    "                            a free port; the first line on stdout is \"listening on HOST:PORT\".\n"
    "                            A host name is looked up once at start and its first address used\n"
    "                            (builds with c-ares)\n"
    "  --grace SECONDS           shutdown grace period, 0..86400 (default 5)\n"
    "  --threads N               rings, one thread each with its own SO_REUSEPORT listener,\n"
    "                            1..256 (default 1)\n"
    "  --pin-threads             pin server thread i to the i-th CPU this process may run on\n"
    "  --shutdown syscall|io_uring\n"
    "                            how the FIN is sent: shutdown(2) or IORING_OP_SHUTDOWN\n"
    "                            (default syscall, measured cheaper)\n"
    "  --max-connections N       serve at most N connections at once (per thread); the rest wait\n"
    "                            in the listen backlog, 0..1e9, 0 = no limit (default 0)\n"
    "  --idle-timeout SECONDS    end a connection gracefully (FIN, drain, close) when no byte moved\n"
    "                            either way for this long, 0..1e7, 0 = never (default 0)\n"
    "  --first-byte-timeout SECONDS\n"
    "                            end a connection that sent nothing within this long of being\n"
    "                            accepted, 0..1e7, 0 = never (default 0)\n"
    "  -h, --help                this text\n"
    "  --version                 the version of the tool and of the liburing headers it was built with\n"
    "\n"
    "exit status: 0 after a graceful shutdown or --help/--version, 1 on a runtime error (the\n"
    "address cannot be bound or looked up, ...), 2 on bad arguments (message on stderr).\n";

// One multishot recv per connection, into buffers shared by every connection of the thread.
struct echo {
  rn::buffer_ring bufs;
  rn::task<void> operator()(rn::stream& s, rn::inplace_stop_token finish) {
    for (;;) {
      auto data = co_await s.receive(bufs, finish);
      if (!data || data->size() == 0) co_return;  // EOF, error or shutdown: the server closes
      if (!co_await s.send_all(data->data(), finish)) co_return;
    }
  }
};

// Each server thread's handler, made on that thread for its own ring.
echo make_echo(rn::io_context& ctx) {
  auto bufs = rn::buffer_ring::create(ctx, 1024, 16 * 1024);
  if (!bufs) throw std::system_error(bufs.error(), "buffer ring");
  return echo{std::move(*bufs)};
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<cli::host_port> listen;
  double grace_s = 5;
  double threads = 1;
  bool pin_threads = false;
  auto how = rn::shutdown_method::syscall;  // measured cheaper than IORING_OP_SHUTDOWN (README)
  double max_connections = 0, idle_s = 0, first_byte_s = 0;
  for (int i = 1; i < argc; ++i) {
    if (cli::help_or_version(argv[i], "ringnet-echo", help)) return 0;
    if (auto v = cli::option(argc, argv, i, "--listen", usage)) listen = cli::split_host_port(*v, usage);
    else if (auto g = cli::option(argc, argv, i, "--grace", usage)) grace_s = cli::number(*g, usage, 0, 86400);
    else if (auto t = cli::option(argc, argv, i, "--threads", usage)) threads = cli::number(*t, usage, 1, 256, true);
    else if (std::string_view(argv[i]) == "--pin-threads") pin_threads = true;
    else if (auto m = cli::option(argc, argv, i, "--shutdown", usage)) {
      if (*m == "io_uring") how = rn::shutdown_method::io_uring;
      else if (*m != "syscall") cli::usage_error(usage, "--shutdown takes syscall or io_uring");
    } else if (auto c = cli::option(argc, argv, i, "--max-connections", usage)) {
      max_connections = cli::number(*c, usage, 0, 1e9, true);
    } else if (auto d = cli::option(argc, argv, i, "--idle-timeout", usage)) {
      idle_s = cli::number(*d, usage, 0, 1e7);
    } else if (auto f = cli::option(argc, argv, i, "--first-byte-timeout", usage)) {
      first_byte_s = cli::number(*f, usage, 0, 1e7);
    } else cli::usage_error(usage, "unknown argument", argv[i]);
  }
  const rn::server_options options{
      .close = {.shutdown = how},
      .max_connections = static_cast<std::size_t>(max_connections),
      .idle_timeout = cli::timeout_seconds(idle_s),
      .first_byte_timeout = cli::timeout_seconds(first_byte_s),
  };
  if (!listen) cli::usage_error(usage, "--listen is required");

  try {
    // Block the signals before any thread starts, so every thread inherits the mask.
    rn::io_context signal_ctx;
    rn::signal_set signals(signal_ctx, {SIGINT, SIGTERM});
    std::optional<rn::endpoint> at = cli::listen_address(signal_ctx, *listen);
    if (!at) return 1;

    const rn::threaded_server_options threaded{
        .threads = static_cast<unsigned>(threads), .pin_threads = pin_threads, .listen = {.backlog = 4096}, .server = options};
    auto srv = rn::threaded_server<decltype(&make_echo)>::start(*at, &make_echo, threaded);
    if (!srv) {
      std::fprintf(stderr, "error: cannot listen on %s: %s\n", at->to_string().c_str(),
                   srv.error().message().c_str());
      return 1;
    }
    std::printf("listening on %s\n", srv->local_endpoint().to_string().c_str());
    std::fflush(stdout);

    const auto sig = rn::sync_wait(signal_ctx, signals.wait());
    // Only SIGINT or SIGTERM asks for a shutdown; a failed wait is an error, reported as one
    // after the same graceful shutdown.
    if (!sig) std::fprintf(stderr, "error: waiting for signals: %s\n", sig.error().message().c_str());
    const auto grace = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(grace_s));
    const rn::shutdown_report total = srv->shutdown(grace);
    if (!sig) return 1;
    const rn::connection_counters c = srv->counters();
    std::fprintf(stderr, "ringnet-echo: signal %d; shutdown: %zu finished, %zu reset, %zu errors; ",
                 *sig, total.finished, total.aborted, total.errors);
    cli::print_connections(stderr, c);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
