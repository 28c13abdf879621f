// relay: half-close forwarded each way, resets propagated each way, idle and half-close timeouts,
// cancellation, 1 GiB verified through each data path, 1,000 relayed connections at once.
// The peers are plain blocking sockets on their own threads (or ringnet servers for the crowd);
// every case runs on both data paths and accounts for every descriptor.
#include <fcntl.h>

#include <filesystem>
#include <functional>
#include <thread>

#include "tcp_support.hpp"

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
#else
constexpr bool sanitized = false;
#endif

constexpr rn::relay_path paths[] = {rn::relay_path::copy, rn::relay_path::splice};

std::string name(rn::relay_path p) { return p == rn::relay_path::copy ? "copy" : "splice"; }

// client (plain socket) ⇄ a [relay] b ⇄ upstream (plain socket)
struct relayed {
  rn::stream a;
  rn::stream b;
  int client = -1;
  int upstream = -1;
  relayed() = default;
  relayed(const relayed&) = delete;
  relayed& operator=(const relayed&) = delete;
  relayed(relayed&& o) noexcept
      : a(std::move(o.a)), b(std::move(o.b)), client(std::exchange(o.client, -1)),
        upstream(std::exchange(o.upstream, -1)) {}
  ~relayed() {
    if (client >= 0) ::close(client);
    if (upstream >= 0) ::close(upstream);
  }
};

struct rig {
  rn::io_context ctx{test::context_options()};
  rn::listener front = *rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
  test::raw_listener up;

  relayed connect() {
    relayed r;
    r.client = test::raw_connect(*front.local_endpoint());
    // Under fault injection an accept or a connect may fail before the kernel saw it: retried
    // (the client waits in the backlog meanwhile), since setting up is not what is tested.
    for (int i = 0; i < 20 && !r.a.is_open(); ++i) {
      auto a = rn::sync_wait(ctx, front.accept());
      if (a) r.a = std::move(*a);
    }
    REQUIRE(r.a.is_open());
    for (int i = 0; i < 20 && !r.b.is_open(); ++i) {
      auto b = rn::sync_wait(ctx, rn::connect(ctx, up.endpoint(), {.timeout = 10s}));
      if (b) r.b = std::move(*b);
    }
    REQUIRE(r.b.is_open());
    r.upstream = up.accept_one();
    REQUIRE(r.upstream >= 0);
    return r;
  }
};

// Runs body(path, rig) once per data path, each with its own context and descriptor count.
template <class Body>
void on_each_path(Body body) {
  for (const auto path : paths) {
    CAPTURE(name(path));
    test::fd_leak_check fds;
    rig g;
    body(path, g);
  }
}

bool read_exactly(int fd, std::string& out, std::size_t n) {
  out.resize(n);
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<std::size_t>(r);
  }
  return true;
}

