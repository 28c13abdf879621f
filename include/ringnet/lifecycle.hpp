// The end of a connection, done right: drain() reads to EOF under a deadline and a byte cap;
// graceful_close() is shutdown(SHUT_WR) → drain → close, with an abortive close (RST) when the
// peer does not finish in time, floods, or the caller stops it. Both report what happened.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/config.hpp>
#include <ringnet/error.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>
#include <ringnet/task.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <string_view>

RINGNET_BEGIN_NAMESPACE

enum class drain_outcome { eof, deadline, limit, reset, canceled, error };

struct drain_options {
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);  // for the whole drain
  std::size_t max_bytes = std::size_t{1} << 20;
  /// Where received bytes land. Empty: a per-thread scratch buffer, fine for discarding; give
  /// your own when on_data keeps or inspects the bytes.
  mutable_buffer buffer{};
};

struct drain_result {
  drain_outcome outcome = drain_outcome::eof;
  std::size_t bytes = 0;
  std::error_code error;  // the recv error behind reset / error
};

/// Discards drained bytes.
struct discard_data {
  void operator()(const_buffer) const noexcept {}
};

namespace detail {
RINGNET_TLS_ACCESSOR inline mutable_buffer drain_scratch() noexcept {
  alignas(64) static thread_local std::array<std::byte, 64 * 1024> scratch;
  return scratch;
}

inline drain_outcome drain_outcome_of(error_kind k) noexcept {
  switch (k) {
    case error_kind::timed_out: return drain_outcome::deadline;
    case error_kind::canceled: return drain_outcome::canceled;
    case error_kind::reset: return drain_outcome::reset;
    case error_kind::none:
    case error_kind::other: break;
  }
  return drain_outcome::error;
}

template <stoppable_token Token, class OnData>
task<drain_result> drain_on(pinned_socket s, drain_options opts, Token token, OnData on_data) {
  const mutable_buffer buf = opts.buffer.empty() ? drain_scratch() : opts.buffer;
  const auto deadline = deadline_after(opts.timeout);
  drain_result out;
  if (s.receiving()) {  // bytes receive() already queued come first, and its recv must end
    co_await s.stop_receiving();
    while (auto b = s.try_receive()) {
      on_data(b->data());
      out.bytes += b->size();
    }
    if (out.bytes > opts.max_bytes) {
      out.outcome = drain_outcome::limit;
      co_return out;
    }
  }
  for (;;) {
    // At most one byte past the cap (out.bytes <= max_bytes here, so nothing wraps).
    const std::size_t room = opts.max_bytes - out.bytes;
    const std::size_t want = room >= buf.size() ? buf.size() : room + 1;
    auto r = co_await s.recv(buf.first(want), token, until(deadline));
    if (!r) {
      out.error = r.error();
      out.outcome = drain_outcome_of(classify(r.error()));
      co_return out;
    }
    if (*r == 0) co_return out;  // eof
    on_data(const_buffer(buf.first(*r)));
    out.bytes += *r;
    if (out.bytes > opts.max_bytes) {
      out.outcome = drain_outcome::limit;
      co_return out;
    }
  }
}
}  // namespace detail

/// Reads until EOF, the deadline, or more than max_bytes (reading at most one byte past the cap,
/// so a peer that sends exactly max_bytes then FIN still ends `eof`). Received bytes go to
/// on_data(const_buffer); what receive() had queued comes first, in order.
template <stoppable_token Token = never_stop_token, class OnData = discard_data>
[[nodiscard]] task<drain_result> drain(stream& s, drain_options opts = {}, Token token = {},
                                       OnData on_data = {}) {
  return detail::drain_on(detail::pinned_socket(s), opts, std::move(token), std::move(on_data));
}

enum class close_outcome {
  clean,          // our FIN, the peer's FIN, nothing lost on either side
  peer_reset,     // the peer reset the connection
  drain_timeout,  // the peer did not finish in time: we reset it
  drain_limit,    // the peer kept sending past the cap: we reset it
  canceled,       // stopped by the caller: we reset it
  error,          // something else failed: we reset it
};

[[nodiscard]] constexpr std::string_view to_string(close_outcome o) noexcept {
  switch (o) {
    case close_outcome::clean: return "clean";
    case close_outcome::peer_reset: return "peer_reset";
    case close_outcome::drain_timeout: return "drain_timeout";
    case close_outcome::drain_limit: return "drain_limit";
    case close_outcome::canceled: return "canceled";
    case close_outcome::error: return "error";
  }
  return "unknown";
}

