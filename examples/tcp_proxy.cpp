// ringnet-proxy: a TCP proxy; every accepted connection is relayed to one upstream.
//
//   ringnet-proxy --listen HOST:PORT --upstream HOST:PORT [--splice|--copy] [--idle-timeout S]
//                 [--grace S] [--buffer BYTES] [--max-connections N] [--first-byte-timeout S]
//                 [--dns-server HOST:PORT]...
//
// Half-close is forwarded both ways (a client that sends its request and shuts down its write side
// still gets the whole answer); a reset on either side resets the other; an upstream that refuses
// or does not answer within 10 s resets the client. An upstream given by name is looked up for a
// new connection once the last answer's TTL has passed, and its addresses raced (Happy Eyeballs);
// a failed lookup resets the client too. --idle-timeout 0 disables the idle timeout.
// SIGINT/SIGTERM: stop accepting, let open connections finish within the grace period, reset the
// rest, exit 0. Port 0 picks a free port; the first line of stdout says which.
#include <ringnet/ringnet.hpp>

#if RINGNET_EXAMPLES_RESOLVER
#include <ringnet/connect_by_name.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"

namespace rn = ringnet;
using namespace std::chrono_literals;

namespace {

constexpr const char* usage =
    "ringnet-proxy --listen HOST:PORT --upstream HOST:PORT [--splice|--copy] [--idle-timeout S] "
    "[--grace S] [--buffer BYTES] [--max-connections N] [--first-byte-timeout S] [--dns-server HOST:PORT]";
constexpr const char* help =
    "usage: ringnet-proxy --listen HOST:PORT --upstream HOST:PORT [options]\n"
    "\n"
    "Relays every accepted connection to the upstream. Half-close is forwarded both ways; a reset\n"
    "on either side resets the other; an upstream that refuses or does not answer within 10 s\n"
    "resets the client. SIGINT/SIGTERM: stops accepting, lets open connections finish within the\n"
    "grace period, resets the rest, prints its counters to stderr and exits 0.\n"
    "\n"
    "An upstream given by name (builds with c-ares) is looked up, A and AAAA, for a new connection\n"
    "unless the last answer is still within its TTL; the addresses are raced IPv6 first, a new\n"
    "attempt every 250 ms (Happy Eyeballs). A failed lookup (5 s at most) or connection resets the\n"
    "client and is reported on stderr; the proxy keeps serving.\n"
    "\n"
    "options:\n"
    "  --listen HOST:PORT        address to listen on (required; IPv6 as [::1]:PORT). Port 0 picks\n"
    "                            a free port; the first line on stdout is \"listening on HOST:PORT\".\n"
    "                            A host name is looked up once at start and its first address used\n"
    "  --upstream HOST:PORT      where each connection is relayed to (required); a host name is\n"
    "                            looked up as described above\n"
    "  --dns-server HOST:PORT    a DNS server (numeric address) for the lookups, instead of those of\n"
    "                            /etc/resolv.conf; repeat it for more (default: none)\n"
    "  --copy                    relay through a buffer in user space (the default)\n"
    "  --splice                  relay through a pipe with splice(2), no copy to user space\n"
    "  --idle-timeout SECONDS    reset a connection when no byte moved either way for this long,\n"
    "                            0 disables it, up to 1e7 (default 600)\n"
    "  --grace SECONDS           shutdown grace period, 0..86400 (default 5)\n"
    "  --buffer BYTES            buffer (copy) or pipe (splice) size per direction, 1..2^30\n"
    "                            (default 1048576)\n"
    "  --max-connections N       relay at most N client connections at once; the rest wait in the\n"
    "                            listen backlog, 0..1e9, 0 = no limit (default 0)\n"
    "  --first-byte-timeout SECONDS\n"
    "                            reset a client connection (and its upstream) that sent nothing\n"
    "                            within this long of being accepted, 0..1e7, 0 = never (default 0)\n"
    "  -h, --help                this text\n"
    "  --version                 the version of the tool and of the liburing headers it was built with\n"
    "\n"
    "exit status: 0 after a graceful shutdown or --help/--version, 1 on a runtime error (the\n"
    "address cannot be bound or looked up, ...), 2 on bad arguments (message on stderr).\n";

struct tally {
  std::size_t relays = 0, clean = 0, reset = 0, timed_out = 0, stopped = 0, failed = 0;
  std::size_t upstream_unreachable = 0, resolve_failed = 0;
  std::uint64_t bytes_up = 0, bytes_down = 0;

