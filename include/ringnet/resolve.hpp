// Name resolution on the ring: resolve() looks a host name up with c-ares, whose sockets and
// deadlines the io_context's ring drives (no thread per lookup, nothing blocks the ring), and
// answers numeric addresses itself.
//
// Optional: it needs c-ares (Debian: libc-ares-dev; link -lcares, or use the meson dependency
// 'ringnet-resolve' / pkg-config ringnet-resolve). No other ringnet header includes it except
// <ringnet/connect_by_name.hpp>.
//
// Each call opens its own c-ares channel: a channel is not thread-safe, and one per lookup keeps
// nothing shared between calls, contexts or threads. Opening one reads /etc/resolv.conf (and
// a lookup /etc/hosts) with plain file reads, as every stub resolver does.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/dns_channel.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>

#include <ares.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

RINGNET_BEGIN_NAMESPACE

/// Why a lookup found no address.
enum class resolve_errc {
  not_found = 1,   // the name does not exist (NXDOMAIN)
  no_data,         // it exists, without an address of the family asked for
  timed_out,       // no answer in time (compares equal to std::errc::timed_out)
  server_failure,  // the server could not answer (ARES_ESERVFAIL; c-ares 1.18 reports a
                   // SERVFAIL answer to ares_getaddrinfo as refused instead)
  refused,         // the server refused the query (REFUSED) or answered SERVFAIL, or could not
                   // be reached
  bad_name,        // not a host name (compares equal to std::errc::invalid_argument)
  canceled,        // stopped (compares equal to std::errc::operation_canceled)
  out_of_memory,   // compares equal to std::errc::not_enough_memory
  other,           // anything else c-ares reports (a malformed answer, an unreadable file)
};

inline const std::error_category& resolve_category() noexcept {
  struct category final : std::error_category {
    const char* name() const noexcept override { return "ringnet.resolve"; }
    std::string message(int c) const override {
      switch (static_cast<resolve_errc>(c)) {
        case resolve_errc::not_found: return "host not found";
        case resolve_errc::no_data: return "host has no address of the requested family";
        case resolve_errc::timed_out: return "DNS lookup timed out";
        case resolve_errc::server_failure: return "DNS server failure";
        case resolve_errc::refused: return "DNS server refused the query or could not be reached";
        case resolve_errc::bad_name: return "not a valid host name";
        case resolve_errc::canceled: return "DNS lookup canceled";
        case resolve_errc::out_of_memory: return "out of memory";
        case resolve_errc::other: return "DNS lookup failed";
      }
      return "unknown resolve error";
    }
    std::error_condition default_error_condition(int c) const noexcept override {
      switch (static_cast<resolve_errc>(c)) {
        case resolve_errc::timed_out: return std::errc::timed_out;
        case resolve_errc::bad_name: return std::errc::invalid_argument;
        case resolve_errc::canceled: return std::errc::operation_canceled;
        case resolve_errc::out_of_memory: return std::errc::not_enough_memory;
        default: return {c, *this};
      }
    }
  };
  static const category instance;
  return instance;
}
inline std::error_code make_error_code(resolve_errc e) noexcept {
  return {static_cast<int>(e), resolve_category()};
}

/// Which addresses a lookup asks for.
enum class address_family { any, v4, v6 };

struct resolve_options {
  /// DNS servers to ask instead of those in /etc/resolv.conf (port 0 means 53).
  std::vector<endpoint> servers{};
  address_family family = address_family::any;
  /// Bounds the whole lookup: timed_out past it. c-ares asks the servers in rounds whose wait
  /// doubles each time; the first round's wait per server is what lets `tries` rounds fit in
  /// the timeout (at most 5 s, the usual resolv.conf default).
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
  /// How many times each server is asked (1-8).
  int tries = 2;
};

/// What resolve() returns: a result<std::vector<endpoint>> (every address, ports set, in
/// c-ares's order of preference) which, on failure, also says in words what failed for which
/// host: an error_code cannot carry the host's name. On success it also says how long the
/// answer may be reused (ttl()).
class resolve_result : public result<std::vector<endpoint>> {
 public:
  /// The ttl() of an answer that never expires: a numeric host, localhost.
  static constexpr std::chrono::seconds forever = std::chrono::seconds::max();

