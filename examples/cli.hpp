// Small command-line helpers shared by the examples.
//
// RINGNET_EXAMPLES_RESOLVER (1 when meson found c-ares) lets HOST:PORT arguments name a host;
// at 0 they take numeric addresses only.
#pragma once

#include <ringnet/endpoint.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>  // no_timeout
#include <ringnet/server.hpp>     // connection_counters
#if RINGNET_EXAMPLES_RESOLVER
#include <ringnet/resolve.hpp>
#include <ringnet/spawn.hpp>  // sync_wait
#endif

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

// "error: WHAT 'SUBJECT': DETAIL" and the usage line, exit status 2.
[[noreturn]] inline void usage_error(const char* usage, std::string_view what,
                                     std::string_view subject = {}, std::string_view detail = {}) {
  std::fprintf(stderr, "error: %.*s", static_cast<int>(what.size()), what.data());
  if (!subject.empty()) std::fprintf(stderr, " '%.*s'", static_cast<int>(subject.size()), subject.data());
  if (!detail.empty()) std::fprintf(stderr, ": %.*s", static_cast<int>(detail.size()), detail.data());
  std::fprintf(stderr, "\nusage: %s\n(--help lists every option)\n", usage);
  std::exit(2);
}

// -h/--help prints `help` (usage and every option with its default) to stdout, --version the
// tool's and the library's version: either way true, and the caller exits 0.
inline bool help_or_version(std::string_view arg, const char* tool, const char* help) {
  if (arg == "-h" || arg == "--help") {
    std::fputs(help, stdout);
    return true;
  }
  if (arg == "--version") {
    std::printf("%s (ringnet) %d.%d.%d, liburing %d.%d headers\n", tool, RINGNET_VERSION_MAJOR,
                RINGNET_VERSION_MINOR, RINGNET_VERSION_PATCH, RINGNET_LIBURING_VERSION / 100,
                RINGNET_LIBURING_VERSION % 100);
    return true;
  }
  return false;
}

// "--name value" (also "--name=value"); advances i past the value.
inline std::optional<std::string_view> option(int argc, char** argv, int& i, std::string_view name,
                                              const char* usage) {
  const std::string_view arg = argv[i];
  if (arg.substr(0, name.size()) != name) return std::nullopt;
  if (arg.size() == name.size()) {
    if (i + 1 >= argc) usage_error(usage, "missing value for", name);
    return std::string_view(argv[++i]);
  }
  if (arg[name.size()] == '=') return arg.substr(name.size() + 1);
  return std::nullopt;
}

inline ringnet::endpoint endpoint(std::string_view text, const char* usage) {
  auto ep = ringnet::endpoint::parse(text);
  if (!ep) usage_error(usage, "bad address", text, ep.error().message());
  return *ep;
}

// A HOST:PORT argument: the host as given (a name, an IPv4 address, [an IPv6 address]), the
// port, and the endpoint when the host is numeric (no lookup needed).
struct host_port {
  std::string text;
  std::string host;
  std::uint16_t port = 0;
  std::optional<ringnet::endpoint> numeric;
};

// "NAME:PORT", "IPV4:PORT" or "[IPV6]:PORT", PORT in 0..65535; anything else exits 2. Without
// the resolver only the numeric forms.
inline host_port split_host_port(std::string_view text, const char* usage) {
  auto ep = ringnet::endpoint::parse(text);
  const std::size_t colon = text.rfind(':');
  if (ep) return {std::string(text), std::string(text.substr(0, colon)), ep->port(), *ep};
#if !RINGNET_EXAMPLES_RESOLVER
  usage_error(usage, "bad address", text, ep.error().message() + "; names need the resolver (c-ares)");
#else
  if (colon == std::string_view::npos) usage_error(usage, "bad address", text, "no :PORT");
  const std::string_view host = text.substr(0, colon), port = text.substr(colon + 1);
  if (host.empty()) usage_error(usage, "bad address", text, "no host before :PORT");
  // A bracketed host is an IPv6 address that did not parse; a bare colon, one without brackets.
  if (host.find_first_of("[]:") != std::string_view::npos) usage_error(usage, "bad address", text, ep.error().message());
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value > 65535)
    usage_error(usage, "bad address", text, "the port is not a number in 0..65535");
  return {std::string(text), std::string(host), static_cast<std::uint16_t>(value), std::nullopt};
#endif
}

// Where to listen: the numeric address, or the first address of the name, looked up once on
// `ctx`. A failed lookup is nullopt, after its message (which names the host) on stderr.
inline std::optional<ringnet::endpoint> listen_address([[maybe_unused]] ringnet::io_context& ctx, const host_port& at,
                                                       [[maybe_unused]] const std::vector<ringnet::endpoint>& dns_servers = {}) {
#if RINGNET_EXAMPLES_RESOLVER
  if (!at.numeric) {
    const ringnet::resolve_result r =
        ringnet::sync_wait(ctx, ringnet::resolve(ctx, at.host, at.port, {.servers = dns_servers}));
    if (!r) {
      std::fprintf(stderr, "error: %s\n", r.what().c_str());
      return std::nullopt;
    }
    return r->front();
  }
#endif
  return at.numeric;
}

// A number in [min, max] (a whole one if `whole`); "nan" and "inf" are refused.
inline double number(std::string_view text, const char* usage, double min, double max, bool whole = false) {
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(v) || !(v >= min && v <= max) ||
      (whole && v != std::floor(v)))
    usage_error(usage, whole ? "bad whole number" : "bad number", text);
  return v;
}

// A duration in seconds; 0 means none (no_timeout).
inline std::chrono::nanoseconds timeout_seconds(double s) {
  if (s <= 0) return ringnet::no_timeout;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(s));
}

// How the server's connections ended, as both tools print it at exit. Every accepted connection
// is counted in exactly one of the fields after "accepted".
inline void print_connections(std::FILE* to, const ringnet::connection_counters& c) {
  std::fprintf(to,
               "connections: %zu accepted, %zu clean, %zu peer reset, %zu drain timeout, "
               "%zu drain limit, %zu reset by us, %zu idle timeout, %zu first byte timeout, "
               "%zu closed by handler; %zu at most at once, %zu accept errors\n",
               c.accepted, c.clean, c.peer_reset, c.drain_timeout, c.drain_limit, c.we_reset,
               c.idle_timeout, c.first_byte_timeout, c.closed_by_handler, c.max_active,
               c.accept_errors);
}

}  // namespace cli
