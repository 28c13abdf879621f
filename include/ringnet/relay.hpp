// relay: copies bytes both ways between two connected streams, the core of a TCP proxy.
//
// Half-close is forwarded: EOF read from one side becomes shutdown_write() on the other while the
// opposite direction keeps running, so a client that half-closes still gets its whole answer.
// When both directions ended that way, both sockets close cleanly (each was read to EOF, so no
// unread byte can turn the close into an RST). Any other ending (a reset or error on either side,
// a timeout, a stop) resets both sockets: a connection broken on one side shows up on the other as
// a reset, never as a clean EOF that hides a truncated stream.
#pragma once

#include <ringnet/buffer.hpp>
#include <ringnet/config.hpp>
#include <ringnet/detail/relay_buffer.hpp>
#include <ringnet/detail/relay_pipe.hpp>
#include <ringnet/detail/request.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/lifecycle.hpp>
#include <ringnet/operation.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>
#include <ringnet/task.hpp>
#include <ringnet/when_all.hpp>

#include <liburing.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string_view>
#include <system_error>
#include <utility>

RINGNET_BEGIN_NAMESPACE

/// How the bytes move.
enum class relay_path {
  /// recv into a buffer and send from it, one recv and one send in flight per direction. The
  /// default: with large buffers it measured faster here than splice.
  copy,
  /// socket → pipe → socket with IORING_OP_SPLICE: no copy through user space, but every splice
  /// is handed to an io-wq kernel thread (one waiting for data is not: the relay polls first).
  /// Copy where the kernel lacks SPLICE.
  splice,
};

struct relay_options {
  relay_path path = relay_path::copy;
  /// Bytes in flight per direction: the copy buffer, or the pipe size for splice (rounded up to a
  /// power of two pages; unprivileged processes are capped at fs.pipe-max-size). Either is held
  /// only while data moves: an idle direction waits for data with neither (the pipe goes after
  /// 200 ms without data). Copy buffers are mapped from the kernel, resident only as far as data
  /// reached, and recycled per thread within 8 MiB of resident memory; the rest is unmapped.
  std::size_t buffer_size = std::size_t{1} << 20;
  /// A direction times out after moving no byte for this long while it holds bytes its
  /// destination does not take, or while the other direction moved nothing either: one side
  /// keeping quiet while the other streams (a download) is not idle. Then both sides are reset.
  std::chrono::nanoseconds idle_timeout = std::chrono::minutes(10);
  /// How long one direction may stay open after the other ended (its FIN forwarded); the idle
  /// timeout applies meanwhile too. Past it, both sides are reset.
  std::chrono::nanoseconds half_close_timeout = no_timeout;
  /// After a stop request, how long the connection may still end by itself before both sides
  /// are reset. Zero: at once.
  std::chrono::nanoseconds stop_grace = std::chrono::nanoseconds::zero();
  /// How forwarded FINs are sent.
  shutdown_method shutdown = shutdown_method::syscall;
};

/// How one direction ended.
enum class relay_end {
  eof,                 // the source's FIN was forwarded after every byte: clean
  reset,               // a peer reset the connection (ECONNRESET, EPIPE, ENOTCONN)
  error,               // another error, see relay_direction_result::error
  idle_timeout,        // see relay_options::idle_timeout
  half_close_timeout,  // see relay_options::half_close_timeout
  canceled,            // stopped (after stop_grace), or someone cancelled or closed a stream
  aborted,             // cut short because the other direction failed
};

[[nodiscard]] constexpr std::string_view to_string(relay_end e) noexcept {
  switch (e) {
    case relay_end::eof: return "eof";
    case relay_end::reset: return "reset";
    case relay_end::error: return "error";
    case relay_end::idle_timeout: return "idle_timeout";
    case relay_end::half_close_timeout: return "half_close_timeout";
    case relay_end::canceled: return "canceled";
    case relay_end::aborted: return "aborted";
  }
  return "unknown";
}

