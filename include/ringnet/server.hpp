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

#if __has_include(<malloc.h>)
#include <malloc.h>  // malloc_trim (glibc)
#endif
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>

RINGNET_BEGIN_NAMESPACE

struct server_options {
  bool nodelay = true;
  /// How a connection is closed once its handler returns with the stream still open (during
  /// shutdown, drain_timeout is capped by what is left of the grace period).
  graceful_close_options close{};
  /// At most this many connections served at once (0: no limit). At the limit the server takes
  /// no connection from the listen backlog: later clients wait in the kernel (nobody is refused
  /// or reset by us; a full backlog drops SYNs, which clients retry) until a connection ends. With
  /// a limit the server accepts one connection per request (single-shot accept), so none is
  /// taken past it.
  std::size_t max_connections = 0;
  /// No byte moved either way for this long: the server ends the connection (asks the handler to
  /// finish and cancels what it has in flight, then closes gracefully: FIN, drain, close). Counted
  /// as idle_timeout. Bytes move when a read or write completes, and while a send is in flight
  /// when the peer acknowledges some of it (a long send_all to a slow reader is not idle).
  std::chrono::nanoseconds idle_timeout = no_timeout;
  /// The peer sent nothing within this long after the connection was accepted (connect-and-
  /// vanish, slow-loris): ended as for idle_timeout, counted as first_byte_timeout. A byte that
  /// arrived counts even if the handler has not read it yet. A handler taking connection_limits&
  /// can re-arm such a deadline per request.
  std::chrono::nanoseconds first_byte_timeout = no_timeout;
  /// After an accept error (EMFILE, ENFILE, ENOBUFS, ENOMEM, or an accept the kernel cancelled)
  /// accepting pauses this long (at least 1 ms), doubling on each further error up to
  /// accept_backoff_max, back to the minimum after a success.
  std::chrono::nanoseconds accept_backoff_min = std::chrono::milliseconds(10);
  std::chrono::nanoseconds accept_backoff_max = std::chrono::seconds(1);
  /// When a burst of connections has ended (a quarter or less left of at least 256 at once), free
  /// heap memory goes back to the operating system (glibc's malloc_trim): the allocator would
  /// otherwise keep the burst's pages resident, however few connections remain.
  bool trim_after_burst = true;
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
  std::size_t idle_timeout = 0;        // no byte moved for server_options::idle_timeout: we ended it
  std::size_t first_byte_timeout = 0;  // the peer sent nothing in time: we ended it
  std::size_t handler_exceptions = 0;
  // EMFILE, ENFILE, ... or no memory for a new connection's frame (that connection is closed, not
  // counted as accepted); accepting resumes after a back-off.
  std::size_t accept_errors = 0;
  std::size_t max_active = 0;     // the most connections served at once

  /// Every accepted connection ended as exactly one of these (handler_exceptions and
  /// accept_errors are counted besides).
  [[nodiscard]] std::size_t ended() const noexcept {
    return clean + peer_reset + drain_timeout + drain_limit + we_reset + closed_by_handler +
           idle_timeout + first_byte_timeout;
  }