// After our RST a peer's next recv fails with ECONNRESET, or, if it had already read our FIN,
// its send fails (EPIPE: an RST reaching a socket in CLOSE_WAIT shows up there as EPIPE, not ECONNRESET).
bool saw_reset(int fd) {
  char c;
  for (;;) {
    const ssize_t r = ::recv(fd, &c, 1, 0);
    if (r > 0 || (r < 0 && errno == EINTR)) continue;
    if (r < 0) return errno == ECONNRESET;
    break;  // EOF first: the RST shows on send
  }
  for (int i = 0; i < 100; ++i) {
    if (::send(fd, &c, 1, MSG_NOSIGNAL) < 0) return errno == EPIPE || errno == ECONNRESET;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

// Runs the relay while another thread runs `script` and then waits for each peer to see the
// reset that must end it, `after` the start (and within 2 s more).
template <class Token = rn::never_stop_token>
rn::relay_result relay_until_reset(rn::io_context& ctx, relayed& r, const rn::relay_options& o,
                                   std::chrono::nanoseconds after,
                                   const std::function<void()>& script = [] {}, Token token = {}) {
  bool client_reset = false, upstream_reset = false;
  std::jthread peers([&] {
    script();
    client_reset = saw_reset(r.client);
    upstream_reset = saw_reset(r.upstream);
  });
  const auto res = rn::sync_wait(ctx, rn::relay(r.a, r.b, o, token));
  peers.join();
  CHECK(res.elapsed >= after);
  CHECK(res.elapsed < after + 2s);
  CHECK(client_reset);
  CHECK(upstream_reset);
  return res;
}

// A reproducible byte stream: the receiver regenerates what the sender sent and compares every
// byte; both sides also fold the stream into a 64-bit checksum.
class byte_stream {
 public:
  static constexpr std::size_t chunk = 256 * 1024;
  explicit byte_stream(std::uint64_t seed) : x_(seed * 0x9E3779B97F4A7C15ull | 1), words_(chunk / 8) {
    next();
  }
  const char* data() const { return reinterpret_cast<const char*>(words_.data()); }
  void next() {
    for (std::uint64_t& w : words_) {
      x_ ^= x_ << 13;
      x_ ^= x_ >> 7;
      x_ ^= x_ << 17;
      w = x_;
      sum_ = (sum_ ^ w) * 0x100000001b3ull;
    }
  }
  std::uint64_t checksum() const { return sum_; }

 private:
  std::uint64_t x_;
  std::uint64_t sum_ = 0xcbf29ce484222325ull;
  std::vector<std::uint64_t> words_;
};

struct bulk_result {
  std::uint64_t bytes = 0;
  std::uint64_t checksum = 0;
  bool matched = true;
  int error = 0;
};

// Sends `total` bytes of the stream, then FIN. `total` is a multiple of byte_stream::chunk.
bulk_result send_stream(int fd, std::uint64_t total, std::uint64_t seed) {
  bulk_result out;
  byte_stream s(seed);
  while (out.bytes < total) {
    std::size_t off = 0;
    while (off < byte_stream::chunk) {
      const ssize_t n = ::send(fd, s.data() + off, byte_stream::chunk - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        out.error = errno;
        return out;
      }
      off += static_cast<std::size_t>(n);
    }
    out.bytes += byte_stream::chunk;
    out.checksum = s.checksum();
    s.next();
  }
  ::shutdown(fd, SHUT_WR);
  return out;
}

// Reads to EOF, comparing against the regenerated stream.
bulk_result recv_stream(int fd, std::uint64_t seed) {
  bulk_result out;
  byte_stream s(seed);
  std::vector<char> buf(512 * 1024);
  std::size_t pos = 0;  // within the current chunk
  for (;;) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      out.error = n < 0 ? errno : 0;
      return out;
    }
    std::size_t used = 0;
    while (used < static_cast<std::size_t>(n)) {
      const std::size_t take = std::min(static_cast<std::size_t>(n) - used, byte_stream::chunk - pos);
      if (std::memcmp(buf.data() + used, s.data() + pos, take) != 0) out.matched = false;
      used += take;
      pos += take;
      out.bytes += take;
      if (pos == byte_stream::chunk) {
        out.checksum = s.checksum();
        s.next();
        pos = 0;
      }
    }
  }
}

// Writes `data`, half-closes, reads to the end. A reset reaches a socket's first call after it
// only: when that was the write, the read finds EOF, so the write's failure is carried over.
test::read_result write_then_read(int fd, const std::string& data) {
  const bool wrote = test::write_all(fd, data);
  CHECK(wrote);
  ::shutdown(fd, SHUT_WR);
  test::read_result got = test::read_to_end(fd);
  if (!wrote && got.error == 0) got.error = EPIPE;
  return got;
}

// What must hold however the relay ended, whatever the kernel returned (fatal under faults):
// each peer received a prefix of what the other sent, in order; a peer that read a clean EOF
// received all of it (a broken connection shows as a reset, never as a truncated stream); a clean
// ending delivered everything both ways, and counted it.
void check_delivery(const rn::relay_result& res, const std::string& a_sent, const test::read_result& b_got,
                    const std::string& b_sent, const test::read_result& a_got) {
  const auto one_way = [&](const char* way, const std::string& sent, const test::read_result& got,
                           const rn::relay_direction_result& dir) {
    const std::string at = std::string(way) + " (" + std::string(rn::to_string(dir.end)) + "): ";
    test::invariant(sent.starts_with(got.data), at + "received bytes that were not sent, or out of order");
    test::invariant(got.error != 0 || got.data.size() == sent.size(),
                    at + "a clean EOF after " + std::to_string(got.data.size()) + " of " +
                        std::to_string(sent.size()) + " bytes");
    test::invariant(!res.clean() || (got.data.size() == sent.size() && dir.bytes == sent.size()),
                    at + "clean() with " + std::to_string(got.data.size()) + " of " +
                        std::to_string(sent.size()) + " bytes received, " + std::to_string(dir.bytes) +
                        " reported");
  };
  one_way("a to b", a_sent, b_got, res.a_to_b);
  one_way("b to a", b_sent, a_got, res.b_to_a);
}

}  // namespace

