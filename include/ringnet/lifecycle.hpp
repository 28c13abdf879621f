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
inline mutable_buffer drain_scratch() noexcept {
  alignas(64) static thread_local std::array<std::byte, 64 * 1024> scratch;
  return scratch;
}
inline std::chrono::nanoseconds until(std::chrono::steady_clock::time_point t) noexcept {
  const auto left = t - std::chrono::steady_clock::now();
  return left.count() > 0 ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                          : std::chrono::nanoseconds::zero();
}
}  // namespace detail

/// Reads until EOF, the deadline, or more than max_bytes (reading at most one byte past the cap,
/// so a peer that sends exactly max_bytes then FIN still ends `eof`). Received bytes go to
/// on_data(const_buffer).
template <stoppable_token Token = never_stop_token, class OnData = discard_data>
[[nodiscard]] task<drain_result> drain(stream& s, drain_options opts = {}, Token token = {},
                                       OnData on_data = {}) {
  const mutable_buffer buf = opts.buffer.empty() ? detail::drain_scratch() : opts.buffer;
  const auto deadline = std::chrono::steady_clock::now() + opts.timeout;
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
    const std::size_t want = std::min(buf.size(), opts.max_bytes - out.bytes + 1);
    auto r = co_await s.recv(buf.first(want), token, detail::until(deadline));
    if (!r) {
      out.error = r.error();
      if (r.error() == std::errc::timed_out) out.outcome = drain_outcome::deadline;
      else if (r.error() == std::errc::operation_canceled) out.outcome = drain_outcome::canceled;
      else if (r.error() == std::errc::connection_reset) out.outcome = drain_outcome::reset;
      else out.outcome = drain_outcome::error;
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

/// shutdown(SHUT_WR) (unless already done) → drain to EOF (deadline + cap) → close. Past the deadline or the cap, on a
/// stop request or an error: abort (RST). Never blocks beyond drain_timeout.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<close_report> graceful_close(stream& s, graceful_close_options opts = {},
                                                Token token = {}) {
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
  } else if (auto shut = s.write_shut() ? result<void>{} : co_await s.shutdown_write(token, opts.shutdown);
             !shut) {
    const bool reset = shut.error() == std::errc::not_connected ||
                       shut.error() == std::errc::connection_reset;
    finish(reset ? close_outcome::peer_reset : close_outcome::error, shut.error());
  } else if (s.read_eof()) {
    finish(close_outcome::clean, {});  // the peer finished first: nothing left to drain
  } else {
    const drain_result d = co_await drain(
        s, drain_options{opts.drain_timeout, opts.max_drain_bytes, opts.buffer}, token);
    report.bytes_drained = d.bytes;
    switch (d.outcome) {
      case drain_outcome::eof: finish(close_outcome::clean, {}); break;
      case drain_outcome::reset: finish(close_outcome::peer_reset, d.error); break;
      case drain_outcome::deadline: finish(close_outcome::drain_timeout, d.error); break;
      case drain_outcome::limit: finish(close_outcome::drain_limit, {}); break;
      case drain_outcome::canceled: finish(close_outcome::canceled, d.error); break;
      case drain_outcome::error: finish(close_outcome::error, d.error); break;
    }
  }
  const bool abortive = report.outcome != close_outcome::clean &&
                        report.outcome != close_outcome::peer_reset;
  auto closed = abortive ? co_await s.abort() : co_await s.close();
  report.reset_sent = abortive;
  if (!closed && !report.error) report.error = closed.error();
  report.elapsed = std::chrono::steady_clock::now() - t0;
  co_return report;
}

RINGNET_END_NAMESPACE