  resolve_result(std::vector<endpoint> found, std::chrono::seconds ttl = forever) noexcept  // NOLINT: implicit like result's
      : result(std::move(found)), ttl_(ttl) {}
  resolve_result(std::error_code ec, std::string what) noexcept
      : result(ec), what_(std::move(what)) {}
  /// On failure, e.g. `resolving "nx.example": host not found`; empty on success.
  [[nodiscard]] const std::string& what() const noexcept { return what_; }
  /// How long the addresses may be reused: the smallest TTL of the DNS records they came from
  /// (the address records and any CNAME leading to them); 0 for an entry of /etc/hosts (c-ares
  /// gives those none) and on failure; `forever` for a numeric host and localhost. Seconds, as
  /// DNS counts them; past it, ask again.
  [[nodiscard]] std::chrono::seconds ttl() const noexcept { return ttl_; }

 private:
  std::chrono::seconds ttl_{0};
  std::string what_;
};

namespace detail {

// Until `fd` is readable: here an epoll set with a ready socket in it.
struct poll_readable_op {
  int fd;
  void prepare(io_uring_sqe* sqe) const noexcept { io_uring_prep_poll_add(sqe, fd, POLLIN); }
  static result<void> complete(int res, std::uint32_t) noexcept { return void_result(res < 0 ? res : 0); }
};

inline std::error_code resolve_error_of(int ares_status) noexcept {
  switch (ares_status) {
    case ARES_ENOTFOUND: return make_error_code(resolve_errc::not_found);
    case ARES_ENODATA: return make_error_code(resolve_errc::no_data);
    case ARES_ETIMEOUT: return make_error_code(resolve_errc::timed_out);
    case ARES_ESERVFAIL: return make_error_code(resolve_errc::server_failure);
    case ARES_EREFUSED:
    case ARES_ECONNREFUSED: return make_error_code(resolve_errc::refused);
    case ARES_EBADNAME:
    case ARES_EBADSTR:
    case ARES_ENONAME: return make_error_code(resolve_errc::bad_name);
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION: return make_error_code(resolve_errc::canceled);
    case ARES_ENOMEM: return make_error_code(resolve_errc::out_of_memory);
    default: return make_error_code(resolve_errc::other);
  }
}

// Text as it may be shown: bytes outside printable ASCII (a NUL, a newline) as \xNN.
inline std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c >= ' ' && c <= '~') {
      out += c;
    } else {
      static constexpr char hex[] = "0123456789abcdef";
      const auto b = static_cast<unsigned char>(c);
      out += "\\x";
      out += hex[b >> 4];
      out += hex[b & 15];
    }
  }
  return out;
}

inline std::string describe_lookup_failure(std::string_view host, std::error_code ec,
                                           const char* detail = nullptr) {
  std::string s = "resolving \"";
  s += printable(host);
  s += "\": ";
  s += ec.message();
  if (detail) {
    s += ": ";
    s += detail;
  }
  return s;
}

// A numeric IPv4 address, or an IPv6 one bare or in brackets: no lookup needed.
inline std::optional<endpoint> numeric_host(std::string_view host, std::uint16_t port) {
  std::string text;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    text.append(host);
  } else if (host.find(':') != std::string_view::npos) {
    text.append("[").append(host).append("]");
  } else {
    text.append(host);
  }
  text.append(":").append(std::to_string(port));
  result<endpoint> e = endpoint::parse(text);
  if (!e) return std::nullopt;
  return *e;
}

// What DNS can be asked about: 1-253 characters (254 with the root's trailing dot) in labels of
// 1-63 printable ASCII characters, no brackets or colons (those are left to numeric_host), and
// a last label that is not all digits (a dotted number that is no IPv4 address, such as 127.1,
// names nothing: top-level domains are never numeric).
inline bool valid_host_name(std::string_view host) noexcept {
  if (host.empty() || host.size() > 254 || (host.size() == 254 && host.back() != '.')) return false;
  if (host.back() == '.') host.remove_suffix(1);
  std::size_t label = 0;
  bool digits_only = true;
  for (const char c : host) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      digits_only = true;
      continue;
    }
    if (c <= ' ' || c > '~' || c == '[' || c == ']' || c == ':' || ++label > 63) return false;
    digits_only = digits_only && c >= '0' && c <= '9';
  }
  return label > 0 && !digits_only;
}