TEST_CASE("relay: a half-close is forwarded each way; the half-closed side still gets the whole answer") {
  for (const auto path : paths) {
    for (const bool client_first : {true, false}) {
      CAPTURE(name(path));
      CAPTURE(client_first);
      test::fd_leak_check fds;
      rig g;
      auto r = g.connect();
      const int first = client_first ? r.client : r.upstream;  // sends, then FIN, then reads
      const int second = client_first ? r.upstream : r.client;  // reads to EOF, then answers
      const std::string question = test::pattern(100'000, 1);
      const std::string answer = test::pattern(3'000'000, 2);
      test::read_result first_got, second_got;
      std::jthread asker([&] { first_got = write_then_read(first, question); });
      std::jthread answerer([&] {
        second_got = test::read_to_end(second);  // answers only after the forwarded EOF
        CHECK(test::write_all(second, answer));
        ::shutdown(second, SHUT_WR);
      });
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path}));
      asker.join();
      answerer.join();
      check_delivery(res, client_first ? question : answer, client_first ? second_got : first_got,
                     client_first ? answer : question, client_first ? first_got : second_got);
      CHECK(res.clean());
      CHECK((client_first ? res.a_to_b : res.b_to_a).bytes == question.size());
      CHECK((client_first ? res.b_to_a : res.a_to_b).bytes == answer.size());
      CHECK(second_got.error == 0);
      CHECK(second_got.data == question);
      CHECK(first_got.error == 0);  // a clean EOF, no RST
      CHECK(first_got.data == answer);
      CHECK_FALSE(r.a.is_open());
      CHECK_FALSE(r.b.is_open());
    }
  }
}

TEST_CASE("relay: many short exchanges, each delivered whole or visibly broken") {
  // Small, so that under fault injection (RINGNET_FAULT_RATE) most relays still end cleanly and
  // check_delivery() sees both kinds of ending.
  on_each_path([&](rn::relay_path path, rig& g) {
    int clean = 0;
    constexpr int n = 24;
    for (int i = 0; i < n; ++i) {
      CAPTURE(i);
      auto r = g.connect();
      const auto seed = static_cast<std::uint32_t>(i);
      const std::string up = test::pattern(1 + (seed * 7919u) % 40'000, seed);
      const std::string down = test::pattern(1 + (seed * 104729u) % 40'000, seed + 1000);
      test::read_result client_got, upstream_got;
      std::jthread client([&] { client_got = write_then_read(r.client, up); });
      std::jthread upstream([&] { upstream_got = write_then_read(r.upstream, down); });
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path, .buffer_size = 16 * 1024}));
      client.join();
      upstream.join();
      check_delivery(res, up, upstream_got, down, client_got);
      CHECK(res.clean());
      clean += res.clean();
    }
    MESSAGE(name(path) << ": " << clean << " of " << n << " relays clean");
  });
}

TEST_CASE("relay: a reset on one side resets the other, each way") {
  for (const auto path : paths) {
    for (const bool client_resets : {true, false}) {
      CAPTURE(name(path));
      CAPTURE(client_resets);
      test::fd_leak_check fds;
      rig g;
      auto r = g.connect();
      int& breaker = client_resets ? r.client : r.upstream;
      int& victim = client_resets ? r.upstream : r.client;
      bool victim_saw_reset = false;
      std::string hello;
      std::jthread peers([&] {
        CHECK(test::write_all(breaker, "hello"));
        CHECK(read_exactly(victim, hello, 5));  // the relay is moving bytes
        test::set_linger_rst(breaker);
        ::close(std::exchange(breaker, -1));
        victim_saw_reset = saw_reset(victim);
      });
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path}));
      peers.join();
      CHECK(hello == "hello");
      CHECK(victim_saw_reset);
      CHECK_FALSE(res.clean());
      const auto& broken = client_resets ? res.a_to_b : res.b_to_a;
      const auto& other = client_resets ? res.b_to_a : res.a_to_b;
      CHECK(broken.end == rn::relay_end::reset);
      CHECK(broken.error == std::errc::connection_reset);
      CHECK(other.end == rn::relay_end::aborted);
      CHECK(broken.bytes == 5);
    }
  }
}

