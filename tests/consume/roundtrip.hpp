// A loopback round trip through whichever copy of ringnet the including translation unit sees
// (RINGNET_NAMESPACE, set by config.hpp: `ringnet` unless renamed for vendoring).
//
// One io_context; a listener on 127.0.0.1:0; rn::connect to it; the accepted side reads the
// client's bytes through a task<std::string> while the client sends them with send_all (both
// under when_all, driven by sync_wait); then the accepted side echoes them back and the client
// reads them with plain sync_wait'ed recv calls. Returns 0 if every byte arrived intact both
// ways, 1 otherwise, 77 if this kernel (or a seccomp filter) refuses io_uring.
//
// The function has internal linkage on purpose: in the two-copies test each TU compiles it
// against a different ringnet namespace, so an external-linkage definition would itself be an
// ODR violation of the consumer.
#pragma once

#include <ringnet/ringnet.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>

namespace {

namespace consume_rn = RINGNET_NAMESPACE;

[[maybe_unused]] int consume_fail(const char* who, const char* step, std::error_code ec) {
  std::fprintf(stderr, "FAIL %s: %s: %s\n", who, step, ec.message().c_str());
  return 1;
}

// Reads exactly n bytes (or fewer on EOF / error) from s.
[[maybe_unused]] consume_rn::task<std::string> consume_read_n(consume_rn::stream& s, std::size_t n) {
  std::string got;
  char buf[7];  // deliberately small: several recv completions per message
  while (got.size() < n) {
    auto r = co_await s.recv(consume_rn::buffer(buf), consume_rn::never_stop_token{},
                             std::chrono::seconds(10));
    if (!r || *r == 0) break;
    got.append(buf, *r);
  }
  co_return got;
}

[[maybe_unused]] int roundtrip(const char* who) {
  namespace rn = consume_rn;
  const std::string_view payload = "ringnet consume check: 0123456789 abcdefghijklmnopqrstuvwxyz";

  std::optional<rn::io_context> ctx;
  try {
    ctx.emplace();
  } catch (const std::system_error& e) {
    const int ev = e.code().value();
    if (e.code().category() == std::system_category() &&
        (ev == ENOSYS || ev == EPERM || ev == EACCES)) {
      std::printf("SKIP %s: io_uring unavailable: %s\n", who, e.what());
      return 77;
    }
    throw;
  }

  auto lst = rn::listener::bind(*ctx, rn::endpoint::loopback_v4(0));
  if (!lst) return consume_fail(who, "listener::bind", lst.error());
  auto at = lst->local_endpoint();
  if (!at) return consume_fail(who, "local_endpoint", at.error());
  if (at->port() == 0) return consume_fail(who, "local_endpoint port", {});

  rn::connect_options copts;
  copts.timeout = std::chrono::seconds(10);
  auto client = rn::sync_wait(*ctx, rn::connect(*ctx, *at, copts));
  if (!client) return consume_fail(who, "connect", client.error());
  auto server = rn::sync_wait(*ctx, lst->accept(rn::never_stop_token{}, std::chrono::seconds(10)));
  if (!server) return consume_fail(who, "accept", server.error());

  // Client -> accepted side, concurrently.
  auto [sent, received] = rn::sync_wait(
      *ctx, rn::when_all(client->send_all(rn::buffer(payload)), consume_read_n(*server, payload.size())));
  if (!sent) return consume_fail(who, "send_all", sent.error);
  if (received != payload) {
    std::fprintf(stderr, "FAIL %s: accepted side read %zu bytes \"%s\", expected \"%.*s\"\n", who,
                 received.size(), received.c_str(), static_cast<int>(payload.size()), payload.data());
    return 1;
  }

  // Accepted side echoes; the client reads with bare sync_wait'ed recv operations.
  auto echoed = rn::sync_wait(*ctx, server->send_all(rn::buffer(received)));
  if (!echoed || echoed.bytes != received.size()) return consume_fail(who, "echo send_all", echoed.error);
  std::string back;
  char buf[16];
  while (back.size() < payload.size()) {
    auto n = rn::sync_wait(*ctx, client->recv(rn::buffer(buf), rn::never_stop_token{},
                                              std::chrono::seconds(10)));
    if (!n) return consume_fail(who, "recv", n.error());
    if (*n == 0) break;
    back.append(buf, *n);
  }
  if (back != payload) {
    std::fprintf(stderr, "FAIL %s: client read back %zu of %zu bytes\n", who, back.size(),
                 payload.size());
    return 1;
  }

  if (auto r = rn::sync_wait(*ctx, client->close()); !r) return consume_fail(who, "close", r.error());
  if (auto r = rn::sync_wait(*ctx, server->close()); !r) return consume_fail(who, "close", r.error());
  std::printf("OK %s: %zu bytes each way over %s\n", who, payload.size(), at->to_string().c_str());
  return 0;
}

}  // namespace
