// threaded_server: a server on N threads, each with its own ring and SO_REUSEPORT listener. Every
// connection served by some thread, counters summed, graceful stop, CPU pinning, failures at start,
// and every way of ending it (shutdown with or without grace, destructor, move-assignment) with
// idle, busy or no clients: no hang, no descriptor leaked, every client answered by FIN or RST.
#include <ringnet/threaded_server.hpp>

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tcp_support.hpp"

namespace {

using namespace std::chrono_literals;

rn::threaded_server_options options(unsigned threads) {
  rn::threaded_server_options o;
  o.threads = threads;
  o.context = test::context_options();
  return o;
}

// A per-thread handler: echoes, and records on which thread (and CPUs) it ran.
struct thread_log {
  std::mutex m;
  std::set<std::thread::id> made_on;
  std::set<std::thread::id> served_on;
  std::vector<std::set<int>> affinity;  // per made handler: the CPUs its thread may run on
};

struct echo_handler {
  thread_log* log;
  rn::task<void> operator()(rn::stream& s, rn::inplace_stop_token finish) {
    {
      std::lock_guard g(log->m);
      log->served_on.insert(std::this_thread::get_id());
    }
    co_await test::echo(s, finish);
  }
};

std::set<int> my_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::set<int> out;
  if (::pthread_getaffinity_np(::pthread_self(), sizeof set, &set) != 0) return out;
  for (std::size_t c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.insert(static_cast<int>(c));
  return out;
}

auto make_echo(thread_log& log) {
  return [&log](rn::io_context&) {
    std::lock_guard g(log.m);
    log.made_on.insert(std::this_thread::get_id());
    log.affinity.push_back(my_cpus());
    return echo_handler{&log};
  };
}

// `n` bytes or what came before EOF or an error. EINTR is retried: a blocking call with SO_RCVTIMEO
// returns it when task work (not only a signal) interrupts the wait.
std::string read_exactly(int fd, std::size_t n) {
  std::string out(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::recv(fd, out.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<std::size_t>(r);
  }
  out.resize(got);
  return out;
}

// One client exchange: send `msg`, half-close, read the echo to EOF.
std::string exchange(const rn::endpoint& ep, const std::string& msg) {
  const int fd = test::raw_connect(ep);
  std::string back;
  if (test::write_all(fd, msg) && ::shutdown(fd, SHUT_WR) == 0) back = test::read_to_end(fd).data;
  ::close(fd);
  return back;
}

}  // namespace

TEST_CASE("threaded_server: every connection is served, by every thread, and the counters add up") {
  for (unsigned n : {2u, 4u}) {
    CAPTURE(n);
    test::watchdog dog(60s, "threads " + std::to_string(n));
    test::fd_leak_check fds;
    thread_log log;
    auto srv = rn::threaded_server<decltype(make_echo(log))>::start(rn::endpoint::loopback_v4(0),
                                                                   make_echo(log), options(n));
    REQUIRE(srv);
    CHECK(srv->threads() == n);
    const rn::endpoint ep = srv->local_endpoint();
    CHECK(ep.port() != 0);
    constexpr int clients = 8, each = 25;  // 200 connections from 8 client threads
    std::atomic<int> right{0};
    {
      std::vector<std::jthread> load;
      for (int c = 0; c < clients; ++c)
        load.emplace_back([&, c] {
          for (int i = 0; i < each; ++i) {
            const std::string msg = test::pattern(100 + static_cast<std::size_t>(i * 37), static_cast<std::uint32_t>(c * 100 + i));
            if (exchange(ep, msg) == msg) ++right;
          }
        });
    }
    CHECK(right == clients * each);
    const rn::shutdown_report report = srv->shutdown(5s);
    CHECK(report.aborted == 0);
    const rn::connection_counters total = srv->counters();
    CHECK(total.accepted == clients * each);
    CHECK(total.clean == clients * each);
    CHECK(total.ended() == total.accepted);
    std::size_t sum = 0;
    for (unsigned i = 0; i < n; ++i) {
      CAPTURE(i);
      // The kernel hashes the 4-tuple over the listeners: 200 connections leave no thread out
      // (the chance of one getting none is below 4 × 0.75^200).
      CHECK(srv->counters_of_thread(i).accepted > 0);
      sum += srv->counters_of_thread(i).accepted;
    }
    CHECK(sum == total.accepted);
    CHECK(log.made_on.size() == n);  // one handler per thread, made on that thread
    CHECK(log.served_on.size() == n);
    for (const auto& id : log.served_on) CHECK(log.made_on.count(id) == 1);
    CHECK(log.made_on.count(std::this_thread::get_id()) == 0);
  }
}

TEST_CASE("threaded_server: shutdown finishes open connections on every thread within the grace") {
  test::watchdog dog(60s);
  test::fd_leak_check fds;
  thread_log log;
  auto srv = rn::threaded_server<decltype(make_echo(log))>::start(rn::endpoint::loopback_v4(0),
                                                                 make_echo(log), options(2));
  REQUIRE(srv);
  // 16 clients mid-conversation: each echoed once, then waiting for the server's FIN.
  std::vector<int> open;
  for (int i = 0; i < 16; ++i) {
    const int fd = test::raw_connect(srv->local_endpoint());
    REQUIRE(test::write_all(fd, "ping"));
    REQUIRE(read_exactly(fd, 4) == "ping");
    open.push_back(fd);
  }
  std::vector<test::read_result> endings(open.size());
  {
    std::vector<std::jthread> readers;  // answer the server's FIN with ours, as a client does
    for (std::size_t i = 0; i < open.size(); ++i)
      readers.emplace_back([&, i] {
        endings[i] = test::read_to_end(open[i]);
        ::shutdown(open[i], SHUT_WR);
      });
    const rn::shutdown_report report = srv->shutdown(10s);
    CHECK(report.finished == 16);
    CHECK(report.aborted == 0);
    CHECK(report.errors == 0);
    CHECK(report.elapsed < 10s);
  }
  for (const auto& e : endings) {
    CHECK(e.error == 0);  // a clean EOF, not a reset
    CHECK(e.data.empty());
  }
  for (int fd : open) ::close(fd);
  CHECK(srv->counters().clean == 16);
  // A second shutdown returns the same report and does nothing else.
  CHECK(srv->shutdown(0s).finished == 16);
}

TEST_CASE("threaded_server: pinned threads run on one CPU each, round robin over the allowed ones") {
  test::watchdog dog(30s);
  const std::set<int> allowed = my_cpus();
  REQUIRE(!allowed.empty());
  const std::vector<int> cpus(allowed.begin(), allowed.end());
  for (unsigned n : {2u, 4u}) {
    CAPTURE(n);
    test::fd_leak_check fds;
    thread_log log;
    auto o = options(n);
    o.pin_threads = true;
    auto srv = rn::threaded_server<decltype(make_echo(log))>::start(rn::endpoint::loopback_v4(0),
                                                                   make_echo(log), o);
    REQUIRE(srv);
    (void)srv->shutdown(1s);
    REQUIRE(log.affinity.size() == n);
    std::multiset<int> got, want;
    for (const auto& a : log.affinity) {
      CHECK(a.size() == 1);
      if (!a.empty()) got.insert(*a.begin());
    }
    for (unsigned i = 0; i < n; ++i) want.insert(cpus[i % cpus.size()]);
    CHECK(got == want);
    CHECK(my_cpus() == allowed);  // the starting thread is left as it was
  }
}

TEST_CASE("threaded_server: failures at start leave nothing running and nothing open") {
  test::watchdog dog(30s);
  test::fd_leak_check fds;
  thread_log log;
  using echo_server = rn::threaded_server<decltype(make_echo(log))>;
  SUBCASE("no threads") {
    auto srv = echo_server::start(rn::endpoint::loopback_v4(0), make_echo(log), options(0));
    REQUIRE_FALSE(srv);
    CHECK(srv.error() == std::errc::invalid_argument);
  }
  SUBCASE("the port is taken by a listener without SO_REUSEPORT") {
    test::raw_listener taken;
    auto srv = echo_server::start(taken.endpoint(), make_echo(log), options(2));
    REQUIRE_FALSE(srv);
    CHECK(srv.error() == std::errc::address_in_use);
    CHECK(log.made_on.empty());
  }
  SUBCASE("with several threads a fixed port another server listens on is taken, SO_REUSEPORT or not") {
    auto first = echo_server::start(rn::endpoint::loopback_v4(0), make_echo(log), options(2));
    REQUIRE(first);
    for (unsigned n : {1u, 2u}) {
      auto second = echo_server::start(first->local_endpoint(), make_echo(log), options(n));
      REQUIRE_FALSE(second);
      CHECK(second.error() == std::errc::address_in_use);
    }
    (void)first->shutdown(1s);
  }
  SUBCASE("a fixed free port serves on every thread") {
    test::raw_listener probe;
    const rn::endpoint at = probe.endpoint();
    probe.close();
    auto srv = echo_server::start(at, make_echo(log), options(2));
    REQUIRE(srv);
    CHECK(srv->local_endpoint().port() == at.port());
    CHECK(exchange(at, "fixed") == "fixed");
    (void)srv->shutdown(1s);
  }
  SUBCASE("a handler cannot be made on one thread: the others stop, the error reaches start()") {
    std::atomic<int> calls{0};
    auto make = [&](rn::io_context& ctx) {
      if (++calls == 2) throw std::runtime_error("no handler here");
      return make_echo(log)(ctx);
    };
    rn::endpoint at = rn::endpoint::loopback_v4(0);
    CHECK_THROWS_WITH_AS((void)rn::threaded_server<decltype(make)>::start(at, make, options(3)),
                         "no handler here", std::runtime_error);
    CHECK(calls == 3);
  }
  SUBCASE("the port is free again after a failed start") {
    std::atomic<int> calls{0};
    auto make = [&](rn::io_context& ctx) {
      if (++calls == 1) throw std::runtime_error("first fails");
      return make_echo(log)(ctx);
    };
    test::raw_listener probe;  // a free port: close it, start on it, then bind it plainly again
    const rn::endpoint at = probe.endpoint();
    probe.close();
    CHECK_THROWS((void)rn::threaded_server<decltype(make)>::start(at, make, options(2)));
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    CHECK(::bind(fd, at.data(), at.size()) == 0);
    CHECK(::listen(fd, 8) == 0);
    ::close(fd);
  }
}

TEST_CASE("threaded_server: a handler calling shutdown() on its own server gets an error, not a hang") {
  test::watchdog dog(30s);
  test::fd_leak_check fds;
  struct self_stopping {
    std::atomic<void*>* group;
    std::atomic<int>* refused;
    rn::task<void> operator()(rn::stream& s, rn::inplace_stop_token finish) {
      try {
        call_shutdown(group->load());
      } catch (const std::system_error& e) {
        if (e.code() == std::errc::resource_deadlock_would_occur) ++*refused;
      }
      co_await test::echo(s, finish);
    }
    std::function<void(void*)> call_shutdown;
  };
  std::atomic<void*> group{nullptr};
  std::atomic<int> refused{0};
  using make_fn = std::function<self_stopping(rn::io_context&)>;
  make_fn make = [&](rn::io_context&) {
    self_stopping h{&group, &refused, {}};
    h.call_shutdown = [](void* p) { (void)static_cast<rn::threaded_server<make_fn>*>(p)->shutdown(0s); };
    return h;
  };
  auto srv = rn::threaded_server<make_fn>::start(rn::endpoint::loopback_v4(0), make, options(2));
  REQUIRE(srv);
  group = &*srv;
  CHECK(exchange(srv->local_endpoint(), "hello") == "hello");
  CHECK(refused == 1);
  (void)srv->shutdown(1s);
}

TEST_CASE("threaded_server: make_handler is called one call at a time; shutdown from two threads at once") {
  test::watchdog dog(30s);
  test::fd_leak_check fds;
  thread_log log;
  int made = 0;  // no atomic: the calls must not overlap (TSan watches this)
  auto make = [&, inner = make_echo(log)](rn::io_context& ctx) mutable {
    ++made;
    return inner(ctx);
  };
  auto srv = rn::threaded_server<decltype(make)>::start(rn::endpoint::loopback_v4(0), make, options(4));
  REQUIRE(srv);
  CHECK(made == 4);
  CHECK(exchange(srv->local_endpoint(), "hello") == "hello");
  rn::shutdown_report reports[2];
  {
    std::jthread a([&] { reports[0] = srv->shutdown(1s); });
    std::jthread b([&] { reports[1] = srv->shutdown(1s); });
  }
  CHECK(reports[0].finished == reports[1].finished);
  CHECK(reports[0].elapsed == reports[1].elapsed);
  CHECK(srv->counters().accepted == 1);
}

// The teardown matrix: how the server ends × what clients it has × threads.
TEST_CASE("threaded_server: every way of ending it, with no, idle or busy clients, ends cleanly") {
  enum class ending { shutdown_grace, shutdown_now, destructor, move_assigned };
  enum class clients { none, idle, busy };
  static constexpr const char* ending_names[] = {"shutdown(1s)", "shutdown(0)", "destructor", "move-assigned over"};
  static constexpr const char* client_names[] = {"none", "idle", "busy"};
  for (unsigned n : {1u, 2u, 4u})
    for (ending how : {ending::shutdown_grace, ending::shutdown_now, ending::destructor, ending::move_assigned})
      for (clients who : {clients::none, clients::idle, clients::busy}) {
        const std::string cell = std::to_string(n) + " threads, " + ending_names[static_cast<int>(how)] +
                                 ", clients " + client_names[static_cast<int>(who)];
        CAPTURE(cell);
        test::watchdog dog(30s, cell);
        test::fd_leak_check fds;
        thread_log log;
        using echo_server = rn::threaded_server<decltype(make_echo(log))>;
        std::optional<echo_server> srv;
        {
          auto s = echo_server::start(rn::endpoint::loopback_v4(0), make_echo(log), options(n));
          REQUIRE(s);
          srv.emplace(std::move(*s));
        }
        const rn::endpoint ep = srv->local_endpoint();
        // Clients: each connected and echoed once (so it is being served), then idle, or busy
        // sending until the server ends the connection.
        std::vector<int> fds_open;
        const int count = who == clients::none ? 0 : 6;
        for (int i = 0; i < count; ++i) {
          const int fd = test::raw_connect(ep);
          REQUIRE(test::write_all(fd, "ping"));
          REQUIRE(read_exactly(fd, 4) == "ping");
          fds_open.push_back(fd);
        }
        std::atomic<int> ended{0};
        std::vector<std::jthread> peers;
        for (int fd : fds_open)
          peers.emplace_back([&, fd](std::stop_token quit) {
            char buf[4096];
            for (int turns = 0; turns < 100'000 && !quit.stop_requested(); ++turns) {
              if (who == clients::busy && !test::write_all(fd, "data")) {  // reset
                ++ended;
                break;
              }
              const ssize_t r = ::recv(fd, buf, sizeof buf, who == clients::busy ? MSG_DONTWAIT : 0);
              if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {  // FIN or RST
                ++ended;
                break;
              }
              if (r < 0 && errno == EAGAIN && who == clients::idle) break;  // 10 s and no answer
            }
            ::shutdown(fd, SHUT_WR);
          });
        std::optional<rn::shutdown_report> report;
        switch (how) {
          case ending::shutdown_grace: report = srv->shutdown(1s); break;
          case ending::shutdown_now: report = srv->shutdown(0s); break;
          case ending::destructor: srv.reset(); break;
          case ending::move_assigned: {
            auto other = echo_server::start(rn::endpoint::loopback_v4(0), make_echo(log), options(1));
            REQUIRE(other);
            *srv = std::move(*other);  // the first server stops; the second lives on in srv
            CHECK(exchange(srv->local_endpoint(), "still") == "still");
            report = srv->shutdown(1s);
            break;
          }
        }
        for (auto& p : peers) p.join();
        CHECK(ended == count);  // every client saw its connection end: none left hanging
        if (report && how != ending::move_assigned) {
          CHECK(report->finished + report->aborted + report->errors == static_cast<std::size_t>(count));
          const rn::connection_counters c = srv->counters();
          CHECK(c.accepted == static_cast<std::size_t>(count));
          CHECK(c.ended() == c.accepted);
          if (how == ending::shutdown_grace && who == clients::idle) CHECK(report->finished == 6);
        }
        for (int fd : fds_open) ::close(fd);
        srv.reset();
      }
}