struct relay_direction_result {
  std::size_t bytes = 0;  // written to the destination socket
  relay_end end = relay_end::eof;
  std::error_code error;  // the error behind reset, error and canceled
};

struct relay_result {
  relay_direction_result a_to_b;
  relay_direction_result b_to_a;
  std::chrono::nanoseconds elapsed{};
  /// Both FINs forwarded and both sockets closed without RST. Otherwise both were reset.
  [[nodiscard]] bool clean() const noexcept {
    return a_to_b.end == relay_end::eof && b_to_a.end == relay_end::eof;
  }
  /// The connection's ending in the terms of close_report (what a server handler returns):
  /// clean, peer_reset, error, or canceled for timeouts and stops (we reset both sides).
  [[nodiscard]] close_outcome outcome() const noexcept {
    const auto either = [&](relay_end e) { return a_to_b.end == e || b_to_a.end == e; };
    if (clean()) return close_outcome::clean;
    if (either(relay_end::reset)) return close_outcome::peer_reset;
    if (either(relay_end::error)) return close_outcome::error;
    return close_outcome::canceled;
  }
};

namespace detail {

// What a recv moved, and whether the socket still holds more: IORING_CQE_F_SOCK_NONEMPTY, which
// a kernel that does not report it never sets (every recv then looks like it drained the socket,
// and the next one waits for readability first: slower, never wrong).
struct recv_progress {
  std::size_t bytes;
  bool more_queued;
};
struct recv_reporting_queue_op : recv_op {
  static result<recv_progress> complete(int res, std::uint32_t flags) noexcept {
    if (res < 0) return errno_code(-res);
    return recv_progress{static_cast<std::size_t>(res), (flags & IORING_CQE_F_SOCK_NONEMPTY) != 0};
  }
};

// One waiting coroutine, woken through the ring's ready queue rather than resumed inside the
// waker (which is itself in the middle of a completion).
class relay_signal {
 public:
  auto wait() noexcept {
    struct awaiter {
      relay_signal* s;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) const noexcept { s->waiter_ = h; }
      void await_resume() const noexcept {}
    };
    return awaiter{this};
  }
  void notify(ring& r) {
    if (waiter_) r.post(std::exchange(waiter_, {}));
  }

 private:
  std::coroutine_handle<> waiter_;
};

// One direction, src → dst.
struct relay_flow {
  relay_flow(pinned_socket& from, pinned_socket& to) noexcept : src(&from), dst(&to) {}
  pinned_socket* src;
  pinned_socket* dst;
  relay_direction_result out{};
  bool running = true;
  std::size_t buffered = 0;  // read from src, not yet delivered to dst
  std::chrono::steady_clock::time_point last{};  // a byte moved (kept only with an idle timeout)
  // copy: a circular buffer that one recv fills while one send drains it, held only while bytes
  // are in flight (an idle direction waits for data without memory)
  relay_buffer buf;
  std::size_t head = 0;
  bool eof = false;
  bool receiving = false;  // a recv into buf is in the kernel
  bool queued = false;     // the last recv left bytes in the socket (IORING_CQE_F_SOCK_NONEMPTY)
  relay_signal has_data;
  relay_signal has_room;
  // splice
  relay_pipe pipe;
};

// The relay's state; lives in relay()'s frame, with both sockets pinned (the streams may be moved
// or destroyed meanwhile). Its watchdog is one IORING_OP_TIMEOUT armed for the earliest deadline
// (idle, half-close, stop grace): an explicit timer because a linked timeout never fires behind
// a splice (it runs in an io-wq worker), and on the copy path it would cost an SQE and a kernel
// timer per operation; here operations only record when bytes moved, and the timer re-checks
// when it fires. A stop request from any thread cancels the timer (through a canceller), which
// makes it check at once.
class relay_core {
  using clock = std::chrono::steady_clock;

 public:
  relay_core(pinned_socket a, pinned_socket b, const relay_options& opts) noexcept
      : a_(std::move(a)),
        b_(std::move(b)),
        ring_(a_.owner()),
        opts_(opts),
        flows_{relay_flow(a_, b_), relay_flow(b_, a_)},
        timer_(*this),
        user_stop_(ring_, &relay_core::cancel_timer, this),
        start_(clock::now()) {}
  relay_core(const relay_core&) = delete;
  relay_core& operator=(const relay_core&) = delete;

