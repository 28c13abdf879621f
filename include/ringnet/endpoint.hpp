// IPv4 / IPv6 endpoints: parse "127.0.0.1:8080" and "[::1]:8080", format them back.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/error.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>

RINGNET_BEGIN_NAMESPACE

/// Why an endpoint string was rejected.
enum class endpoint_errc {
  empty = 1,
  missing_port,        // no ":PORT"
  bad_port,            // not 1-5 digits, or above 65535
  bad_address,         // not a numeric IPv4 / IPv6 address
  missing_bracket,     // "[::1" or an IPv6 address without brackets
  too_long,
};

inline const std::error_category& endpoint_category() noexcept {
  struct category final : std::error_category {
    const char* name() const noexcept override { return "ringnet.endpoint"; }
    std::string message(int c) const override {
      switch (static_cast<endpoint_errc>(c)) {
        case endpoint_errc::empty: return "empty endpoint";
        case endpoint_errc::missing_port: return "endpoint has no :PORT";
        case endpoint_errc::bad_port: return "port is not a number in 0..65535";
        case endpoint_errc::bad_address: return "not a numeric IPv4 or IPv6 address";
        case endpoint_errc::missing_bracket: return "IPv6 address must be written [ADDR]:PORT";
        case endpoint_errc::too_long: return "endpoint string too long";
      }
      return "unknown endpoint error";
    }
    std::error_condition default_error_condition(int) const noexcept override {
      return std::errc::invalid_argument;
    }
  };
  static const category instance;
  return instance;
}
inline std::error_code make_error_code(endpoint_errc e) noexcept {
  return {static_cast<int>(e), endpoint_category()};
}

/// An IPv4 or IPv6 address with a port, stored as the sockaddr the kernel takes.
class endpoint {
 public:
  endpoint() noexcept { std::memset(&storage_, 0, sizeof storage_); }

  static endpoint v4(std::uint32_t host_order_addr, std::uint16_t port) noexcept {
    endpoint e;
    e.storage_.v4.sin_family = AF_INET;
    e.storage_.v4.sin_addr.s_addr = htonl(host_order_addr);
    e.storage_.v4.sin_port = htons(port);
    return e;
  }
  static endpoint loopback_v4(std::uint16_t port) noexcept { return v4(INADDR_LOOPBACK, port); }
  static endpoint loopback_v6(std::uint16_t port) noexcept {
    endpoint e;
    e.storage_.v6.sin6_family = AF_INET6;
    e.storage_.v6.sin6_addr = in6addr_loopback;
    e.storage_.v6.sin6_port = htons(port);
    return e;
  }

  /// Parses "A.B.C.D:PORT" or "[IPV6]:PORT". Numeric addresses only (no name resolution).
  static result<endpoint> parse(std::string_view text) noexcept {
    if (text.empty()) return make_error_code(endpoint_errc::empty);
    if (text.size() > 64) return make_error_code(endpoint_errc::too_long);
    // inet_pton reads a C string: an embedded NUL would end the address early ("1.2.3.4\0junk").
    if (text.find('\0') != std::string_view::npos) return make_error_code(endpoint_errc::bad_address);
    std::string_view host, port;
    const bool v6 = text.front() == '[';
    if (v6) {
      const auto close = text.find(']');
      if (close == std::string_view::npos) return make_error_code(endpoint_errc::missing_bracket);
      host = text.substr(1, close - 1);
      const std::string_view rest = text.substr(close + 1);
      if (rest.empty() || rest.front() != ':') return make_error_code(endpoint_errc::missing_port);
      port = rest.substr(1);
    } else {
      const auto colon = text.rfind(':');
      if (colon == std::string_view::npos) return make_error_code(endpoint_errc::missing_port);
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
      if (host.find(':') != std::string_view::npos)
        return make_error_code(endpoint_errc::missing_bracket);
    }
    std::uint16_t port_number = 0;
    if (port.empty() || port.size() > 5) return make_error_code(endpoint_errc::bad_port);
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc{} || end != port.data() + port.size() || value > 65535)
      return make_error_code(endpoint_errc::bad_port);
    port_number = static_cast<std::uint16_t>(value);

    char buf[INET6_ADDRSTRLEN] = {};
    if (host.empty() || host.size() >= sizeof buf) return make_error_code(endpoint_errc::bad_address);
    std::memcpy(buf, host.data(), host.size());
    endpoint e;
    if (v6) {
      e.storage_.v6.sin6_family = AF_INET6;
      e.storage_.v6.sin6_port = htons(port_number);
      if (::inet_pton(AF_INET6, buf, &e.storage_.v6.sin6_addr) != 1)
        return make_error_code(endpoint_errc::bad_address);
    } else {
      e.storage_.v4.sin_family = AF_INET;
      e.storage_.v4.sin_port = htons(port_number);
      if (::inet_pton(AF_INET, buf, &e.storage_.v4.sin_addr) != 1)
        return make_error_code(endpoint_errc::bad_address);
    }
    return e;
  }

  /// From a kernel sockaddr (getsockname, accept); invalid_argument for other families.
  static result<endpoint> from_sockaddr(const sockaddr* sa, socklen_t len) noexcept {
    endpoint e;
    if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
      std::memcpy(&e.storage_.v4, sa, sizeof(sockaddr_in));
    } else if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
      std::memcpy(&e.storage_.v6, sa, sizeof(sockaddr_in6));
    } else {
      return std::make_error_code(std::errc::address_family_not_supported);
    }
    return e;
  }

  [[nodiscard]] int family() const noexcept { return storage_.any.sa_family; }
  [[nodiscard]] bool is_v6() const noexcept { return family() == AF_INET6; }
  [[nodiscard]] std::uint16_t port() const noexcept {
    return ntohs(is_v6() ? storage_.v6.sin6_port : storage_.v4.sin_port);
  }
  void port(std::uint16_t p) noexcept {
    (is_v6() ? storage_.v6.sin6_port : storage_.v4.sin_port) = htons(p);
  }
  [[nodiscard]] const sockaddr* data() const noexcept { return &storage_.any; }
  [[nodiscard]] socklen_t size() const noexcept {
    return is_v6() ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  }

  /// "127.0.0.1:8080" / "[::1]:8080"; parse(to_string()) round-trips.
  [[nodiscard]] std::string to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (family() != AF_INET && family() != AF_INET6) return "(unspecified)";
    const void* addr = is_v6() ? static_cast<const void*>(&storage_.v6.sin6_addr)
                               : static_cast<const void*>(&storage_.v4.sin_addr);
    ::inet_ntop(family(), addr, buf, sizeof buf);
    char out[INET6_ADDRSTRLEN + 16];
    const int n = std::snprintf(out, sizeof out, is_v6() ? "[%s]:%u" : "%s:%u", buf, unsigned{port()});
    return std::string(out, static_cast<std::size_t>(n));
  }

  friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
  }

 private:
  union {
    sockaddr any;
    sockaddr_in v4;
    sockaddr_in6 v6;
  } storage_;
};

RINGNET_END_NAMESPACE

template <>
struct std::is_error_code_enum<RINGNET_NAMESPACE::endpoint_errc> : std::true_type {};
