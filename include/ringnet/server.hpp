// server: a multishot accept loop, a task per connection, counters of how connections ended, and
// a shutdown that stops accepting, asks every connection to finish, waits up to a grace period
// and resets the rest.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/intrusive_list.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/lifecycle.hpp>
#include <ringnet/listener.hpp>
#include <ringnet/spawn.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>
#include <ringnet/task.hpp>
#include <ringnet/timer.hpp>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>

RINGNET_BEGIN_NAMESPACE

struct server_options {
  bool nodelay = true;
  /// How a connection is closed once its handler returns with the stream still open (during
  /// shutdown, drain_timeout is capped by what is left of the grace period).
  graceful_close_options close{};
};

/// How connections ended, for logs and metrics.
struct connection_counters {
  std::size_t accepted = 0;
  std::size_t clean = 0;          // FIN both ways, nothing lost
  std::size_t peer_reset = 0;     // the peer reset the connection
  std::size_t drain_timeout = 0;  // the peer did not finish in time: we reset it
  std::size_t drain_limit = 0;    // the peer flooded the drain: we reset it
  std::size_t we_reset = 0;       // stopped (shutdown grace expired) or failed: we reset it
  std::size_t closed_by_handler = 0;  // the handler closed the stream itself
  std::size_t handler_exceptions = 0;
  std::size_t accept_errors = 0;  // EMFILE, ENFILE, ... (accepting resumes)

  connection_counters& operator+=(const connection_counters& o) noexcept {
    accepted += o.accepted;
    clean += o.clean;
    peer_reset += o.peer_reset;
    drain_timeout += o.drain_timeout;
    drain_limit += o.drain_limit;
    we_reset += o.we_reset;
    closed_by_handler += o.closed_by_handler;
    handler_exceptions += o.handler_exceptions;
    accept_errors += o.accept_errors;
    return *this;
  }
};

/// What shutdown() did with the connections open when it began or accepted since.
struct shutdown_report {
  std::size_t finished = 0;  // ended cleanly within the grace period
  std::size_t aborted = 0;   // reset by us (grace expired, drain timeout/limit)
  std::size_t errors = 0;    // peer reset or failed
  std::chrono::nanoseconds elapsed{};

  shutdown_report& operator+=(const shutdown_report& o) noexcept {
    finished += o.finished;
    aborted += o.aborted;
    errors += o.errors;
    elapsed = std::max(elapsed, o.elapsed);
    return *this;
  }
};

/// Handler: task<void>(stream&, inplace_stop_token), or task<close_outcome> for a handler that
/// closes the stream itself and says how it ended (so the counters stay exact). The token asks it
/// to finish (shutdown); when it returns with the stream open, the server closes it gracefully.
/// The server must outlive run() and be shut down (co_await shutdown()) before it is destroyed.
template <class Handler>
  requires std::invocable<Handler&, stream&, inplace_stop_token>
class server {
 public:
  server(io_context& ctx, listener l, Handler handler, server_options opts = {})
      : ctx_(&ctx), listener_(std::move(l)), handler_(std::move(handler)), opts_(opts) {
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt, not one each.
    if (opts_.nodelay) detail::set_int_option(listener_.native_handle(), IPPROTO_TCP, TCP_NODELAY, 1);
  }
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Accepts until shutdown(); each connection runs handler(stream&, token) in its own task.
  [[nodiscard]] task<void> run() {
    ++busy_;
    while (listener_.is_open()) {
      auto s = co_await listener_.next();
      if (!s) {
        if (s.error() == std::errc::operation_canceled ||
            s.error() == std::errc::bad_file_descriptor)
          break;
        ++counters_.accept_errors;  // out of fds or memory: give connections time to end
        (void)co_await sleep_for(*ctx_, std::chrono::milliseconds(10));
        continue;
      }
      ++counters_.accepted;
      spawn(*ctx_, serve(std::move(*s)));
    }
    done_one();
  }