TEST_CASE("relay: an idle connection times out and both sides are reset") {
  on_each_path([&](rn::relay_path path, rig& g) {
    auto r = g.connect();
    const auto res = relay_until_reset(g.ctx, r, {.path = path, .idle_timeout = 300ms}, 300ms);
    CHECK(res.a_to_b.end == rn::relay_end::idle_timeout);
    CHECK(res.b_to_a.end == rn::relay_end::idle_timeout);
  });
}

TEST_CASE("relay: a quiet side is not idle while the other streams; a stalled one is") {
  on_each_path([&](rn::relay_path path, rig& g) {
    {  // a download: the client says nothing while the upstream trickles for 4 idle periods
      auto r = g.connect();
      test::read_result client_got;
      std::jthread upstream([&] {
        for (int i = 0; i < 16; ++i) {
          CHECK(test::write_all(r.upstream, "tick"));
          std::this_thread::sleep_for(50ms);
        }
        // then silence: the idle timeout ends it
      });
      std::jthread client([&] { client_got = test::read_to_end(r.client); });
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path, .idle_timeout = 200ms}));
      upstream.join();
      client.join();
      CHECK(res.elapsed >= 800ms);
      CHECK(res.b_to_a.bytes == 64);
      CHECK(res.b_to_a.end == rn::relay_end::idle_timeout);
      CHECK(client_got.data.size() == 64);
      CHECK(client_got.error == ECONNRESET);
    }
    {  // the client stops reading but keeps sending: the stalled direction times out
      auto r = g.connect();
      const auto give_up = std::chrono::steady_clock::now() + 10s;
      int upstream_error = 0;
      std::jthread upstream([&] {
        test::bound_io_time(r.upstream, 5);
        const std::string blob(64 * 1024, 'u');
        std::string sink(64 * 1024, '\0');
        // Sends until blocked (the client never reads), reading the client's stream meanwhile.
        ::fcntl(r.upstream, F_SETFL, O_NONBLOCK);
        while (std::chrono::steady_clock::now() < give_up) {
          const ssize_t w = ::send(r.upstream, blob.data(), blob.size(), MSG_NOSIGNAL);
          const int send_errno = errno;
          if (w < 0 && send_errno != EAGAIN) {
            upstream_error = send_errno;
            break;
          }
          const ssize_t n = ::recv(r.upstream, sink.data(), sink.size(), 0);
          const int recv_errno = errno;
          if (n == 0 || (n < 0 && recv_errno != EAGAIN)) {
            upstream_error = n == 0 ? -1 : recv_errno;
            break;
          }
          if (w < 0 && n < 0) std::this_thread::sleep_for(1ms);
        }
      });
      std::jthread client([&] {
        const std::string ping(1024, 'c');
        while (std::chrono::steady_clock::now() < give_up &&
               ::send(r.client, ping.data(), ping.size(), MSG_NOSIGNAL) > 0)
          std::this_thread::sleep_for(20ms);
      });
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path, .buffer_size = 64 * 1024, .idle_timeout = 300ms}));
      upstream.join();
      client.join();
      CHECK(res.b_to_a.end == rn::relay_end::idle_timeout);
      CHECK(res.a_to_b.bytes > 0);
      CHECK(res.elapsed < 300ms + 3s);
      INFO("upstream_error " << upstream_error);
      CHECK((upstream_error == ECONNRESET || upstream_error == EPIPE));
    }
  });
}