// "localhost" (any case, with or without the root's dot) always means loopback (RFC 6761 §6.3),
// so it is answered here: c-ares before 1.19 leaks a copy of the name when /etc/hosts has no
// entry for it in the family asked for.
inline bool is_localhost(std::string_view host) noexcept {
  if (host.ends_with('.')) host.remove_suffix(1);
  constexpr std::string_view name = "localhost";
  return host.size() == name.size() && std::equal(host.begin(), host.end(), name.begin(), [](char a, char b) {
           return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
         });
}
// The loopback addresses of the families asked for, IPv6 first.
inline std::vector<endpoint> localhost_endpoints(address_family f, std::uint16_t port) {
  std::vector<endpoint> out;
  if (f != address_family::v4) out.push_back(endpoint::loopback_v6(port));
  if (f != address_family::v6) out.push_back(endpoint::loopback_v4(port));
  return out;
}

inline bool has_family(const endpoint& e, address_family f) noexcept {
  return f == address_family::any || (f == address_family::v4) == (e.family() == AF_INET);
}
inline int family_code(address_family f) noexcept {
  return f == address_family::v4 ? AF_INET : f == address_family::v6 ? AF_INET6 : AF_UNSPEC;
}

// The servers of resolve_options as c-ares takes them (a linked list over the vector).
inline std::vector<ares_addr_port_node> server_nodes(const std::vector<endpoint>& servers) {
  std::vector<ares_addr_port_node> nodes(servers.size());
  for (std::size_t i = 0; i < servers.size(); ++i) {
    const endpoint& e = servers[i];
    ares_addr_port_node& n = nodes[i];
    n.family = e.family();
    if (e.is_v6()) {
      const auto* sa = reinterpret_cast<const sockaddr_in6*>(e.data());
      std::memcpy(&n.addr.addr6, &sa->sin6_addr, sizeof sa->sin6_addr);
    } else {
      n.addr.addr4 = reinterpret_cast<const sockaddr_in*>(e.data())->sin_addr;
    }
    n.udp_port = n.tcp_port = e.port() == 0 ? 53 : e.port();
    n.next = i + 1 < nodes.size() ? &nodes[i + 1] : nullptr;
  }
  return nodes;
}

inline dns_channel::settings channel_settings(const resolve_options& o, std::vector<ares_addr_port_node>& servers) {
  const int tries = std::clamp(o.tries, 1, 8);
  const auto per_server = static_cast<long long>(std::max<std::size_t>(servers.size(), 1));
  const long long rounds = (1ll << tries) - 1;  // the waits double: 1 + 2 + 4 + ...
  const long long total_ms = std::chrono::duration_cast<std::chrono::milliseconds>(o.timeout).count();
  const long long first_ms = std::clamp(total_ms / (rounds * per_server), 1ll, 5000ll);
  return {static_cast<int>(first_ms), tries, servers.empty() ? nullptr : servers.data()};
}

// The answer to one ares_getaddrinfo: the addresses of one family (AF_UNSPEC: both), or why
// there are none.
struct dns_answer {
  int family = AF_UNSPEC;
  std::vector<endpoint> endpoints;
  std::error_code error;
  const char* detail = nullptr;  // c-ares's own words, for resolve_errc::other
  std::chrono::seconds ttl{0};   // the smallest TTL of the records behind `endpoints`
};

// The smallest TTL of an answer's address records and of the CNAMEs that led to them (a negative
// one, which c-ares passes on unchecked from the wire, as 0).
inline std::chrono::seconds smallest_ttl(const ares_addrinfo& ai) noexcept {
  int ttl = std::numeric_limits<int>::max();
  for (const ares_addrinfo_node* n = ai.nodes; n; n = n->ai_next) ttl = std::min(ttl, n->ai_ttl);
  for (const ares_addrinfo_cname* c = ai.cnames; c; c = c->next) ttl = std::min(ttl, c->ttl);
  return std::chrono::seconds(std::max(ttl, 0));
}