  connection_counters& operator+=(const connection_counters& o) noexcept {
    accepted += o.accepted;
    clean += o.clean;
    peer_reset += o.peer_reset;
    drain_timeout += o.drain_timeout;
    drain_limit += o.drain_limit;
    we_reset += o.we_reset;
    closed_by_handler += o.closed_by_handler;
    idle_timeout += o.idle_timeout;
    first_byte_timeout += o.first_byte_timeout;
    handler_exceptions += o.handler_exceptions;
    accept_errors += o.accept_errors;
    max_active += o.max_active;  // servers on several threads: at most this many at once
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

/// A connection's deadlines that its handler may re-arm, per request: handed to a handler that
/// takes it as a third parameter. The server enforces them (its handler need not watch a clock).
class connection_limits {
 public:
  /// The peer must send at least one more byte within `d` from now, else the server ends the
  /// connection (counted as first_byte_timeout); no_timeout clears the deadline. A byte arriving
  /// fulfils it, and so does one that arrived earlier and is not read yet. Replaces
  /// server_options::first_byte_timeout's deadline for this connection.
  void expect_bytes_within(std::chrono::nanoseconds d) noexcept {
    bytes_deadline_ = detail::deadline_after(d);
    bytes_baseline_ = socket_ ? socket_->bytes_received() : 0;
  }

 protected:
  // The socket's state, not the stream object: a handler may move the stream elsewhere. Null
  // once the handler let go of the stream.
  explicit connection_limits(const detail::socket_state* socket) noexcept : socket_(socket) {}
  ~connection_limits() = default;
  connection_limits(const connection_limits&) = delete;
  connection_limits& operator=(const connection_limits&) = delete;

  const detail::socket_state* socket_;
  std::chrono::steady_clock::time_point bytes_deadline_ = std::chrono::steady_clock::time_point::max();
  std::uint64_t bytes_baseline_ = 0;
};

/// Handler: task<void>(stream&, inplace_stop_token), or task<close_outcome> for a handler that
/// closes the stream itself and says how it ended (so the counters stay exact); either may take
/// connection_limits& as a third parameter. The token asks it to finish (shutdown, or a limit of
/// server_options ending the connection, which also cancels its operations in flight); when it
/// returns with the stream open, the server closes it gracefully. The server must outlive run()
/// and be shut down (co_await shutdown()) before it is destroyed.
template <class Handler>
  requires std::invocable<Handler&, stream&, inplace_stop_token> ||
           std::invocable<Handler&, stream&, inplace_stop_token, connection_limits&>
class server {
  static constexpr bool takes_limits =
      std::invocable<Handler&, stream&, inplace_stop_token, connection_limits&>;

 public:
  server(io_context& ctx, listener l, Handler handler, server_options opts = {})
      : ctx_(&ctx), listener_(std::move(l)), handler_(std::move(handler)), opts_(opts) {
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt, not one each.
    if (opts_.nodelay) detail::set_int_option(listener_.native_handle(), IPPROTO_TCP, TCP_NODELAY, 1);
  }
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server() {
    RINGNET_ASSERT(busy_ == 0, "rn::server destroyed while it runs: co_await shutdown() first");
  }

  /// Accepts until shutdown(); each connection runs handler(stream&, token) in its own task.
  [[nodiscard]] task<void> run() {
    // The deadline watch first: with no memory for its frames, run() throws with nothing counted
    // busy, so shutdown() does not wait for a loop that never ran.
    if (watching_deadlines()) {
      spawn(*ctx_, watch_deadlines());  // it starts on a later turn: counted in time
      ++busy_;
    }
    ++busy_;
    const auto backoff_min = std::max(opts_.accept_backoff_min, std::chrono::nanoseconds(std::chrono::milliseconds(1)));
    auto backoff = backoff_min;
    while (listener_.is_open() && !shutting_down_) {
      if (opts_.max_connections > 0 && active_ >= opts_.max_connections) {
        (void)co_await accept_wake_.wait(*ctx_);  // a connection ended, or shutdown
        continue;
      }
      // (Not `limited ? co_await a : co_await b`: g++ 12 destroys such temporaries twice.)
      result<stream> s = std::make_error_code(std::errc::operation_canceled);
      if (opts_.max_connections > 0)
        s = co_await listener_.accept();
      else
        s = co_await listener_.next();
      if (!s && (shutting_down_ || !listener_.is_open())) break;
      // The connection's frame comes before anything counts it. With no memory for it the
      // stream, already moved into serve's argument, closes as that unwinds: refused like a
      // connection with no memory for its stream's state (ENOMEM from accept). That, out of
      // descriptors or memory in the kernel (the connection stays in the backlog), or an accept
      // the kernel cancelled: give connections time to end, longer each time it happens again.
      detail::detached_task t{};
      if (s) {
        try {
          t = serve(std::move(*s));
        } catch (const std::bad_alloc&) {
        }
      }
      if (t.promise == nullptr) {
        ++counters_.accept_errors;
        (void)co_await accept_wake_.wait(*ctx_, backoff);
        backoff = std::min(backoff * 2, opts_.accept_backoff_max);
        continue;
      }
      backoff = backoff_min;
      ++counters_.accepted;
      // Counted before its task first runs, so the limit holds for the next turn of this loop.
      ++active_;
      ++busy_;
      counters_.max_active = std::max(counters_.max_active, active_);
      burst_peak_ = std::max(burst_peak_, active_);
      detail::start_detached(detail::ring_of(*ctx_), t);
    }
    done_one();
  }

  /// Stops accepting, asks every connection to finish, waits up to `grace`, resets the rest
  /// (their in-flight operations are cancelled) and waits for their tasks to end.
  [[nodiscard]] task<shutdown_report> shutdown(std::chrono::nanoseconds grace) {
    const auto t0 = std::chrono::steady_clock::now();
    deadline_ = detail::deadline_after(t0, grace);
    shutting_down_ = true;
    accept_wake_.notify();  // run() waiting for room or backing off: it returns
    watch_wake_.notify();   // so does the deadline watch
    listener_.close();  // a pending next() completes canceled: run() returns
    connections_.for_each([](connection& c) { c.finish.request_stop(); });
    inplace_stop_source all_done;
    all_done_ = &all_done;
    if (busy_ > 0) (void)co_await sleep_until(*ctx_, deadline_, all_done.get_token());
    connections_.for_each([](connection& c) {  // grace expired: reset what is left
      if (c.closing) return;  // its drain deadline is the grace deadline: it ends by itself
      c.abort.request_stop();
      c.socket().cancel();
    });
    // A handler that ignores its token and retries what was cancelled is cut off: its socket is
    // shut down both ways, so its reads see EOF and its sends fail.
    while (busy_ > 0) {
      (void)co_await sleep_for(*ctx_, tick(), all_done.get_token());
      connections_.for_each([](connection& c) {
        if (!c.closing) cut_off(c);
      });
    }
    all_done_ = nullptr;
    report_.elapsed = std::chrono::steady_clock::now() - t0;
    co_return report_;
  }

  [[nodiscard]] const connection_counters& counters() const noexcept { return counters_; }
  [[nodiscard]] std::size_t active() const noexcept { return active_; }
  [[nodiscard]] result<endpoint> local_endpoint() const noexcept { return listener_.local_endpoint(); }

 private:
  using clock = std::chrono::steady_clock;
  enum class ended_by { handler, idle_timeout, first_byte_timeout };

  struct connection : connection_limits {  // lives in its task's frame
    explicit connection(stream st) noexcept : connection_limits(nullptr), s(std::move(st)) {}
    // With deadlines to keep, the watch follows the socket wherever the handler moves the stream;
    // once the handler let go of it (destroyed it), the watch lets go too, so it closes.
    void watch() noexcept {
      pin.emplace(s);
      socket_ = pin->state();
    }
    void unwatch() noexcept {
      pin.reset();
      socket_ = nullptr;
    }
    [[nodiscard]] const detail::socket_ops& socket() const noexcept {
      if (pin) return *pin;
      return s;
    }
    stream s;
    std::optional<detail::pinned_socket> pin;
    inplace_stop_source finish;  // shutdown or a deadline asks the handler to finish
    inplace_stop_source abort;   // grace expired: give up, reset
    connection* prev = nullptr;
    connection* next = nullptr;
    bool closing = false;  // the handler returned; graceful_close runs
    ended_by ended = ended_by::handler;
    std::uint64_t moved = 0;     // bytes either way at the last look of the deadline watch
    clock::time_point quiet_since{};
    std::uint64_t acked = 0;     // the kernel's count of our bytes the peer acknowledged ...
    bool acked_known = false;    // ... taken since the counters last moved
    clock::time_point cut_off_at = clock::time_point::max();  // a deadline ended it: see cut_off
    bool cut = false;
    using connection_limits::bytes_baseline_;
    using connection_limits::bytes_deadline_;
  };

  using handler_result = await_result_t<typename std::conditional_t<
      takes_limits, std::invoke_result<Handler&, stream&, inplace_stop_token, connection_limits&>,
      std::invoke_result<Handler&, stream&, inplace_stop_token>>::type>;

  // A connection's task is a detached frame of its own (the ring owns it), not a task inside a
  // spawned wrapper: an idle connection holds one coroutine frame fewer. Nothing escapes it: a
  // handler's exception is counted; one from closing (out of memory for a frame) goes to the
  // context's exception handler, and the connection is reset and counted as one we reset (or as
  // the deadline that ended it, as on the normal path).
  detail::detached_task serve(stream st) {
    connection c(std::move(st));
    if (watching_deadlines()) c.watch();
    link(c);
    if (shutting_down_) c.finish.request_stop();
    c.quiet_since = clock::now();
    if (opts_.first_byte_timeout != no_timeout) c.expect_bytes_within(opts_.first_byte_timeout);
    std::optional<close_outcome> told;  // by a handler that closed the stream itself
    try {
      if constexpr (std::is_same_v<handler_result, close_outcome>)
        told = co_await call_handler(c);
      else
        co_await call_handler(c);
    } catch (...) {
      ++counters_.handler_exceptions;
    }
    try {
      if (c.s.is_open()) {
        c.closing = true;
        graceful_close_options o = opts_.close;
        if (shutting_down_) o.drain_timeout = std::min(o.drain_timeout, detail::until(deadline_));
        const close_report r = co_await graceful_close(c.s, o, c.abort.get_token());
        count(c, r.outcome, r.reset_sent);
      } else if (told) {
        count(c, *told, *told != close_outcome::clean && *told != close_outcome::peer_reset);
      } else if (!count_deadline(c)) {
        ++counters_.closed_by_handler;
        if (shutting_down_) ++report_.finished;
      }
    } catch (...) {
      // Not closed gracefully: reset now (its close comes with the frame), and counted so.
      if (c.s.is_open()) detail::reset_connection(c.s.native_handle());
      count(c, close_outcome::error, true);
      detail::ring_of(*ctx_).report(std::current_exception());
    }
    unlink(c);
    done_one();
  }

  auto call_handler(connection& c) {
    if constexpr (takes_limits)
      return handler_(c.s, c.finish.get_token(), static_cast<connection_limits&>(c));
    else
      return handler_(c.s, c.finish.get_token());
  }

  // ---- deadlines ---------------------------------------------------------------------------
  // One timer for the whole server looks at every connection a few times per deadline: whether
  // bytes moved since the last look (two counters on the socket, updated by every read and
  // write), and whether a first-byte deadline passed without a byte. A deadline is met within
  // one tick of its time; no timer per connection, nothing on the per-operation path.
  [[nodiscard]] bool watching_deadlines() const noexcept {
    return takes_limits || opts_.idle_timeout != no_timeout || opts_.first_byte_timeout != no_timeout;
  }
  [[nodiscard]] std::chrono::nanoseconds tick() const noexcept {
    const auto shortest = std::min(opts_.idle_timeout, opts_.first_byte_timeout);
    return std::clamp(shortest / 8, std::chrono::nanoseconds(std::chrono::milliseconds(5)),
                      std::chrono::nanoseconds(std::chrono::milliseconds(100)));
  }

  task<void> watch_deadlines() {
    while (!shutting_down_) {
      (void)co_await watch_wake_.wait(*ctx_, tick());
      if (shutting_down_) break;
      const auto now = clock::now();
      connections_.for_each([&](connection& c) {
        if (c.closing) return;
        if (c.finish.stop_requested()) {
          if (now >= c.cut_off_at) cut_off(c);  // ended by a deadline, and still running
          return;
        }
        if (!c.pin) return;
        const detail::socket_state* st = c.pin->state();
        if (!st || !st->handle_alive()) {  // the handler destroyed the stream: it is closing
          c.unwatch();
          return;
        }
        const std::uint64_t moved = st->bytes_received() + st->bytes_sent();
        if (moved != c.moved) {
          c.moved = moved;
          c.quiet_since = now;
          c.acked_known = false;
        } else if (opts_.idle_timeout != no_timeout && st->sending()) {
          // A send in flight counts its bytes when it completes (send_all's waits for all of
          // them): whether the peer acknowledges more of it says whether it moves.
          if (const auto k = kernel_counts(*st)) {
            if (c.acked_known && k->acked != c.acked) c.quiet_since = now;
            c.acked = k->acked;
            c.acked_known = true;
          }
        }
        if (st->bytes_received() != c.bytes_baseline_) c.bytes_deadline_ = clock::time_point::max();
        if (now >= c.bytes_deadline_) {
          // Bytes that arrived while the handler was busy elsewhere fulfil the deadline too.
          const auto k = kernel_counts(*st);
          if (k && k->received > c.bytes_baseline_)
            c.bytes_deadline_ = clock::time_point::max();
          else
            end(c, ended_by::first_byte_timeout, now);
        } else if (opts_.idle_timeout != no_timeout && now - c.quiet_since >= opts_.idle_timeout) {
          end(c, ended_by::idle_timeout, now);
        }
      });
    }
    done_one();
  }

  // Asks the handler to finish and cancels its operations in flight; the server then closes the
  // stream gracefully. A handler still running close.drain_timeout later is cut off.
  void end(connection& c, ended_by why, clock::time_point now) noexcept {
    c.ended = why;
    c.finish.request_stop();
    c.socket().cancel();
    c.cut_off_at = detail::deadline_after(now, opts_.close.drain_timeout);
  }

  // For a handler that ignores its token and retries what was cancelled: shut the socket down
  // both ways (its reads see EOF, its sends fail, the peer gets FIN), once.
  static void cut_off(connection& c) noexcept {
    const detail::socket_ops& s = c.socket();
    if (c.cut || !s.is_open()) return;
    c.cut = true;
    (void)::shutdown(s.native_handle(), SHUT_RDWR);
    s.cancel();
  }

  // The kernel's byte counts of a connection (TCP_INFO): bytes received from the peer, and bytes
  // of ours the peer acknowledged. Read only when a deadline is about to fire or a send is in
  // flight on a quiet connection. glibc's struct tcp_info stops before these two fields of the
  // kernel's (linux/tcp.h, since 4.1 and 4.6), which follow it at fixed offsets.
  struct kernel_bytes {
    std::uint64_t received = 0;
    std::uint64_t acked = 0;
  };
  static std::optional<kernel_bytes> kernel_counts(const detail::socket_state& st) noexcept {
    struct tcp_info_bytes {
      ::tcp_info known;
      std::uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
    };
    static_assert(offsetof(tcp_info_bytes, bytes_acked) == 120 &&
                  offsetof(tcp_info_bytes, bytes_received) == 128);
    if (!st.is_open()) return std::nullopt;
    tcp_info_bytes ti{};
    socklen_t len = sizeof ti;
    if (::getsockopt(st.fd(), IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(tcp_info_bytes, bytes_received) + sizeof ti.bytes_received)
      return std::nullopt;
    return kernel_bytes{ti.bytes_received, ti.bytes_acked};
  }

  // A connection a deadline ended is counted as that, however the close went.
  bool count_deadline(const connection& c) noexcept {
    switch (c.ended) {
      case ended_by::idle_timeout: ++counters_.idle_timeout; return true;
      case ended_by::first_byte_timeout: ++counters_.first_byte_timeout; return true;
      case ended_by::handler: return false;
    }
    return false;
  }

  void count(const connection& c, close_outcome outcome, bool reset_sent) noexcept {
    if (!count_deadline(c)) {
      switch (outcome) {
        case close_outcome::clean: ++counters_.clean; break;
        case close_outcome::peer_reset: ++counters_.peer_reset; break;
        case close_outcome::drain_timeout: ++counters_.drain_timeout; break;
        case close_outcome::drain_limit: ++counters_.drain_limit; break;
        case close_outcome::canceled:
        case close_outcome::error: ++counters_.we_reset; break;
      }
    }
    if (!shutting_down_) return;
    if (outcome == close_outcome::clean) ++report_.finished;
    else if (reset_sent) ++report_.aborted;
    else ++report_.errors;
  }

  void link(connection& c) noexcept { connections_.push_front(c); }
  void unlink(connection& c) noexcept {
    connections_.remove(c);
    if (active_-- == opts_.max_connections) accept_wake_.notify();  // room for the next one
    if (opts_.trim_after_burst && !trim_due_ && burst_peak_ >= 256 && active_ <= burst_peak_ / 4) {
      try {
        spawn(*ctx_, trim_after_burst());
      } catch (const std::bad_alloc&) {
        return;  // no memory for its frames: the next connection to end tries again
      }
      trim_due_ = true;
      ++busy_;
    }
  }

  // A turn later, once the ended connections' frames are freed.
  task<void> trim_after_burst() {
    (void)co_await sleep_for(*ctx_, std::chrono::milliseconds(20));
#if defined(__GLIBC__)
    ::malloc_trim(0);
#endif
    burst_peak_ = active_;
    trim_due_ = false;
    done_one();
  }
  // busy_ counts the accept loop and every connection task; shutdown waits for all of them.
  void done_one() noexcept {
    if (--busy_ == 0 && all_done_) all_done_->request_stop();
  }

  // Wakes one waiting coroutine early from a timed wait: a timer that a stop cancels.
  class wake_up {
   public:
    auto wait(io_context& ctx, std::chrono::nanoseconds d = no_timeout) {
      source_.emplace();
      return sleep_until(ctx, detail::deadline_after(d), source_->get_token());
    }
    void notify() noexcept {
      if (source_) source_->request_stop();
    }

   private:
    std::optional<inplace_stop_source> source_;
  };

  io_context* ctx_;
  listener listener_;
  Handler handler_;
  server_options opts_;
  detail::intrusive_list<connection> connections_;
  std::size_t active_ = 0;
  std::size_t busy_ = 0;
  std::size_t burst_peak_ = 0;  // most connections at once since memory was last trimmed
  bool trim_due_ = false;
  bool shutting_down_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  inplace_stop_source* all_done_ = nullptr;
  wake_up accept_wake_;  // the accept loop: room below max_connections, shutdown
  wake_up watch_wake_;   // the deadline watch: shutdown
  connection_counters counters_;
  shutdown_report report_;
};

RINGNET_END_NAMESPACE
