// Connecting by host name: Happy Eyeballs version 2 over resolve() and connect().
//
// connect(ctx, "host:port") and connect(ctx, host, port) look AAAA and A up concurrently and race
// connection attempts over the answers; connect_any() races over endpoints already resolved.
// Optional like <ringnet/resolve.hpp> (c-ares), which it includes.
//
// The race:
// - An AAAA answer lets attempts start at once; an A answer that comes first waits up to
//   resolution_delay for the AAAA one. Answers that come while attempts run join the race.
// - The families alternate, IPv6 first for names (for connect_any, the first endpoint's family
//   first), each family in the resolver's (or the caller's) order.
// - A new attempt starts every attempt_delay while the earlier ones are pending, and at once
//   when one fails.
// - The first connection established wins. Every other attempt is stopped (a connection that
//   completed anyway is closed), and the call returns only once each has ended: no socket of a
//   losing attempt is left, in SYN-SENT or otherwise.
// - options.timeout bounds all of it (timed_out); a stop ends it with operation_canceled.
//
// It is built from connect(), sleep_until() and stop sources: each attempt and the lookup run as
// coroutines spawned on the context, and the call's own coroutine decides what happens next,
// woken by a timer or by them (a stop source per wait, which they request).
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/resolve.hpp>
#include <ringnet/spawn.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/stream.hpp>
#include <ringnet/task.hpp>
#include <ringnet/timer.hpp>

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

RINGNET_BEGIN_NAMESPACE

struct happy_eyeballs_options {
  /// Bounds everything: the lookup and every attempt (timed_out past it).
  std::chrono::nanoseconds timeout = std::chrono::seconds(30);
  /// Between the starts of two attempts while earlier ones are pending (at least 10 ms).
  std::chrono::nanoseconds attempt_delay = std::chrono::milliseconds(250);
  /// How long an A answer that came first waits for the AAAA answer.
  std::chrono::nanoseconds resolution_delay = std::chrono::milliseconds(50);
  /// TCP_NODELAY on the connection.
  bool nodelay = false;
  /// The lookup's servers, family (v4 or v6 narrows the race to one family), tries and timeout
  /// (within the overall one).
  resolve_options lookup{};
};

/// One attempt of a race: where to, when it started (since the call began), and how it ended:
/// no error for the winner, operation_canceled for an attempt stopped because another won (or
/// the call was stopped), timed_out for one the overall timeout ended, else what its connect()
/// returned.
struct connect_attempt {
  endpoint to;
  std::chrono::nanoseconds started_after{};
  std::error_code error;
};

/// What connect by name and connect_any return: a result<stream>, with the endpoint that won and
/// every attempt made; on failure, what() says for which target and what each attempt got.
class connect_result : public result<stream> {
 public:
  connect_result(stream s, std::vector<connect_attempt> attempts, std::size_t winner,
                 std::vector<endpoint> resolved = {}, std::chrono::seconds ttl = {}) noexcept
      : result(std::move(s)), attempts_(std::move(attempts)), winner_(winner),
        resolved_(std::move(resolved)), ttl_(ttl) {}
  connect_result(std::error_code ec, std::string what, std::vector<connect_attempt> attempts,
                 std::vector<endpoint> resolved = {}, std::chrono::seconds ttl = {}) noexcept
      : result(ec), attempts_(std::move(attempts)), what_(std::move(what)),
        resolved_(std::move(resolved)), ttl_(ttl) {}

  /// The endpoint connected to (a default endpoint on failure, or once moved from).
  [[nodiscard]] endpoint peer() const noexcept {
    return has_value() && winner_ < attempts_.size() ? attempts_[winner_].to : endpoint();
  }
  /// Every attempt, in the order they started.
  [[nodiscard]] const std::vector<connect_attempt>& attempts() const noexcept { return attempts_; }
  /// On failure, e.g. `connecting to "example.test:80": connection refused ([::1]:80: connection
  /// refused; 127.0.0.1:80: connection refused)`; empty on success.
  [[nodiscard]] const std::string& what() const noexcept { return what_; }
  /// Connecting by name: every address the lookup answered (IPv6 first), tried or not, and the
  /// smallest TTL of their records — what a caller may keep and race again with connect_any
  /// until the TTL passes (a family whose answer had not come when the race was decided is not
  /// among them). Empty, with a TTL of 0, when no lookup ran (connect_any, numeric hosts,
  /// localhost) or none answered.
  [[nodiscard]] const std::vector<endpoint>& resolved() const noexcept { return resolved_; }
  [[nodiscard]] std::chrono::seconds ttl() const noexcept { return ttl_; }

