// signal_set::wait() completes with one of its signals or a real error, never because other
// signals reached the process; and SIGPIPE raised by splicing into reset sockets (in io-wq
// workers) never reaches a process whose SIGPIPE is at its default action.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tcp_support.hpp"

namespace {

// ---- signal plumbing ------------------------------------------------------------------------

// Blocks `signals` in this thread (threads started later inherit it) and, on the way out, takes
// whatever of them is still pending before restoring the mask, so nothing is delivered late.
class blocked {
 public:
  blocked(std::initializer_list<int> signals) {
    sigemptyset(&set_);
    for (int s : signals) sigaddset(&set_, s);
    REQUIRE(::pthread_sigmask(SIG_BLOCK, &set_, &saved_) == 0);
  }
  blocked(const blocked&) = delete;
  blocked& operator=(const blocked&) = delete;
  ~blocked() {
    const timespec now{0, 0};
    while (::sigtimedwait(&set_, nullptr, &now) > 0) {}
    ::pthread_sigmask(SIG_SETMASK, &saved_, nullptr);
  }

 private:
  sigset_t set_{};
  sigset_t saved_{};
};

std::atomic<int> handled[2];  // SIGUSR1, SIGUSR2 handled so far

void count_signal(int sig) { handled[sig == SIGUSR1 ? 0 : 1].fetch_add(1, std::memory_order_relaxed); }

// A counting handler for `sig` while it lives; the previous disposition afterwards.
class counting_handler {
 public:
  explicit counting_handler(int sig) : sig_(sig) {
    struct sigaction sa{};
    sa.sa_handler = &count_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    REQUIRE(::sigaction(sig, &sa, &saved_) == 0);
  }
  counting_handler(const counting_handler&) = delete;
  counting_handler& operator=(const counting_handler&) = delete;
  ~counting_handler() { ::sigaction(sig_, &saved_, nullptr); }

 private:
  int sig_;
  struct sigaction saved_ {};
};

void unblock(int sig) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
}

constexpr std::uint64_t bit(int sig) { return std::uint64_t{1} << (sig - 1); }

// A hexadecimal signal mask line ("ShdPnd:", "SigPnd:") of a /proc status file; 0 if absent.
std::uint64_t mask_in(const std::string& status_file, const std::string& field) {
  std::ifstream in(status_file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(field.size()), nullptr, 16);
  }
  return 0;
}

std::string task_status(pid_t tid) { return "/proc/self/task/" + std::to_string(tid) + "/status"; }

// Threads of this process whose name starts with `prefix` and that hold `sig` pending.
void threads_holding(int sig, const std::string& prefix, std::set<pid_t>& out) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(e.path() / "status");
    std::string line, name;
    std::uint64_t pending = 0;
    while (std::getline(in, line)) {
      if (line.rfind("Name:", 0) == 0) name = line.substr(line.find_first_not_of(" \t", 5));
      if (line.rfind("SigPnd:", 0) == 0) pending = std::stoull(line.substr(7), nullptr, 16);
    }
    if (name.rfind(prefix, 0) == 0 && (pending & bit(sig)))
      out.insert(static_cast<pid_t>(std::stol(e.path().filename().string())));
  }
}

// ---- unrelated signals ----------------------------------------------------------------------

struct noise_counts {
  int to_self = 0;        // SIGUSR1 sent by the noise thread to itself, handled there
  int to_ring = 0;        // SIGUSR2 sent to the ring's thread, handled there
  int queued = 0;         // real-time signals queued on a thread that blocks them
  int to_ring_handled = 0;
};