// One ares_getaddrinfo in flight; hands its answer to sink.answer(dns_answer&&) (noexcept).
template <class Sink>
struct dns_query {
  Sink* sink;
  int family;
  std::uint16_t port;
  const std::error_code* ended_by;  // set when the lookups were stopped: then their answer
  bool done = false;

  static void on_done(void* arg, int status, int, ares_addrinfo* ai) noexcept {
    auto& q = *static_cast<dns_query*>(arg);
    // ARES_EDESTRUCTION: the channel went with the lookup pending, which happens only when the
    // frame running it is destroyed unfinished (its io_context went away): nobody listens.
    if (status == ARES_EDESTRUCTION) return;
    q.done = true;
    dns_answer a;
    a.family = q.family;
    if (*q.ended_by) {
      // Stopped or timed out: that is the answer, whatever c-ares says. (Cancelling an AF_UNSPEC
      // lookup whose A answer is in while AAAA is pending reports ARES_SUCCESS with the A records.)
      if (ai) ::ares_freeaddrinfo(ai);
      a.error = *q.ended_by;
    } else if (status == ARES_SUCCESS) {
      try {
        for (const ares_addrinfo_node* n = ai->nodes; n; n = n->ai_next) {
          result<endpoint> e = endpoint::from_sockaddr(n->ai_addr, n->ai_addrlen);
          if (!e) continue;
          e->port(q.port);
          if (std::find(a.endpoints.begin(), a.endpoints.end(), *e) == a.endpoints.end())
            a.endpoints.push_back(*e);
        }
        if (a.endpoints.empty()) a.error = make_error_code(resolve_errc::no_data);
        a.ttl = smallest_ttl(*ai);
      } catch (...) {  // bad_alloc: it must not unwind through c-ares
        a.endpoints.clear();
        a.error = make_error_code(resolve_errc::out_of_memory);
      }
      ::ares_freeaddrinfo(ai);
    } else {
      a.error = resolve_error_of(status);
      if (a.error == make_error_code(resolve_errc::other)) a.detail = ::ares_strerror(status);
    }
    q.sink->answer(std::move(a));
  }
};

// Looks `host` up once per entry of `families` (AF_INET, AF_INET6, AF_UNSPEC) on one channel,
// concurrently; sink.answer() gets each answer as it comes. A stop or the options' timeout
// ends every lookup still pending, with canceled or timed_out, before this returns.
template <class Sink, stoppable_token Token>
task<void> run_lookups(io_context& ctx, std::string host, std::uint16_t port, resolve_options options,
                       std::vector<int> families, Sink& sink, Token token) {
  std::vector<ares_addr_port_node> servers = server_nodes(options.servers);
  std::error_code ended_by;
  std::vector<dns_query<Sink>> queries;
  queries.reserve(families.size());  // c-ares holds their addresses
  for (int f : families) queries.push_back({&sink, f, port, &ended_by});
  dns_channel channel;  // after the queries: destroyed first, while they are alive
  if (const int st = channel.open(channel_settings(options, servers)); st != 0) {
    const std::error_code ec = st < 0 ? errno_code(-st) : resolve_error_of(st);
    for (dns_query<Sink>& q : queries)
      sink.answer({q.family, {}, ec, st > 0 ? ::ares_strerror(st) : nullptr});
    co_return;
  }
  for (dns_query<Sink>& q : queries) channel.lookup(host.c_str(), q.family, &dns_query<Sink>::on_done, &q);
  const auto deadline = deadline_after(options.timeout);
  const auto pending = [&] {
    return std::any_of(queries.begin(), queries.end(), [](const dns_query<Sink>& q) { return !q.done; });
  };
  while (pending()) {
    if (token.stop_requested()) {
      ended_by = make_error_code(resolve_errc::canceled);
      break;
    }
    const std::chrono::nanoseconds left = until(deadline);
    if (left.count() == 0) {
      ended_by = make_error_code(resolve_errc::timed_out);
      break;
    }
    // Readable sockets, c-ares's next deadline or ours: whichever comes first.
    (void)co_await operation<poll_readable_op, Token>(ctx, poll_readable_op{channel.epoll_fd()}, token,
                                                      std::min(left, channel.next_deadline()));
    if (!token.stop_requested()) channel.process();
  }
  if (ended_by) channel.cancel();
}