 private:
  std::vector<connect_attempt> attempts_;
  std::size_t winner_ = 0;
  std::string what_;
  std::vector<endpoint> resolved_;
  std::chrono::seconds ttl_{0};
};

namespace detail {

using race_clock = std::chrono::steady_clock;

struct race_attempt {
  race_attempt(const endpoint& e, std::chrono::nanoseconds after) noexcept : to(e), started_after(after) {}
  endpoint to;
  std::chrono::nanoseconds started_after;
  inplace_stop_source stop;  // the race ends the attempt through it
  std::error_code error;
  bool finished = false;
  bool cut_short = false;  // still running when the race was decided
};

// One family's endpoints, those not tried yet from `next` on, and its lookup's answer.
struct family_queue {
  std::vector<endpoint> endpoints;
  std::size_t next = 0;
  bool answered = true;  // false while its lookup runs
  race_clock::time_point answered_at{};
  std::error_code error;
  const char* detail = nullptr;
  std::chrono::seconds ttl{0};
  [[nodiscard]] bool has_next() const noexcept { return next < endpoints.size(); }
};

// What the race's own coroutine and those it spawns (attempts, the lookup) share, through a
// shared_ptr each: spawned coroutines belong to the ring, and a context destroyed mid-race
// destroys their frames in any order. All of it is touched on the ring's thread only, except
// cancel_all, which the caller's stop requests from any thread.
struct connection_race {
  connection_race(io_context& c, happy_eyeballs_options o)
      : ctx(&c), options(std::move(o)), deadline(deadline_after(start, options.timeout)) {}

  io_context* ctx;
  happy_eyeballs_options options;
  race_clock::time_point start = race_clock::now();
  race_clock::time_point deadline;
  std::deque<race_attempt> attempts;  // in start order; a deque keeps their addresses
  family_queue v6, v4;
  int first_family = AF_INET6;
  int last_family = AF_UNSPEC;  // of the latest attempt
  race_clock::time_point next_start = start;
  std::size_t running = 0;  // spawned coroutines not finished
  bool lookup_running = false;
  bool ending = false;  // decided: whatever connects from now on is closed
  std::optional<stream> winner;
  std::size_t winner_index = 0;
  std::error_code last_failure;  // of the attempt that failed last
  std::exception_ptr error;
  inplace_stop_source lookup_stop;
  inplace_stop_source cancel_all;
  std::optional<inplace_stop_source> wake;  // ends the race's current wait