// Every kind of signal that is none of the set's, each one queued for a thread of the process
// and so a wake-up of every signalfd: to a thread that handles it, to the ring's thread (which
// handles it too), queued on a thread that blocks it. Paced, so each wake-up reaches the ring
// on its own rather than merged with the next.
noise_counts make_noise(pid_t ring_tid) {
  noise_counts n;
  const pid_t pid = ::getpid();
  const int rt = SIGRTMIN + 1;

  unblock(SIGUSR1);
  for (int i = 0; i < 400; ++i) {
    if (::tgkill(pid, ::gettid(), SIGUSR1) == 0) ++n.to_self;  // handled before tgkill returns
    std::this_thread::sleep_for(200us);
  }

  const auto give_up = std::chrono::steady_clock::now() + 5s;  // slow handlers (TSan) cut it short
  for (int i = 0; i < 200 && std::chrono::steady_clock::now() < give_up; ++i) {
    const int before = handled[1].load();
    if (::tgkill(pid, ring_tid, SIGUSR2) == 0) ++n.to_ring;
    for (int w = 0; w < 1000 && handled[1].load() == before; ++w) std::this_thread::sleep_for(50us);
  }
  n.to_ring_handled = handled[1].load();

  std::atomic<pid_t> blocker_tid{0};
  std::atomic<bool> release{false};
  std::thread blocker([&] {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, rt);
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
    blocker_tid = ::gettid();
    while (!release) std::this_thread::sleep_for(1ms);
    const timespec now{0, 0};
    while (::sigtimedwait(&s, nullptr, &now) > 0) {}  // take them back: they were only noise
  });
  while (blocker_tid == 0) std::this_thread::sleep_for(1ms);
  for (int i = 0; i < 300; ++i) {
    if (::tgkill(pid, blocker_tid, rt) == 0) ++n.queued;
    std::this_thread::sleep_for(200us);
  }
  release = true;
  blocker.join();
  return n;
}

}  // namespace

TEST_CASE("signal_set: unrelated signals never complete wait(); SIGTERM does") {
  test::fd_leak_check fds;
  // Before any thread of this test starts: every thread then blocks SIGTERM, so the SIGTERM
  // sent to the process below can only be taken through the signalfd.
  const blocked term{SIGTERM};
  test::watchdog wd(60s);
  const counting_handler usr1(SIGUSR1), usr2(SIGUSR2);

  rn::io_context ctx(test::context_options());
  rn::signal_set signals(ctx, {SIGTERM});
  const pid_t ring_tid = ::gettid();
  rn::inplace_stop_source give_up;
  std::optional<rn::result<int>> got;
  bool done_by_noise = false;
  noise_counts n;
  std::atomic<bool> noise_done{false};

  std::jthread noise([&] {
    n = make_noise(ring_tid);
    noise_done = true;
  });
  auto body = [&]() -> rn::task<void> {
    auto waiter = [&]() -> rn::task<void> { got = co_await signals.wait(give_up.get_token()); };
    auto driver = [&]() -> rn::task<void> {
      while (!noise_done && !got) (void)co_await rn::sleep_for(ctx, 5ms);
      (void)co_await rn::sleep_for(ctx, 50ms);  // the last wake-ups settle
      done_by_noise = got.has_value();
      if (!done_by_noise) {
        REQUIRE(::kill(::getpid(), SIGTERM) == 0);
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        while (!got && std::chrono::steady_clock::now() < deadline) (void)co_await rn::sleep_for(ctx, 1ms);
      }
      give_up.request_stop();
    };
    co_await rn::when_all(waiter(), driver());
  };
  rn::sync_wait(ctx, body());
  noise.join();

  MESSAGE("noise: " << n.to_self << " SIGUSR1 to a handling thread, " << n.to_ring
                    << " SIGUSR2 to the ring's thread (" << n.to_ring_handled << " handled), "
                    << n.queued << " real-time signals queued on a blocking thread");
  CHECK(n.to_self == 400);
  CHECK(n.queued == 300);
  CHECK(n.to_ring > 0);
  REQUIRE(got);
  INFO("wait() completed with " << (*got ? std::to_string(**got) : got->error().message()));
  CHECK_FALSE(done_by_noise);
  REQUIRE(got->has_value());
  CHECK(**got == SIGTERM);
}