TEST_CASE("relay: the half-close timeout bounds how long the other direction stays open") {
  on_each_path([&](rn::relay_path path, rig& g) {
    auto r = g.connect();
    test::read_result upstream_got;
    const auto res = relay_until_reset(
        g.ctx, r, {.path = path, .idle_timeout = 30s, .half_close_timeout = 300ms}, 300ms, [&] {
          CHECK(test::write_all(r.client, "request"));
          ::shutdown(r.client, SHUT_WR);
          upstream_got = test::read_to_end(r.upstream);  // then never answers, never closes
        });
    CHECK(upstream_got.data == "request");
    CHECK(upstream_got.error == 0);
    CHECK(res.a_to_b.end == rn::relay_end::eof);
    CHECK(res.b_to_a.end == rn::relay_end::half_close_timeout);
  });
}

TEST_CASE("relay: a stop from another thread ends a busy relay at once and resets both sides") {
  on_each_path([&](rn::relay_path path, rig& g) {
    auto r = g.connect();
    std::stop_source stop;
    bulk_result sent_up, sent_down;
    bulk_result got_up, got_down;
    // Both directions stream (far more than fits in 200 ms) when the stop comes.
    std::jthread c_send([&] { sent_up = send_stream(r.client, std::uint64_t{1} << 40, 11); });
    std::jthread u_recv([&] { got_up = recv_stream(r.upstream, 11); });
    std::jthread u_send([&] { sent_down = send_stream(r.upstream, std::uint64_t{1} << 40, 12); });
    std::jthread c_recv([&] { got_down = recv_stream(r.client, 12); });
    std::jthread stopper([&] {
      std::this_thread::sleep_for(200ms);
      stop.request_stop();
    });
    const auto t0 = std::chrono::steady_clock::now();
    const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path}, stop.get_token()));
    const auto took = std::chrono::steady_clock::now() - t0;
    for (auto* t : {&c_send, &u_recv, &u_send, &c_recv, &stopper}) t->join();
    CHECK(res.a_to_b.end == rn::relay_end::canceled);
    CHECK(res.b_to_a.end == rn::relay_end::canceled);
    CHECK(took < 200ms + 2s);
    CHECK(res.a_to_b.bytes > 0);
    CHECK(res.b_to_a.bytes > 0);
    // What got through was intact; then each peer saw the reset.
    CHECK(got_up.matched);
    CHECK(got_down.matched);
    // A reset drops what still sat in the relay's socket send queues.
    CHECK(got_up.bytes <= res.a_to_b.bytes);
    CHECK(got_down.bytes <= res.b_to_a.bytes);
    // Each peer's socket reports the reset once, to its reading or its writing thread.
    CHECK((got_up.error == ECONNRESET || sent_down.error == ECONNRESET));
    CHECK((got_down.error == ECONNRESET || sent_up.error == ECONNRESET));
    CHECK((sent_up.error == ECONNRESET || sent_up.error == EPIPE));
    CHECK((sent_down.error == ECONNRESET || sent_down.error == EPIPE));
    MESSAGE(name(path) << ": stopped after " << res.a_to_b.bytes << " + " << res.b_to_a.bytes
                       << " bytes in " << test::ms(took) << " ms");
  });
}

TEST_CASE("relay: with stop_grace a stopped connection may still finish cleanly") {
  on_each_path([&](rn::relay_path path, rig& g) {
    {  // stop requested before the relay starts, no grace: reset at once
      auto r = g.connect();
      std::stop_source stop;
      stop.request_stop();
      const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path}, stop.get_token()));
      CHECK(res.a_to_b.end == rn::relay_end::canceled);
      CHECK(res.b_to_a.end == rn::relay_end::canceled);
      CHECK(saw_reset(r.client));
      CHECK(saw_reset(r.upstream));
    }
    {  // the answer comes within the grace period
      auto r = g.connect();
      rn::inplace_stop_source stop;
      test::read_result client_got;
      std::jthread client([&] {
        CHECK(test::write_all(r.client, "question"));
        ::shutdown(r.client, SHUT_WR);
        client_got = test::read_to_end(r.client);
      });
      std::jthread upstream([&] {
        (void)test::read_to_end(r.upstream);
        std::this_thread::sleep_for(300ms);  // the stop comes meanwhile
        CHECK(test::write_all(r.upstream, "answer"));
        ::shutdown(r.upstream, SHUT_WR);
      });
      std::jthread stopper([&] {
        std::this_thread::sleep_for(100ms);
        stop.request_stop();
      });
      const auto res = rn::sync_wait(
          g.ctx, rn::relay(r.a, r.b, {.path = path, .stop_grace = 5s}, stop.get_token()));
      client.join();
      upstream.join();
      stopper.join();
      CHECK(res.clean());
      CHECK(res.elapsed < 2s);
      CHECK(client_got.data == "answer");
      CHECK(client_got.error == 0);
    }
    {  // the grace period runs out
      auto r = g.connect();
      std::stop_source stop;
      stop.request_stop();
      const auto res = relay_until_reset(g.ctx, r, {.path = path, .stop_grace = 300ms}, 300ms, [] {},
                                         stop.get_token());
      CHECK(res.a_to_b.end == rn::relay_end::canceled);
      CHECK(res.b_to_a.end == rn::relay_end::canceled);
    }
  });
}