  [[nodiscard]] family_queue& queue(int family) noexcept { return family == AF_INET6 ? v6 : v4; }
  void notify() noexcept {
    if (wake) wake->request_stop();
  }
};

struct request_stop_of {
  inplace_stop_source* source;
  void operator()() const noexcept { source->request_stop(); }
};

// Until `t`, or until an attempt or the lookup reports (or, if `stoppable`, the caller stops).
inline task<void> wait_for_news(connection_race& s, race_clock::time_point t, bool stoppable) {
  s.wake.emplace();
  {
    std::optional<inplace_stop_callback<request_stop_of>> on_stop;
    if (stoppable) on_stop.emplace(s.cancel_all.get_token(), request_stop_of{&*s.wake});
    (void)co_await sleep_until(*s.ctx, t, s.wake->get_token());
  }
  s.wake.reset();
}

inline task<void> run_attempt(std::shared_ptr<connection_race> st, std::size_t index) {
  race_attempt& a = st->attempts[index];
  try {
    connect_options o;
    o.timeout = until(st->deadline);
    o.nodelay = st->options.nodelay;
    result<stream> s = co_await connect(*st->ctx, a.to, o, a.stop.get_token());
    if (!s) {
      a.error = s.error();
      if (!st->ending) {
        st->last_failure = a.error;
        st->next_start = race_clock::now();  // a failure starts the next attempt at once
      }
    } else if (st->winner || st->ending) {
      a.error = std::make_error_code(std::errc::operation_canceled);
      (void)co_await s->close();
    } else {
      st->winner.emplace(std::move(*s));
      st->winner_index = index;
    }
  } catch (...) {
    if (!st->error) st->error = std::current_exception();
  }
  a.finished = true;
  --st->running;
  st->notify();
}

struct race_lookup_sink {
  connection_race* st;
  void answer(dns_answer&& a) noexcept {
    family_queue& q = st->queue(a.family);
    q.answered = true;
    q.answered_at = race_clock::now();
    q.endpoints = std::move(a.endpoints);
    q.error = a.error;
    q.detail = a.detail;
    q.ttl = a.ttl;
    st->notify();
  }
};

inline task<void> run_lookup(std::shared_ptr<connection_race> st, std::string host, std::uint16_t port,
                             std::vector<int> families) {
  race_lookup_sink sink{st.get()};
  try {
    resolve_options o = st->options.lookup;
    o.timeout = std::min(o.timeout, until(st->deadline));
    co_await run_lookups(*st->ctx, std::move(host), port, std::move(o), std::move(families), sink,
                         st->lookup_stop.get_token());
  } catch (...) {
    if (!st->error) st->error = std::current_exception();
  }
  st->lookup_running = false;
  --st->running;
  st->notify();
}

// The next endpoint to try: the families alternate, starting with first_family.
inline const endpoint* take_next(connection_race& s) noexcept {
  const int turn = s.last_family == AF_UNSPEC ? s.first_family : s.last_family == AF_INET6 ? AF_INET : AF_INET6;
  const int other = turn == AF_INET6 ? AF_INET : AF_INET6;
  for (int family : {turn, other}) {
    family_queue& q = s.queue(family);
    if (!q.has_next()) continue;
    s.last_family = family;
    return &q.endpoints[q.next++];
  }
  return nullptr;
}

inline void start_attempt(const std::shared_ptr<connection_race>& st, race_clock::time_point now,
                          std::chrono::nanoseconds delay) {
  connection_race& s = *st;
  const endpoint* to = take_next(s);
  RINGNET_ASSERT(to, "start_attempt() with no endpoint left");
  s.attempts.emplace_back(*to, now - s.start);
  s.next_start = now + delay;
  spawn(*s.ctx, run_attempt(st, s.attempts.size() - 1));
  ++s.running;
}

inline std::string describe_race_failure(std::string_view target, std::error_code ec,
                                         const std::vector<connect_attempt>& attempts,
                                         const std::string& lookup_failure) {
  std::string s = "connecting to ";
  s.append(target);
  s += ": ";
  s += lookup_failure.empty() ? ec.message() : lookup_failure;
  for (std::size_t i = 0; i < attempts.size(); ++i) {
    s += i == 0 ? " (" : "; ";
    s += attempts[i].to.to_string();
    s += ": ";
    s += attempts[i].error.message();
  }
  if (!attempts.empty()) s += ")";
  return s;
}

// Why a lookup of both families gave nothing to try: the more telling answer (anything but
// no_data), A's first.
inline std::pair<std::error_code, const char*> lookup_failure(const connection_race& s) noexcept {
  const std::error_code no_data = make_error_code(resolve_errc::no_data);
  for (const family_queue* q : {&s.v4, &s.v6})
    if (q->error && q->error != no_data) return {q->error, q->detail};
  return {no_data, nullptr};
}

template <stoppable_token Token>
task<connect_result> run_race(std::shared_ptr<connection_race> st, std::string target, std::string host,
                              Token token) {
  connection_race& s = *st;
  [[maybe_unused]] const stop_callback_for_t<Token, request_stop_of> on_stop(token, request_stop_of{&s.cancel_all});
  const std::chrono::nanoseconds attempt_delay = std::max<std::chrono::nanoseconds>(s.options.attempt_delay, std::chrono::milliseconds(10));
  const std::chrono::nanoseconds resolution_delay = std::max<std::chrono::nanoseconds>(s.options.resolution_delay, {});
  std::error_code ended;  // canceled or timed_out; none when decided by the attempts
  while (!s.winner) {
    if (s.cancel_all.stop_requested()) {
      ended = std::make_error_code(std::errc::operation_canceled);
      break;
    }
    const race_clock::time_point now = race_clock::now();
    if (now >= s.deadline) {
      ended = std::make_error_code(std::errc::timed_out);
      break;
    }
    const bool v6_known = s.v6.answered || !s.lookup_running;
    const bool v4_known = s.v4.answered || !s.lookup_running;
    const bool candidates = s.v6.has_next() || s.v4.has_next();
    if (!candidates && v6_known && v4_known && s.running == 0) break;  // every attempt failed
    const race_clock::time_point v4_waited = deadline_after(s.v4.answered_at, resolution_delay);
    const bool may_connect = v6_known || (s.v4.answered && now >= v4_waited);
    race_clock::time_point wake_at = std::min(s.deadline, now + std::chrono::hours(24));
    if (may_connect && candidates) {
      if (now >= s.next_start) {
        start_attempt(st, now, attempt_delay);
        continue;
      }
      wake_at = std::min(wake_at, s.next_start);
    } else if (!may_connect && s.v4.answered) {
      wake_at = std::min(wake_at, v4_waited);
    }
    co_await wait_for_news(s, wake_at, true);
  }
  s.ending = true;
  for (race_attempt& a : s.attempts) {
    if (a.finished) continue;
    a.stop.request_stop();
    a.cut_short = true;
  }
  s.lookup_stop.request_stop();
  while (s.running > 0) co_await wait_for_news(s, race_clock::now() + std::chrono::hours(24), false);
  if (s.error) std::rethrow_exception(s.error);

  std::vector<connect_attempt> attempts;
  attempts.reserve(s.attempts.size());
  std::vector<endpoint> resolved;  // what a lookup answered
  std::chrono::seconds ttl = resolve_result::forever;
  if (!host.empty()) {
    for (const family_queue* q : {&s.v6, &s.v4}) {
      if (!q->answered || q->error || q->endpoints.empty()) continue;
      resolved.insert(resolved.end(), q->endpoints.begin(), q->endpoints.end());
      ttl = std::min(ttl, q->ttl);
    }
  }
  if (resolved.empty()) ttl = std::chrono::seconds(0);
  for (const race_attempt& a : s.attempts) {
    // An attempt the overall timeout cut short timed out; one a winner or a stop cut short was
    // canceled.
    const bool timed_out = a.cut_short && ended == std::errc::timed_out && a.error == std::errc::operation_canceled;
    attempts.push_back({a.to, a.started_after, timed_out ? std::make_error_code(std::errc::timed_out) : a.error});
  }
  if (s.winner)
    co_return connect_result(std::move(*s.winner), std::move(attempts), s.winner_index, std::move(resolved), ttl);
  std::string lookup_text;
  if (!ended && attempts.empty()) {
    const auto [ec, why] = lookup_failure(s);
    ended = ec;
    lookup_text = describe_lookup_failure(host, ec, why);
  }
  const std::error_code ec = ended ? ended : s.last_failure;
  std::string what = describe_race_failure(target, ec, attempts, lookup_text);
  co_return connect_result(ec, std::move(what), std::move(attempts), std::move(resolved), ttl);
}

inline connect_result unstarted_race(std::string_view target, std::error_code ec) {
  return connect_result(ec, describe_race_failure(target, ec, {}, {}), {});
}

template <stoppable_token Token>
task<connect_result> race_endpoints(io_context& ctx, std::vector<endpoint> to, std::string target,
                                    happy_eyeballs_options options, Token token) {
  if (to.empty()) co_return unstarted_race(target, std::make_error_code(std::errc::invalid_argument));
  auto st = std::make_shared<connection_race>(ctx, std::move(options));
  st->first_family = to.front().is_v6() ? AF_INET6 : AF_INET;
  for (const endpoint& e : to) st->queue(e.is_v6() ? AF_INET6 : AF_INET).endpoints.push_back(e);
  co_return co_await run_race(std::move(st), std::move(target), std::string(), std::move(token));
}

inline std::string host_port_text(std::string_view host, std::uint16_t port) {
  const bool bare_v6 = host.find(':') != std::string_view::npos && host.front() != '[';
  std::string s = "\"";
  if (bare_v6) s += "[";
  s += printable(host);
  if (bare_v6) s += "]";
  s += ":" + std::to_string(port) + "\"";
  return s;
}

template <stoppable_token Token>
task<connect_result> race_host(io_context& ctx, std::string host, std::uint16_t port,
                               happy_eyeballs_options options, Token token) {
  std::string target = host_port_text(host, port);
  if (port == 0) co_return unstarted_race(target, make_error_code(endpoint_errc::bad_port));
  if (token.stop_requested()) co_return unstarted_race(target, std::make_error_code(std::errc::operation_canceled));
  if (std::optional<endpoint> e = numeric_host(host, port)) {
    if (!has_family(*e, options.lookup.family)) co_return unstarted_race(target, make_error_code(resolve_errc::no_data));
    std::vector<endpoint> one{*e};  // a named local: GCC cannot keep a braced list's array across co_await
    co_return co_await race_endpoints(ctx, std::move(one), std::move(target), std::move(options), std::move(token));
  }
  if (is_localhost(host)) {
    co_return co_await race_endpoints(ctx, localhost_endpoints(options.lookup.family, port), std::move(target),
                                      std::move(options), std::move(token));
  }
  if (!valid_host_name(host)) co_return unstarted_race(target, make_error_code(resolve_errc::bad_name));
  auto st = std::make_shared<connection_race>(ctx, std::move(options));
  std::vector<int> families;
  if (st->options.lookup.family != address_family::v4) {
    families.push_back(AF_INET6);
    st->v6.answered = false;
  }
  if (st->options.lookup.family != address_family::v6) {
    families.push_back(AF_INET);
    st->v4.answered = false;
  }
  st->lookup_running = true;
  spawn(ctx, run_lookup(st, host, port, std::move(families)));
  ++st->running;
  co_return co_await run_race(std::move(st), std::move(target), std::move(host), std::move(token));
}

// "host:port", "[v6]:port": the host (brackets kept) and the port.
inline result<std::pair<std::string_view, std::uint16_t>> split_host_port(std::string_view text) noexcept {
  if (text.empty()) return make_error_code(endpoint_errc::empty);
  std::string_view host, port;
  if (text.front() == '[') {
    const std::size_t close = text.find(']');
    if (close == std::string_view::npos) return make_error_code(endpoint_errc::missing_bracket);
    host = text.substr(0, close + 1);
    const std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return make_error_code(endpoint_errc::missing_port);
    port = rest.substr(1);
  } else {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return make_error_code(endpoint_errc::missing_port);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return make_error_code(endpoint_errc::missing_bracket);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || port.size() > 5 || ec != std::errc{} || end != port.data() + port.size() || value > 65535)
    return make_error_code(endpoint_errc::bad_port);
  return std::pair{host, static_cast<std::uint16_t>(value)};
}

template <stoppable_token Token>
task<connect_result> race_host_port(io_context& ctx, std::string text, happy_eyeballs_options options, Token token) {
  const auto split = split_host_port(text);
  if (!split) co_return unstarted_race("\"" + printable(text) + "\"", split.error());
  co_return co_await race_host(ctx, std::string(split->first), split->second, std::move(options), std::move(token));
}

}  // namespace detail