TEST_CASE("signal_set: a stop or the set's destruction still ends a wait that is being retried") {
  test::fd_leak_check fds;
  test::watchdog wd(20s);
  const counting_handler usr1(SIGUSR1);
  rn::io_context ctx(test::context_options());
  const pid_t ring_tid = ::gettid();

  for (const bool by_stop : {true, false}) {
    CAPTURE(by_stop);
    std::optional<rn::signal_set> set(std::in_place, ctx, std::initializer_list<int>{SIGUSR2});
    rn::inplace_stop_source stop;
    std::optional<rn::result<int>> got;
    std::atomic<bool> noise_done{false};
    // Enough wake-ups that, on their own, some reads of the signalfd come back empty.
    std::jthread noise([&] {
      for (int i = 0; i < 300; ++i) {
        ::tgkill(::getpid(), ring_tid, SIGUSR1);
        std::this_thread::sleep_for(200us);
      }
      noise_done = true;
    });
    auto body = [&]() -> rn::task<void> {
      auto waiter = [&]() -> rn::task<void> { got = co_await set->wait(stop.get_token()); };
      auto ender = [&]() -> rn::task<void> {
        while (!noise_done) (void)co_await rn::sleep_for(ctx, 5ms);
        if (by_stop)
          stop.request_stop();
        else
          set.reset();
      };
      co_await rn::when_all(waiter(), ender());
    };
    rn::sync_wait(ctx, body());
    noise.join();
    REQUIRE(got);
    REQUIRE_FALSE(got->has_value());
    CHECK(got->error() == std::errc::operation_canceled);
  }
}

// ---- SIGPIPE from splicing into reset sockets ------------------------------------------------