TEST_CASE("relay: cancelling a stream (rn::server after its grace period) ends the relay") {
  on_each_path([&](rn::relay_path path, rig& g) {
    auto r = g.connect();
    auto cancel_later = [](rn::io_context& ctx, rn::stream& s) -> rn::task<void> {
      (void)co_await rn::sleep_for(ctx, 100ms);
      s.cancel();  // it must reach a relay waiting for data on either path
    };
    auto body = [&]() -> rn::task<rn::relay_result> {
      rn::spawn(g.ctx, cancel_later(g.ctx, r.a));
      co_return co_await rn::relay(r.a, r.b, {.path = path, .idle_timeout = 3s});
    };
    const auto res = rn::sync_wait(g.ctx, body());
    // Every request on the socket is cancelled on its own, on every kernel.
    CHECK(res.a_to_b.end == rn::relay_end::canceled);
    CHECK(res.b_to_a.end == rn::relay_end::aborted);
    CHECK(res.elapsed < 100ms + 2s);
    CHECK(saw_reset(r.client));
    CHECK(saw_reset(r.upstream));
  });
}

TEST_CASE("relay: idle connections hold no buffer, no pipe and no io-wq kernel thread") {
  constexpr int n = 200;
  test::raise_fd_limit(8 * n + 512);
  const auto threads = [] {
    int t = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) t += e.exists();
    return t;
  };
  const auto& buffers = rn::detail::relay_buffer_pool::local();
  on_each_path([&](rn::relay_path path, rig& g) {
    std::vector<relayed> conns;
    for (int i = 0; i < n; ++i) conns.push_back(g.connect());
    const int fds_before = test::open_fds();
    const int threads_before = threads();
    rn::inplace_stop_source stop;
    int ended = 0, exchanged = 0, during_threads = 0, during_fds = 0;
    std::size_t during_buffers = 0;
    auto one = [&](relayed& c) -> rn::task<void> {
      (void)co_await rn::relay(c.a, c.b, {.path = path}, stop.get_token());
      ++ended;
    };
    auto body = [&]() -> rn::task<void> {
      for (relayed& c : conns) rn::spawn(g.ctx, one(c));
      // One byte each way through every relay, so each direction has had data in flight...
      std::jthread peers([&] {
        for (relayed& c : conns) {
          char x = 'q', y = 0, z = 0;
          if (::send(c.client, &x, 1, MSG_NOSIGNAL) == 1 && ::recv(c.upstream, &y, 1, 0) == 1 &&
              ::send(c.upstream, &x, 1, MSG_NOSIGNAL) == 1 && ::recv(c.client, &z, 1, 0) == 1 &&
              y == 'q' && z == 'q')
            ++exchanged;
        }
      });
      for (int i = 0; i < 2000 && exchanged < n; ++i) (void)co_await rn::sleep_for(g.ctx, 5ms);
      // ...then quiet for longer than a spliced direction keeps its pipe.
      (void)co_await rn::sleep_for(g.ctx, 500ms);
      during_threads = threads();
      during_fds = test::open_fds();
      during_buffers = buffers.outstanding();
      stop.request_stop();
      for (int i = 0; i < 1000 && ended < n; ++i) (void)co_await rn::sleep_for(g.ctx, 5ms);
    };
    rn::sync_wait(g.ctx, body());
    CHECK(exchanged == n);
    CHECK(ended == n);
    CHECK(during_fds == fds_before);     // no pipe left open
    CHECK(during_buffers == 0);          // no copy buffer held
    CHECK(during_threads - threads_before < 8);
    MESSAGE(name(path) << ": " << n << " idle relays after traffic: " << during_fds - fds_before
                       << " extra descriptors, " << during_buffers << " buffers held, "
                       << during_threads - threads_before << " extra threads");
  });
}