/// Connects to `host` (a name, or a numeric address answered without a lookup) on `port`,
/// racing IPv6 and IPv4 attempts as the header comment describes. Port 0 is bad_port.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<connect_result> connect(io_context& ctx, std::string_view host, std::uint16_t port,
                                           happy_eyeballs_options options = {}, Token token = {}) {
  // Not coroutines themselves: the task is lazy, and the caller's string may be gone by its start.
  return detail::race_host(ctx, std::string(host), port, std::move(options), std::move(token));
}
/// The same for "host:port" or "[IPv6]:port"; a malformed one is an endpoint_errc.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<connect_result> connect(io_context& ctx, std::string_view host_and_port,
                                           happy_eyeballs_options options = {}, Token token = {}) {
  return detail::race_host_port(ctx, std::string(host_and_port), std::move(options), std::move(token));
}

/// Races attempts over endpoints already resolved, in the same way (no lookup, so no
/// resolution_delay): families alternate starting with that of `to.front()`. An empty list is
/// invalid_argument.
template <stoppable_token Token = never_stop_token>
[[nodiscard]] task<connect_result> connect_any(io_context& ctx, std::span<const endpoint> to,
                                               happy_eyeballs_options options = {}, Token token = {}) {
  std::string target = std::to_string(to.size()) + (to.size() == 1 ? " endpoint" : " endpoints");
  return detail::race_endpoints(ctx, std::vector<endpoint>(to.begin(), to.end()), std::move(target),
                                std::move(options), std::move(token));
}

RINGNET_END_NAMESPACE