namespace {

constexpr int rounds = 8;
constexpr int relays_per_round = 12;
constexpr std::size_t chunk = 64 * 1024;
constexpr int splices_into_reset = 16;

// What the child found; it exits 0 once it wrote this, whatever the findings.
struct child_report {
  int relays = 0;
  int relays_reset = 0;        // ended with a reset on some side (as they all should)
  int relays_clean = 0;
  int setup_failures = 0;
  int epipe_splices = 0;         // splices into a reset socket that failed with EPIPE
  int workers_after_relays = 0;  // io-wq threads seen holding SIGPIPE pending after the relays
  int workers_with_sigpipe = 0;  // ... and after the splices into reset sockets
  bool sigpipe_shared = false;   // pending for the whole process (ShdPnd)
  bool sigpipe_ring = false;     // pending on the ring's thread
  bool wait_completed_early = false;
  bool wait_canceled = false;
  int fds_before = 0;
  int fds_after = 0;
};

struct relayed_link {
  rn::stream client, a, b, upstream;  // client ⇄ a [relay] b ⇄ upstream
};

// Sends until the connection fails. (Not `while (co_await ...)`: g++ 12 compiles a co_await in a
// loop condition here into a trap.)
rn::task<void> send_until_error(rn::stream& s, const std::string& data) {
  for (;;) {
    const rn::transfer_result r = co_await s.send_all(rn::buffer(data));
    if (!r) co_return;
  }
}

// Receives until the connection fails or ends; with `reset_after`, resets the connection itself
// (SO_LINGER {1, 0}, close) once that many bytes arrived, while the other side still sends.
rn::task<void> receive_then_maybe_reset(rn::stream& s, std::optional<std::size_t> reset_after) {
  std::vector<char> buf(chunk);
  std::size_t got = 0;
  for (;;) {
    auto n = co_await s.recv(rn::buffer(buf));
    if (!n || *n == 0) co_return;
    got += *n;
    if (reset_after && got >= *reset_after) {
      test::set_linger_rst(s.native_handle());
      (void)co_await s.close();
      co_return;
    }
  }
}

rn::task<void> peer(rn::stream& s, const std::string& data, std::optional<std::size_t> reset_after) {
  co_await rn::when_all(send_until_error(s, data), receive_then_maybe_reset(s, reset_after));
}

rn::task<void> relay_one(relayed_link& k, child_report& rep) {
  const rn::relay_result r = co_await rn::relay(
      k.a, k.b, {.path = rn::relay_path::splice, .buffer_size = chunk, .idle_timeout = 10s});
  ++rep.relays;
  if (r.clean()) ++rep.relays_clean;
  if (r.a_to_b.end == rn::relay_end::reset || r.b_to_a.end == rn::relay_end::reset) ++rep.relays_reset;
}

// One link: data flows both ways through a spliced relay until one peer resets (the upstream on
// even links, the client on odd ones) after `reset_after` bytes.
rn::task<void> run_link(relayed_link& k, int i, const std::string& data, child_report& rep, int& done) {
  const std::size_t reset_after = chunk / 2 * static_cast<std::size_t>(1 + i % 7);
  const bool upstream_resets = i % 2 == 0;
  co_await rn::when_all(relay_one(k, rep),
                        peer(k.client, data, upstream_resets ? std::nullopt : std::optional{reset_after}),
                        peer(k.upstream, data, upstream_resets ? std::optional{reset_after} : std::nullopt));
  ++done;
}

// Splices into sockets the peer reset, whose error (ECONNRESET) was already taken with
// SO_ERROR: the send path then fails with EPIPE and raises SIGPIPE on the thread running the
// splice, an io-wq worker.
rn::task<void> splice_into_reset_sockets(rn::io_context& ctx, rn::listener& back, child_report& rep) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
    ++rep.setup_failures;
    co_return;
  }
  const std::string page = test::pattern(4096, 3);
  for (int i = 0; i < splices_into_reset; ++i) {
    auto b = co_await rn::connect(ctx, *back.local_endpoint());
    auto u = co_await back.accept();
    if (!b || !u || ::write(p[1], page.data(), page.size()) != static_cast<ssize_t>(page.size())) {
      ++rep.setup_failures;
      continue;
    }
    (void)co_await u->abort();
    (void)co_await rn::sleep_for(ctx, 2ms);  // the RST arrives
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(b->native_handle(), SOL_SOCKET, SO_ERROR, &err, &len);
    const auto r = co_await b->splice_from(p[0], page.size());
    if (!r && r.error() == std::errc::broken_pipe) ++rep.epipe_splices;
    char drain[4096];
    while (::read(p[0], drain, sizeof drain) > 0) {}  // what the failed splice left
    (void)co_await b->close();
  }
  ::close(p[0]);
  ::close(p[1]);
}

rn::task<void> run_rounds(rn::io_context& ctx, rn::listener& front, rn::listener& back,
                          child_report& rep, std::set<pid_t>& workers) {
  const std::string data = test::pattern(chunk, 7);
  for (int r = 0; r < rounds; ++r) {
    std::vector<std::unique_ptr<relayed_link>> links;
    for (int i = 0; i < relays_per_round; ++i) {
      auto c = co_await rn::connect(ctx, *front.local_endpoint());
      auto a = co_await front.accept();
      auto b = co_await rn::connect(ctx, *back.local_endpoint());
      auto u = co_await back.accept();
      if (!c || !a || !b || !u) {
        ++rep.setup_failures;
        continue;
      }
      links.push_back(std::make_unique<relayed_link>(relayed_link{std::move(*c), std::move(*a), std::move(*b), std::move(*u)}));
    }
    int done = 0;
    for (std::size_t i = 0; i < links.size(); ++i)
      rn::spawn(ctx, run_link(*links[i], static_cast<int>(i) + r, data, rep, done));
    while (done < static_cast<int>(links.size())) {
      threads_holding(SIGPIPE, "iou-wrk", workers);
      (void)co_await rn::sleep_for(ctx, 2ms);
    }
    threads_holding(SIGPIPE, "iou-wrk", workers);
    for (auto& k : links) {
      (void)co_await k->client.close();
      (void)co_await k->upstream.close();
    }
  }
}