// One answer, or those of both families (IPv6 first): the addresses of each that has some, with
// the smaller TTL. A stop is the answer whatever came before it; otherwise a family that timed
// out or failed drops out if the other has addresses. With none, the error says the most:
// canceled, then anything but no_data (not_found, timed_out, ...), then no_data.
inline resolve_result merge_answers(const std::string& host, int count, dns_answer& first, dns_answer& second) {
  dns_answer* answers[2] = {&first, &second};
  std::vector<endpoint> found;
  std::chrono::seconds ttl = resolve_result::forever;
  const dns_answer* why = nullptr;
  for (int i = 0; i < count; ++i) {
    dns_answer& a = *answers[i];
    if (a.error == make_error_code(resolve_errc::canceled))
      return resolve_result(a.error, describe_lookup_failure(host, a.error));
    if (a.error) {
      if (!why || why->error == make_error_code(resolve_errc::no_data)) why = &a;
      continue;
    }
    found.insert(found.end(), a.endpoints.begin(), a.endpoints.end());
    ttl = std::min(ttl, a.ttl);
  }
  if (!found.empty()) return resolve_result(std::move(found), ttl);
  const std::error_code ec = why ? why->error : make_error_code(resolve_errc::no_data);
  return resolve_result(ec, describe_lookup_failure(host, ec, why ? why->detail : nullptr));
}

template <stoppable_token Token>
task<resolve_result> resolve_host(io_context& ctx, std::string host, std::uint16_t port,
                                  resolve_options options, Token token) {
  const auto fail = [&](resolve_errc e) {
    return resolve_result(make_error_code(e), describe_lookup_failure(host, make_error_code(e)));
  };
  if (token.stop_requested()) co_return fail(resolve_errc::canceled);
  if (std::optional<endpoint> e = numeric_host(host, port)) {
    if (!has_family(*e, options.family)) co_return fail(resolve_errc::no_data);
    co_return resolve_result(std::vector<endpoint>{*e});
  }
  if (is_localhost(host)) co_return resolve_result(localhost_endpoints(options.family, port));
  if (!valid_host_name(host)) co_return fail(resolve_errc::bad_name);
  // Both families are two lookups, not one AF_UNSPEC lookup: a server that drops one kind of
  // query (some drop AAAA) then costs that family only, and the other's addresses are still the
  // answer when the timeout ends the silent one.
  struct keep_answers {
    dns_answer got[2];  // IPv6, IPv4
    void answer(dns_answer&& a) noexcept { got[a.family == AF_INET ? 1 : 0] = std::move(a); }
  } sink;
  std::vector<int> families;  // named: GCC cannot keep a braced list's array across co_await
  if (options.family == address_family::any) families = {AF_INET6, AF_INET};
  else families = {family_code(options.family)};
  co_await run_lookups(ctx, host, port, options, std::move(families), sink, std::move(token));
  co_return merge_answers(host, options.family == address_family::any ? 2 : 1,
                          sink.got[options.family == address_family::v4 ? 1 : 0], sink.got[1]);
}

}  // namespace detail

/// The addresses of `host` (a name, or a numeric IPv4 / IPv6 address, bare or in brackets,
/// answered without any lookup), each with `port`. Names are looked up as the system's
/// resolver would (/etc/hosts, then the DNS servers of /etc/resolv.conf, or options.servers);
/// "localhost" is the loopback address of each family (::1 first), without any lookup. Both A and AAAA are asked for, concurrently, unless
/// options.family narrows it. Errors are resolve_errc codes; what() names the host.
/// A stop (from any thread) ends the lookup with canceled: the coroutine resumes once, after
/// c-ares let go of everything (its sockets are closed by then).
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<resolve_result> resolve(io_context& ctx, std::string_view host, std::uint16_t port,
                                           resolve_options options = {}, Token token = {}) {
  // Not a coroutine itself: the task is lazy, and the caller's string may be gone by its start.
  return detail::resolve_host(ctx, std::string(host), port, std::move(options), std::move(token));
}

RINGNET_END_NAMESPACE

template <>
struct std::is_error_code_enum<RINGNET_NAMESPACE::resolve_errc> : std::true_type {};