  // Both streams open, on one context.
  [[nodiscard]] std::error_code usable() const noexcept {
    if (!ring_ || !a_.is_open() || !b_.is_open() || b_.owner() != ring_)
      return std::make_error_code(std::errc::bad_file_descriptor);
    return {};
  }
  // Nothing ran: both directions report `ec`.
  void refuse(std::error_code ec) noexcept {
    for (relay_flow& f : flows_) ended(f, relay_end::error, ec);
  }

  // The caller's stop token: asked on every check, its callback cancels the watchdog timer.
  template <class Token>
  void watch(const Token& token) noexcept {
    if (!token.stop_possible()) return;
    token_ = &token;
    stop_requested_ = [](const void* t) noexcept -> bool {
      return static_cast<const Token*>(t)->stop_requested();
    };
  }
  [[nodiscard]] canceller& stop_canceller() noexcept { return user_stop_; }

  // Runs both directions until both ended.
  task<void> run() {
    for (relay_flow& f : flows_) f.last = start_;
    check();
    if (opts_.path == relay_path::splice && ring_->caps().splice_op) {
      co_await when_all(splice_flow(flows_[0]), splice_flow(flows_[1]));
    } else {
      co_await when_all(copy_in(flows_[0]), copy_out(flows_[0]), copy_in(flows_[1]),
                        copy_out(flows_[1]));
    }
  }

  // After run() (and after the stop callback is gone): waits until the watchdog is disarmed.
  auto quiesce() noexcept {
    finished_ = true;
    timer_.cancel();
    struct awaiter {
      relay_core* c;
      bool await_ready() const noexcept { return !c->timer_.in_flight(); }
      void await_suspend(std::coroutine_handle<> h) const noexcept { c->timer_waiter_ = h; }
      void await_resume() const noexcept { c->user_stop_.settle(); }
    };
    return awaiter{this};
  }

  // Closes both sockets: cleanly if both directions forwarded their FIN, else with RST.
  task<relay_result> close(bool force_reset) {
    relay_result r{flows_[0].out, flows_[1].out, {}};
    const bool clean = !force_reset && !flows_[0].running && !flows_[1].running && r.clean();
    for (relay_flow& f : flows_) f.pipe.close();
    // Close errors are ignored: the descriptor is released either way and nothing in flight.
    if (clean) {
      (void)co_await a_.close();
      (void)co_await b_.close();
    } else {
      (void)co_await a_.abort();
      (void)co_await b_.abort();
    }
    r.elapsed = clock::now() - start_;
    co_return r;
  }

 private:
  [[nodiscard]] std::size_t copy_buffer_size() const noexcept {
    return std::max<std::size_t>(opts_.buffer_size, 1);
  }

  static void cancel_timer(void* self) noexcept { static_cast<relay_core*>(self)->timer_.cancel(); }

  // ---- data paths ------------------------------------------------------------------------
  // After every await: if the relay is aborting, whatever the operation returned (cancelled, or
  // data that raced the cancel) no longer matters.