// The child: SIGPIPE at its default action and unblocked, a signal_set waiting throughout.
child_report spliced_resets() {
  child_report rep;
  ::signal(SIGPIPE, SIG_DFL);
  unblock(SIGPIPE);
  rep.fds_before = test::open_fds();
  {
    rn::io_context ctx(test::context_options(1024));
    rn::signal_set signals(ctx, {SIGTERM});
    auto front = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
    auto back = rn::listener::bind(ctx, rn::endpoint::loopback_v4(0));
    if (!front || !back) {
      ++rep.setup_failures;
      return rep;
    }
    rn::inplace_stop_source stop_wait;
    std::optional<rn::result<int>> waited;
    std::set<pid_t> workers;
    auto body = [&]() -> rn::task<void> {
      auto waiter = [&]() -> rn::task<void> { waited = co_await signals.wait(stop_wait.get_token()); };
      auto traffic = [&]() -> rn::task<void> {
        co_await run_rounds(ctx, *front, *back, rep, workers);
        rep.workers_after_relays = static_cast<int>(workers.size());
        co_await splice_into_reset_sockets(ctx, *back, rep);
        threads_holding(SIGPIPE, "iou-wrk", workers);
        rep.wait_completed_early = waited.has_value();
        stop_wait.request_stop();
      };
      co_await rn::when_all(waiter(), traffic());
    };
    rn::sync_wait(ctx, body());
    rep.wait_canceled = waited && !*waited && waited->error() == std::errc::operation_canceled;
    rep.workers_with_sigpipe = static_cast<int>(workers.size());
    rep.sigpipe_shared = (mask_in("/proc/self/status", "ShdPnd:") & bit(SIGPIPE)) != 0;
    rep.sigpipe_ring = (mask_in(task_status(::gettid()), "SigPnd:") & bit(SIGPIPE)) != 0;
  }
  rep.fds_after = test::open_fds();
  return rep;
}

}  // namespace

TEST_CASE("splice relays into reset sockets: no SIGPIPE reaches a process at its default action") {
  test::fd_leak_check fds;
  test::watchdog wd(120s);
  int report[2];
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(report[0]);
    ::alarm(90);  // a hang in the child ends it (SIGALRM), and the parent reports that
    const child_report rep = spliced_resets();
    const bool written = ::write(report[1], &rep, sizeof rep) == static_cast<ssize_t>(sizeof rep);
    std::_Exit(written ? 0 : 1);  // no doctest teardown, no destructors of the parent's objects
  }
  ::close(report[1]);
  child_report rep;
  std::size_t got = 0;
  while (got < sizeof rep) {
    const ssize_t n = ::read(report[0], reinterpret_cast<char*>(&rep) + got, sizeof rep - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(report[0]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {}

  INFO("child: " << (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                         : "exit " + std::to_string(WEXITSTATUS(status))));
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  REQUIRE(got == sizeof rep);
  MESSAGE(rep.relays << " spliced relays, " << rep.relays_reset << " ended by a reset; io-wq threads seen "
                     << "holding SIGPIPE: " << rep.workers_after_relays << " after them, "
                     << rep.workers_with_sigpipe << " after " << rep.epipe_splices
                     << " splices failed with EPIPE");
  CHECK(rep.setup_failures == 0);
  CHECK(rep.relays == rounds * relays_per_round);
  CHECK(rep.relays_reset == rep.relays);
  CHECK(rep.relays_clean == 0);
  CHECK(rep.epipe_splices == splices_into_reset);
  CHECK(rep.workers_with_sigpipe > 0);  // SIGPIPE was raised, and stayed on the worker
  CHECK_FALSE(rep.sigpipe_shared);
  CHECK_FALSE(rep.sigpipe_ring);
  CHECK_FALSE(rep.wait_completed_early);
  CHECK(rep.wait_canceled);
  CHECK(rep.fds_after == rep.fds_before);
}