  void count(const rn::relay_result& r) noexcept {
    ++relays;
    bytes_up += r.a_to_b.bytes;
    bytes_down += r.b_to_a.bytes;
    const auto any = [&](auto... ends) {
      return ((r.a_to_b.end == ends || r.b_to_a.end == ends) || ...);
    };
    if (r.clean()) ++clean;
    else if (any(rn::relay_end::reset)) ++reset;
    else if (any(rn::relay_end::idle_timeout, rn::relay_end::half_close_timeout)) ++timed_out;
    else if (any(rn::relay_end::canceled)) ++stopped;
    else ++failed;
  }
};

#if RINGNET_EXAMPLES_RESOLVER
// A named upstream's addresses (IPv6 first), as the last connection by name found them, kept for
// the answer's TTL. One per proxy, used on the ring's thread only, so without a lock. There is no
// single-flight: connections that miss at the same time (when the TTL has just passed) each look
// the name up, and the last answer stays.
struct upstream_cache {
  const cli::host_port* upstream;
  rn::resolve_options lookup;
  std::vector<rn::endpoint> addresses{};
  std::chrono::steady_clock::time_point fetched{};
  std::chrono::seconds ttl{0};  // 0: nothing kept

  [[nodiscard]] bool fresh() const noexcept {
    // Whole seconds compared with whole seconds: resolve_result::forever does not fit in ns.
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - fetched) < ttl;
  }
  void keep(const rn::connect_result& r) {
    if (r.resolved().empty()) return;
    addresses = r.resolved();
    fetched = std::chrono::steady_clock::now();
    ttl = r.ttl();
  }
};
#endif

// The server's connection handler. Generic in the stop token, which asks it to finish: the relay
// then gives the connection stop_grace (the shutdown grace period) to end by itself.
struct proxy {
  const cli::host_port* upstream;
#if RINGNET_EXAMPLES_RESOLVER
  upstream_cache* named;  // looks up an upstream that is not numeric
#endif
  rn::relay_options options;
  tally* counts;

  template <class Token>
  rn::task<rn::close_outcome> operator()(rn::stream& client, Token finish) const {
    auto up = co_await connect_upstream(client.context(), finish);
    if (!up) {
      (void)co_await client.abort();  // the client sees the failure as a reset, not as an empty answer
      co_return rn::close_outcome::error;
    }
    const rn::relay_result r = co_await rn::relay(client, *up, options, finish);
    counts->count(r);
    co_return r.outcome();
  }

  // A numeric upstream is connected to directly; a named one by a race over its cached addresses
  // or, when they are not fresh, by name (Happy Eyeballs: AAAA and A looked up concurrently, A
  // waiting at most 50 ms for AAAA), whose answer the cache keeps. A failure is counted (a failed
  // lookup apart) and reported with the upstream's name.
  template <class Token>
  rn::task<rn::result<rn::stream>> connect_upstream(rn::io_context& ctx, Token finish) const {
#if RINGNET_EXAMPLES_RESOLVER
    if (!upstream->numeric) {
      const rn::happy_eyeballs_options how{.timeout = 10s, .attempt_delay = 250ms, .nodelay = true,
                                           .lookup = named->lookup};
      const bool cached = named->fresh();
      rn::connect_result up(std::make_error_code(std::errc::operation_canceled), {}, {});
      if (cached) {
        up = co_await rn::connect_any(ctx, named->addresses, how, finish);
      } else {
        up = co_await rn::connect(ctx, upstream->host, upstream->port, how, finish);
        named->keep(up);
      }
      if (!up) {
        const bool lookup_failed = up.error().category() == rn::resolve_category();
        ++(lookup_failed ? counts->resolve_failed : counts->upstream_unreachable);
        std::fprintf(stderr, "ringnet-proxy: upstream %s: %s\n", upstream->text.c_str(), up.what().c_str());
      }
      co_return std::move(up);
    }
#endif
    auto up = co_await rn::connect(ctx, *upstream->numeric, {.timeout = 10s, .nodelay = true}, finish);
    if (!up) ++counts->upstream_unreachable;
    co_return up;
  }
};