TEST_CASE("relay: 1 GiB each way through each data path, every byte verified") {
  // Sanitizers slow the verifying peers (not the relay) by an order of magnitude; under fault
  // injection the relay seldom lives long anyway.
  const bool small = sanitized || test::under_faults();
  const std::uint64_t total = small ? std::uint64_t{64} << 20 : std::uint64_t{1} << 30;
  if (small) MESSAGE("sanitizer build or faults: 64 MiB each way instead of 1 GiB");
  on_each_path([&](rn::relay_path path, rig& g) {
    auto r = g.connect();
    bulk_result sent_up, sent_down, got_up, got_down;
    std::jthread c_send([&] { sent_up = send_stream(r.client, total, 21); });
    std::jthread u_recv([&] { got_up = recv_stream(r.upstream, 21); });
    std::jthread u_send([&] { sent_down = send_stream(r.upstream, total, 22); });
    std::jthread c_recv([&] { got_down = recv_stream(r.client, 22); });
    const auto res = rn::sync_wait(g.ctx, rn::relay(r.a, r.b, {.path = path}));
    for (auto* t : {&c_send, &u_recv, &u_send, &c_recv}) t->join();
    // However it ended: what arrived is intact, in order, never more than the relay reported
    // written, and all of it when the relay says clean or a peer read a clean EOF (neither of
    // the two threads on its socket saw the reset, which reaches only the first call after it).
    const auto delivered = [&](const bulk_result& got, const bulk_result& sent_back,
                               const rn::relay_direction_result& dir) {
      const std::string at = std::string(rn::to_string(dir.end)) + ": " + std::to_string(got.bytes) +
                             " of " + std::to_string(total) + " bytes received, " +
                             std::to_string(dir.bytes) + " reported";
      test::invariant(got.matched, at + ", not the bytes sent");
      test::invariant(got.bytes <= dir.bytes, at);
      test::invariant(!res.clean() || got.bytes == total, at + " though clean()");
      test::invariant(got.error != 0 || sent_back.error != 0 || got.bytes == total, at + " then EOF");
    };
    delivered(got_up, sent_down, res.a_to_b);
    delivered(got_down, sent_up, res.b_to_a);
    CHECK(res.clean());
    CHECK(res.a_to_b.bytes == total);
    CHECK(res.b_to_a.bytes == total);
    for (const bulk_result* b : {&sent_up, &sent_down, &got_up, &got_down}) {
      CHECK(b->error == 0);
      CHECK(b->bytes == total);
      CHECK(b->matched);
    }
    CHECK(got_up.checksum == sent_up.checksum);
    CHECK(got_down.checksum == sent_down.checksum);
    const double secs = std::chrono::duration<double>(res.elapsed).count();
    MESSAGE(name(path) << ": " << (2 * total >> 20) << " MiB relayed in " << test::ms(res.elapsed)
                       << " ms (" << 2.0 * static_cast<double>(total) / secs / 1e9
                       << " GB/s both ways together), checksums " << got_up.checksum
                       << " / " << got_down.checksum);
  });
}