  // A recv into the buffer pins it until bytes arrive, so one is issued only when bytes are known
  // to be queued; otherwise the direction first waits for readability holding no buffer (after
  // a send drained it), and takes one when data is there. Bulk transfers keep theirs: a recv that
  // left bytes queued is followed by the next recv at once.
  task<void> copy_in(relay_flow& f) {  // src → buffer
    const std::size_t cap = copy_buffer_size();
    for (;;) {
      while (f.buffered == cap && !aborting_) co_await f.has_room.wait();
      if (aborting_) co_return;
      if (f.buffered == 0) {
        f.head = 0;  // no send in flight: give the recv the whole buffer
        if (!f.queued) f.buf.reset();
      }
      if (!f.queued) {
        auto ready = co_await f.src->wait_readable(abort_.get_token());
        if (aborting_) co_return;
        if (!ready) {
          fail(f, ready.error());
          co_return;
        }
      }
      if (!f.buf && !f.buf.acquire(cap)) {
        fail(f, std::make_error_code(std::errc::not_enough_memory));
        co_return;
      }
      const std::size_t tail = (f.head + f.buffered) % cap;
      const std::size_t room = tail >= f.head ? cap - tail : f.head - tail;
      f.receiving = true;
      auto r = co_await operation<recv_reporting_queue_op, inplace_stop_token>(
          ring_, recv_reporting_queue_op{{{f.src->state()}, f.buf.span().data() + tail, room}},
          abort_.get_token());
      f.receiving = false;
      if (aborting_) co_return;
      if (!r) {
        fail(f, r.error());
        co_return;
      }
      if (r->bytes == 0) {
        f.eof = true;
        f.has_data.notify(*ring_);
        co_return;
      }
      f.queued = r->more_queued;
      f.buf.touched(tail + r->bytes);
      f.buffered += r->bytes;
      moved(f);
      f.has_data.notify(*ring_);
    }
  }

  task<void> copy_out(relay_flow& f) {  // buffer → dst
    const std::size_t cap = copy_buffer_size();
    for (;;) {
      while (f.buffered == 0 && !f.eof && !aborting_) co_await f.has_data.wait();
      if (aborting_) co_return;
      if (f.buffered == 0) break;  // EOF, and everything before it delivered
      const std::size_t run = std::min(f.buffered, cap - f.head);
      auto r = co_await f.dst->send(f.buf.span().subspan(f.head, run), abort_.get_token());
      if (r) f.out.bytes += *r;  // counted even when it raced an abort: the bytes went out
      if (aborting_) co_return;
      if (!r) {
        fail(f, r.error());
        co_return;
      }
      f.head = (f.head + *r) % cap;
      f.buffered -= *r;
      // Everything delivered and no recv writing into it: the buffer goes back until data comes.
      if (f.buffered == 0 && !f.receiving) f.buf.reset();
      moved(f);
      f.has_room.notify(*ring_);
    }
    co_await forward_eof(f);
  }