std::chrono::nanoseconds seconds(double s) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<cli::host_port> listen, upstream;
  std::vector<rn::endpoint> dns_servers;
  double grace_s = 5, idle_s = 600, buffer = 1 << 20, max_connections = 0, first_byte_s = 0;
  rn::relay_path path = rn::relay_path::copy;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (cli::help_or_version(arg, "ringnet-proxy", help)) return 0;
    if (arg == "--splice") path = rn::relay_path::splice;
    else if (arg == "--copy") path = rn::relay_path::copy;
    else if (auto l = cli::option(argc, argv, i, "--listen", usage)) listen = cli::split_host_port(*l, usage);
    else if (auto u = cli::option(argc, argv, i, "--upstream", usage)) upstream = cli::split_host_port(*u, usage);
    else if (auto d = cli::option(argc, argv, i, "--dns-server", usage)) dns_servers.push_back(cli::endpoint(*d, usage));
    else if (auto g = cli::option(argc, argv, i, "--grace", usage)) grace_s = cli::number(*g, usage, 0, 86400);
    else if (auto t = cli::option(argc, argv, i, "--idle-timeout", usage)) idle_s = cli::number(*t, usage, 0, 1e7);
    else if (auto b = cli::option(argc, argv, i, "--buffer", usage)) buffer = cli::number(*b, usage, 1, 1 << 30, true);
    else if (auto c = cli::option(argc, argv, i, "--max-connections", usage)) max_connections = cli::number(*c, usage, 0, 1e9, true);
    else if (auto f = cli::option(argc, argv, i, "--first-byte-timeout", usage)) first_byte_s = cli::number(*f, usage, 0, 1e7);
    else cli::usage_error(usage, "unknown argument", argv[i]);
  }
  if (!listen) cli::usage_error(usage, "--listen is required");
  if (!upstream) cli::usage_error(usage, "--upstream is required");
#if !RINGNET_EXAMPLES_RESOLVER
  if (!dns_servers.empty()) cli::usage_error(usage, "--dns-server needs the resolver (c-ares)");
#endif

  try {
    rn::io_context ctx;
    rn::signal_set signals(ctx, {SIGINT, SIGTERM});
    const std::optional<rn::endpoint> at = cli::listen_address(ctx, *listen, dns_servers);
    if (!at) return 1;
    auto l = rn::listener::bind(ctx, *at, {.backlog = 4096});
    if (!l) {
      std::fprintf(stderr, "error: cannot listen on %s: %s\n", at->to_string().c_str(),
                   l.error().message().c_str());
      return 1;
    }
    std::printf("listening on %s\n", l->local_endpoint()->to_string().c_str());
    std::fflush(stdout);

    const auto grace = seconds(grace_s);
    tally counts;
    rn::relay_options options{
        .path = path,
        .buffer_size = static_cast<std::size_t>(buffer),
        .idle_timeout = cli::timeout_seconds(idle_s),
        .stop_grace = grace,
    };
#if RINGNET_EXAMPLES_RESOLVER
    upstream_cache named{.upstream = &*upstream, .lookup = {.servers = dns_servers}};
    const proxy handler{&*upstream, &named, options, &counts};
#else
    const proxy handler{&*upstream, options, &counts};
#endif
    rn::server srv(ctx, std::move(*l), handler,
                   {.max_connections = static_cast<std::size_t>(max_connections),
                    .first_byte_timeout = cli::timeout_seconds(first_byte_s)});
    // Only SIGINT or SIGTERM asks for a shutdown; a failed wait is an error, reported as one
    // after the same graceful shutdown.
    auto body = [&]() -> rn::task<std::pair<rn::result<int>, rn::shutdown_report>> {
      rn::spawn(ctx, srv.run());
      const auto sig = co_await signals.wait();
      if (!sig) std::fprintf(stderr, "error: waiting for signals: %s\n", sig.error().message().c_str());
      co_return std::pair{sig, co_await srv.shutdown(grace)};
    };
    const auto [sig, report] = rn::sync_wait(ctx, body());
    if (!sig) return 1;
    std::fprintf(stderr,
                 "ringnet-proxy: signal %d; shutdown in %lld ms: %zu finished, %zu reset, %zu errors; "
                 "relays: %zu, %zu clean, %zu reset, %zu timed out, %zu stopped, %zu failed; "
                 "%zu upstream unreachable, %zu resolve failed; %llu bytes up, %llu bytes down; ",
                 *sig, static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(report.elapsed).count()),
                 report.finished, report.aborted, report.errors, counts.relays, counts.clean,
                 counts.reset, counts.timed_out, counts.stopped, counts.failed,
                 counts.upstream_unreachable, counts.resolve_failed, static_cast<unsigned long long>(counts.bytes_up),
                 static_cast<unsigned long long>(counts.bytes_down));
    cli::print_connections(stderr, srv.counters());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