TEST_CASE("relay: 1,000 concurrent relayed connections through rn::server, every byte verified") {
  constexpr int n = 1000;
  test::raise_fd_limit(8 * n + 512);
  for (const auto path : paths) {
    CAPTURE(name(path));
    test::fd_leak_check fds;
    rn::io_context ctx(test::context_options(1024));
    auto up_l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0), {.backlog = 4096});
    auto front_l = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0), {.backlog = 4096});
    REQUIRE(up_l);
    REQUIRE(front_l);
    const rn::endpoint up_ep = *up_l->local_endpoint();
    const rn::endpoint front_ep = *front_l->local_endpoint();

    auto echo = [](rn::stream& s, auto finish) { return test::echo(s, finish); };
    rn::server upstream(ctx, std::move(*up_l), echo);

    int relays_clean = 0, relays_other = 0, connect_failed = 0;
    auto proxy = [&](rn::stream& s, auto finish) -> rn::task<void> {
      auto up = co_await rn::connect(ctx, up_ep, {.timeout = 30s, .nodelay = true}, finish);
      if (!up) {
        ++connect_failed;
        co_return;
      }
      const auto res = co_await rn::relay(
          s, *up, {.path = path, .buffer_size = 64 * 1024, .idle_timeout = 30s}, finish);
      ++(res.clean() ? relays_clean : relays_other);
    };
    rn::server front(ctx, std::move(*front_l), proxy);

    int done = 0, verified = 0;
    auto client = [&](int i) -> rn::task<void> {
      const std::string msg = test::pattern(16 * 1024, static_cast<std::uint32_t>(i));
      auto s = co_await rn::connect(ctx, front_ep, {.timeout = 30s});
      if (s) {
        if (co_await test::echo_exchange(*s, msg) == msg) ++verified;
        (void)co_await s->close();
      }
      ++done;
    };

    const auto t0 = std::chrono::steady_clock::now();
    auto body = [&]() -> rn::task<void> {
      rn::spawn(ctx, upstream.run());
      rn::spawn(ctx, front.run());
      for (int i = 0; i < n; ++i) rn::spawn(ctx, client(i));
      for (int i = 0; i < 12'000 && (done < n || relays_clean + relays_other < n); ++i)  // ≤ 60 s
        (void)co_await rn::sleep_for(ctx, 5ms);
      (void)co_await front.shutdown(1s);
      (void)co_await upstream.shutdown(1s);
    };
    rn::sync_wait(ctx, body());
    ctx.run();
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(done == n);
    CHECK(verified == n);
    CHECK(relays_clean == n);
    CHECK(relays_other == 0);
    CHECK(connect_failed == 0);
    MESSAGE(name(path) << ": " << n << " concurrent relayed connections, " << verified
                       << " echoes verified, " << relays_clean << " relays clean, in "
                       << test::ms(took) << " ms");
  }
}

TEST_CASE("relay: a reset on a quiet side (no buffer, no pipe held) is a reset, never a FIN") {
  // On the splice path a quiet direction holds no pipe; a FIN or reset is then read without
  // one. A reset must still reach the other side as a reset: a FIN would pass the bytes that
  // went before as a complete stream.
  for (const rn::relay_path path : {rn::relay_path::copy, rn::relay_path::splice}) {
    for (const bool data_first : {false, true}) {
      CAPTURE(name(path));
      CAPTURE(data_first);
      test::watchdog dog(30s);
      test::fd_leak_check fds;
      rn::io_context ctx(test::context_options());
      auto front = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
      REQUIRE(front);
      test::raw_listener up;
      const int client = test::raw_connect(*front->local_endpoint());
      auto a = rn::sync_wait(ctx, front->accept());
      auto b = rn::sync_wait(ctx, rn::connect(ctx, up.endpoint(), {.timeout = 10s}));
      REQUIRE(a);
      REQUIRE(b);
      const int upstream = up.accept_one();
      test::read_result seen;
      std::jthread peers([&] {
        if (data_first) {
          test::write_all(client, "hello");
          char buf[5];
          std::size_t n = 0;
          while (n < 5) {
            const ssize_t r = ::recv(upstream, buf + n, 5 - n, 0);
            if (r <= 0) break;
            n += static_cast<std::size_t>(r);
          }
          std::this_thread::sleep_for(400ms);  // the pipe (kept 200 ms) is gone
        } else {
          std::this_thread::sleep_for(100ms);
        }
        test::set_linger_rst(client);
        ::close(client);
        seen = test::read_to_end(upstream);
        ::shutdown(upstream, SHUT_WR);  // so a relay that took the reset for a FIN would end too
      });
      const auto res = rn::sync_wait(ctx, rn::relay(*a, *b, {.path = path}));
      peers.join();
      ::close(upstream);
      CHECK(res.a_to_b.end == rn::relay_end::reset);
      CHECK(seen.error == ECONNRESET);
      CHECK(seen.data.empty());  // ("hello" was read above) nothing more, and no clean end
    }
  }
}