struct graceful_close_options {
  std::chrono::nanoseconds drain_timeout = std::chrono::seconds(5);
  std::size_t max_drain_bytes = std::size_t{1} << 20;
  shutdown_method shutdown = shutdown_method::syscall;
  mutable_buffer buffer{};  // see drain_options::buffer
};

struct close_report {
  close_outcome outcome = close_outcome::clean;
  std::size_t bytes_drained = 0;
  std::chrono::nanoseconds elapsed{};
  bool reset_sent = false;        // we ended it with RST (abort)
  std::size_t unread_at_close = 0;  // bytes queued unread when the socket closed (> 0: RST)
  std::error_code error;
};

namespace detail {
inline close_outcome close_outcome_of(error_kind k) noexcept {
  switch (k) {
    case error_kind::timed_out: return close_outcome::drain_timeout;
    case error_kind::canceled: return close_outcome::canceled;
    case error_kind::reset: return close_outcome::peer_reset;
    case error_kind::none:
    case error_kind::other: break;
  }
  return close_outcome::error;
}
inline close_outcome close_outcome_of(drain_outcome d) noexcept {
  switch (d) {
    case drain_outcome::eof: return close_outcome::clean;
    case drain_outcome::reset: return close_outcome::peer_reset;
    case drain_outcome::deadline: return close_outcome::drain_timeout;
    case drain_outcome::limit: return close_outcome::drain_limit;
    case drain_outcome::canceled: return close_outcome::canceled;
    case drain_outcome::error: break;
  }
  return close_outcome::error;
}

template <stoppable_token Token>
task<close_report> graceful_close_on(pinned_socket s, graceful_close_options opts, Token token) {
  const auto t0 = std::chrono::steady_clock::now();
  close_report report;
  auto finish = [&](close_outcome o, std::error_code ec) {
    report.outcome = o;
    report.error = ec;
    if (o == close_outcome::clean) return;  // EOF was read: nothing can be queued after FIN
    if (auto unread = s.unread_bytes()) report.unread_at_close = *unread;
  };
  if (token.stop_requested()) {  // asked to give up before we began: RST, not FIN then RST
    finish(close_outcome::canceled, std::make_error_code(std::errc::operation_canceled));
  } else if (s.read_eof() && !s.write_shut() && !s.state()->sending() && !s.connection_error()) {
    // The peer finished first and nothing is being sent: close(2) sends our FIN itself, so a
    // shutdown(2) before it would only cost a syscall (nothing is queued after a FIN: no RST).
    finish(close_outcome::clean, {});
  } else if (auto shut = s.write_shut() ? result<void>{} : co_await s.shutdown_write(token, opts.shutdown);
             !shut) {
    finish(close_outcome_of(classify(shut.error())), shut.error());
  } else if (const std::error_code lost = s.connection_error()) {
    finish(close_outcome_of(classify(lost)), lost);
  } else if (s.read_eof()) {
    finish(close_outcome::clean, {});  // the peer finished first: nothing left to drain
  } else {
    const drain_result d = co_await drain_on(
        pinned_socket(s), drain_options{opts.drain_timeout, opts.max_drain_bytes, opts.buffer}, token,
        discard_data{});
    report.bytes_drained = d.bytes;
    finish(close_outcome_of(d.outcome), d.error);
  }
  const bool abortive = report.outcome != close_outcome::clean &&
                        report.outcome != close_outcome::peer_reset;
  auto closed = abortive ? co_await s.abort() : co_await s.close();
  report.reset_sent = abortive;
  if (!closed && !report.error) report.error = closed.error();
  report.elapsed = std::chrono::steady_clock::now() - t0;
  co_return report;
}
}  // namespace detail

/// shutdown(SHUT_WR) (unless already done) → drain to EOF (deadline + cap) → close. Past the
/// deadline or the cap, on a stop request or an error: abort (RST). Never blocks beyond
/// drain_timeout. The stream may be moved or destroyed meanwhile (it then ends `canceled`).
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<close_report> graceful_close(stream& s, graceful_close_options opts = {},
                                                Token token = {}) {
  return detail::graceful_close_on(detail::pinned_socket(s), opts, std::move(token));
}

RINGNET_END_NAMESPACE