  /// Stops accepting, asks every connection to finish, waits up to `grace`, resets the rest
  /// (their in-flight operations are cancelled) and waits for their tasks to end.
  [[nodiscard]] task<shutdown_report> shutdown(std::chrono::nanoseconds grace) {
    const auto t0 = std::chrono::steady_clock::now();
    deadline_ = detail::deadline_after(t0, grace);
    shutting_down_ = true;
    listener_.close();  // a pending next() completes canceled: run() returns
    connections_.for_each([](connection& c) { c.finish.request_stop(); });
    inplace_stop_source all_done;
    all_done_ = &all_done;
    if (busy_ > 0) (void)co_await sleep_until(*ctx_, deadline_, all_done.get_token());
    connections_.for_each([](connection& c) {  // grace expired: reset what is left
      if (c.closing) return;  // its drain deadline is the grace deadline: it ends by itself
      c.abort.request_stop();
      c.s.cancel();
    });
    while (busy_ > 0) (void)co_await sleep_for(*ctx_, std::chrono::seconds(1), all_done.get_token());
    all_done_ = nullptr;
    report_.elapsed = std::chrono::steady_clock::now() - t0;
    co_return report_;
  }

  [[nodiscard]] const connection_counters& counters() const noexcept { return counters_; }
  [[nodiscard]] std::size_t active() const noexcept { return active_; }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept { return listener_.local_endpoint(); }

 private:
  struct connection {  // lives in its task's frame
    explicit connection(stream st) noexcept : s(std::move(st)) {}
    stream s;
    inplace_stop_source finish;  // shutdown asks the handler to finish
    inplace_stop_source abort;   // grace expired: give up, reset
    connection* prev = nullptr;
    connection* next = nullptr;
    bool closing = false;  // the handler returned; graceful_close runs
  };

  using handler_result =
      await_result_t<std::invoke_result_t<Handler&, stream&, inplace_stop_token>>;

  task<void> serve(stream st) {
    connection c(std::move(st));
    link(c);
    if (shutting_down_) c.finish.request_stop();
    std::optional<close_outcome> told;  // by a handler that closed the stream itself
    try {
      if constexpr (std::is_same_v<handler_result, close_outcome>)
        told = co_await handler_(c.s, c.finish.get_token());
      else
        co_await handler_(c.s, c.finish.get_token());
    } catch (...) {
      ++counters_.handler_exceptions;
    }
    if (c.s.is_open()) {
      c.closing = true;
      graceful_close_options o = opts_.close;
      if (shutting_down_) o.drain_timeout = std::min(o.drain_timeout, detail::until(deadline_));
      const close_report r = co_await graceful_close(c.s, o, c.abort.get_token());
      count(r.outcome, r.reset_sent);
    } else if (told) {
      count(*told, *told != close_outcome::clean && *told != close_outcome::peer_reset);
    } else {
      ++counters_.closed_by_handler;
      if (shutting_down_) ++report_.finished;
    }
    unlink(c);
    done_one();
  }

  void count(close_outcome outcome, bool reset_sent) noexcept {
    switch (outcome) {
      case close_outcome::clean: ++counters_.clean; break;
      case close_outcome::peer_reset: ++counters_.peer_reset; break;
      case close_outcome::drain_timeout: ++counters_.drain_timeout; break;
      case close_outcome::drain_limit: ++counters_.drain_limit; break;
      case close_outcome::canceled:
      case close_outcome::error: ++counters_.we_reset; break;
    }
    if (!shutting_down_) return;
    if (outcome == close_outcome::clean) ++report_.finished;
    else if (reset_sent) ++report_.aborted;
    else ++report_.errors;
  }

  void link(connection& c) noexcept {
    connections_.push_front(c);
    ++active_;
    ++busy_;
  }
  void unlink(connection& c) noexcept {
    connections_.remove(c);
    --active_;
  }
  // busy_ counts the accept loop and every connection task; shutdown waits for all of them.
  void done_one() noexcept {
    if (--busy_ == 0 && all_done_) all_done_->request_stop();
  }

  io_context* ctx_;
  listener listener_;
  Handler handler_;
  server_options opts_;
  detail::intrusive_list<connection> connections_;
  std::size_t active_ = 0;
  std::size_t busy_ = 0;
  bool shutting_down_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  inplace_stop_source* all_done_ = nullptr;
  connection_counters counters_;
  shutdown_report report_;
};

RINGNET_END_NAMESPACE