  // Alternates socket → pipe and pipe → socket, never both at once: a socket → pipe splice holds
  // the pipe's lock while it runs. It splices only once data is queued: a splice waiting for data
  // would hold an io-wq worker (a kernel thread per idle connection), and the kernel files it
  // under the pipe, so cancelling everything on the socket (stream::cancel()) would miss it.
  //
  // The pipe (two descriptors, and kernel memory while it holds data) is opened when data first
  // arrives and closed once the direction stayed quiet for pipe_keep: an idle relay holds only
  // its two sockets, a busy one does not pay for a new pipe between bursts.
  task<void> splice_flow(relay_flow& f) {
    constexpr std::chrono::milliseconds pipe_keep{200};
    for (;;) {
      if (auto queued = f.src->unread_bytes(); !queued || *queued == 0) {
        auto ready = co_await f.src->wait_readable(abort_.get_token(),
                                                   f.pipe.is_open() ? pipe_keep : no_timeout);
        if (aborting_) co_return;
        if (!ready && ready.error() == std::errc::timed_out && f.pipe.is_open()) {
          f.pipe.close();  // empty: every byte it took was spliced out
          continue;
        }
        if (!ready) {
          fail(f, ready.error());
          co_return;
        }
      }
      if (!f.pipe.is_open()) {
        // The peer's FIN or a reset with nothing queued before it is read without a pipe (a
        // thousand connections closing at once would otherwise open a thousand pipes at once).
        // poll() sees either without taking the error from the socket; nothing can follow them,
        // so a recv of one byte then returns the FIN or the error through the usual path.
        pollfd ended{f.src->native_handle(), POLLRDHUP, 0};
        if (::poll(&ended, 1, 0) == 1 && (ended.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
          if (auto queued = f.src->unread_bytes(); queued && *queued == 0) {
            char probe = 0;
            auto end = co_await f.src->recv(buffer(&probe, 1), abort_.get_token());
            if (aborting_) co_return;
            if (end && *end == 0) break;
            fail(f, end ? errno_code(EIO) : end.error());
            co_return;
          }
        }
        if (const int r = f.pipe.open(opts_.buffer_size); r < 0) {
          fail(f, errno_code(-r));
          co_return;
        }
      }
      auto in = co_await f.src->splice_to(f.pipe.write_fd(), f.pipe.capacity(), abort_.get_token());
      if (aborting_) co_return;
      if (!in) {
        fail(f, in.error());
        co_return;
      }
      if (*in == 0) break;
      f.buffered = *in;
      moved(f);
      while (f.buffered > 0) {
        auto out = co_await f.dst->splice_from(f.pipe.read_fd(), f.buffered, abort_.get_token());
        if (out) f.out.bytes += *out;
        if (aborting_) co_return;
        if (!out || *out == 0) {  // 0 from a non-empty pipe would spin: treat it as the error it is
          fail(f, out ? errno_code(EIO) : out.error());
          co_return;
        }
        f.buffered -= *out;
        moved(f);
      }
    }
    co_await forward_eof(f);
  }

  task<void> forward_eof(relay_flow& f) {
    auto r = co_await f.dst->shutdown_write(abort_.get_token(), opts_.shutdown);
    if (aborting_) co_return;
    if (!r) {
      fail(f, r.error());
      co_return;
    }
    ended(f, relay_end::eof, {});
    const relay_flow& other = &f == &flows_[0] ? flows_[1] : flows_[0];
    if (!other.running) co_return;
    if (opts_.half_close_timeout != no_timeout)
      half_deadline_ = deadline_after(opts_.half_close_timeout);
    // The other direction alone decides idleness now, and the half-close deadline may be the
    // earliest: re-check.
    if (opts_.half_close_timeout != no_timeout || opts_.idle_timeout != no_timeout) poke();
  }

  // ---- endings ---------------------------------------------------------------------------
  void moved(relay_flow& f) noexcept {
    if (opts_.idle_timeout != no_timeout) f.last = clock::now();
  }

  static void ended(relay_flow& f, relay_end e, std::error_code ec) noexcept {
    if (!f.running) return;
    f.running = false;
    f.out.end = e;
    f.out.error = ec;
  }

  void fail(relay_flow& f, std::error_code ec) {
    relay_end e = relay_end::error;
    switch (classify(ec)) {
      case error_kind::canceled: e = relay_end::canceled; break;
      case error_kind::other:  // a stream closed under the relay (stream::close()) is cancelled too
        if (ec == std::errc::bad_file_descriptor) e = relay_end::canceled;
        break;
      case error_kind::reset: e = relay_end::reset; break;
      case error_kind::none:
      case error_kind::timed_out: break;
    }
    ended(f, e, ec);
    abort(relay_end::aborted);
  }

  // Ends every direction still running with `why` and cancels every relay operation in flight
  // (blocked splices included); the sockets are reset once all have completed.
  void abort(relay_end why) {
    if (aborting_) return;
    aborting_ = true;
    for (relay_flow& f : flows_) ended(f, why, {});
    abort_.request_stop();
    for (relay_flow& f : flows_) {
      f.has_data.notify(*ring_);
      f.has_room.notify(*ring_);
    }
  }

  // ---- the watchdog ----------------------------------------------------------------------
  // Aborts when a deadline has passed, else arms the timer for the earliest one. Only while the
  // timer is not armed.
  void check() {
    if (!flows_[0].running && !flows_[1].running) return;
    const auto now = clock::now();
    if (!stop_seen_ && stop_requested_ && stop_requested_(token_)) {
      stop_seen_ = true;
      stop_deadline_ = deadline_after(now, opts_.stop_grace);
    }
    clock::time_point when = stop_deadline_;
    relay_end why = relay_end::canceled;
    const auto consider = [&](clock::time_point t, relay_end e) {
      if (t < when) {
        when = t;
        why = e;
      }
    };
    consider(half_deadline_, relay_end::half_close_timeout);
    if (opts_.idle_timeout != no_timeout) {
      clock::time_point quiet = clock::time_point::min();  // the latest byte either way
      for (const relay_flow& f : flows_)
        if (f.running) quiet = std::max(quiet, f.last);
      for (const relay_flow& f : flows_)
        if (f.running) consider(deadline_after(f.buffered ? f.last : quiet, opts_.idle_timeout),
                             relay_end::idle_timeout);
    }
    if (when <= now) {
      abort(why);
      return;
    }
    // Without a deadline the timer still runs while a stop can come: it is what the stop cancels.
    if (when == clock::time_point::max() && (!stop_requested_ || stop_seen_)) return;
    arm(std::min(when, now + std::chrono::hours(24)));
  }

  void arm(clock::time_point t) noexcept {
    ts_ = to_timespec(t.time_since_epoch());
    io_uring_prep_timeout(timer_.start(*ring_), &ts_, 0, IORING_TIMEOUT_ABS);
  }

  // A deadline may have moved earlier: have the timer fire now (its CQE runs check()).
  void poke() {
    if (timer_.in_flight())
      timer_.cancel();
    else
      check();
  }

  // Expired, cancelled by a stop request, or poked: whatever the reason, check.
  void on_timer(int, std::uint32_t) noexcept {
    if (ring_->draining()) return;
    if (finished_) {
      if (timer_waiter_) std::exchange(timer_waiter_, {}).resume();
      return;
    }
    check();
  }

  pinned_socket a_;
  pinned_socket b_;
  ring* ring_;
  relay_options opts_;
  relay_flow flows_[2];  // a → b, b → a
  inplace_stop_source abort_;  // stops every relay operation in flight
  member_request<relay_core, &relay_core::on_timer> timer_;
  canceller user_stop_;        // the caller's stop cancels the watchdog timer
  const void* token_ = nullptr;
  bool (*stop_requested_)(const void*) noexcept = nullptr;
  clock::time_point start_{};
  clock::time_point stop_deadline_ = clock::time_point::max();
  clock::time_point half_deadline_ = clock::time_point::max();
  __kernel_timespec ts_{};
  std::coroutine_handle<> timer_waiter_;
  bool stop_seen_ = false;
  bool aborting_ = false;
  bool finished_ = false;
};

template <stoppable_token Token>
task<relay_result> relay_on(pinned_socket a, pinned_socket b, relay_options options, Token token) {
  relay_core core(std::move(a), std::move(b), options);
  if (const std::error_code ec = core.usable()) {
    core.refuse(ec);
    co_return co_await core.close(true);
  }
  core.watch(token);
  stop_registration<Token> on_stop;
  on_stop.arm(token, core.stop_canceller());
  std::exception_ptr failure;  // only a frame allocation can throw; the timer must still settle
  try {
    co_await core.run();
  } catch (...) {
    failure = std::current_exception();
  }
  on_stop.disarm();
  co_await core.quiesce();
  relay_result r = co_await core.close(failure != nullptr);
  if (failure) std::rethrow_exception(failure);
  co_return r;
}

}  // namespace detail

/// Copies a → b and b → a concurrently until both directions ended, then closes both streams:
/// cleanly when both FINs were forwarded, with RST on both otherwise (see the header comment and
/// relay_options for timeouts). A stop request through `token` resets both sides once
/// options.stop_grace has passed without the connection ending by itself. Both streams must
/// belong to the same io_context, with no other operation in flight on them (else both
/// directions end `error`, bad_file_descriptor); the relay owns them until it returns, and they
/// are closed afterwards. They may be moved or destroyed meanwhile: the relay then ends
/// `canceled` and resets both sockets.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<relay_result> relay(stream& a, stream& b, relay_options options = {},
                                       Token token = {}) {
  return detail::relay_on(detail::pinned_socket(a), detail::pinned_socket(b), options, std::move(token));
}

RINGNET_END_NAMESPACE
