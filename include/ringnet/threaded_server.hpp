// threaded_server: one server per thread (thread per core). Each thread has its own io_context and
// its own SO_REUSEPORT listener on the same address, so the kernel spreads new connections over
// the threads by a hash of their addresses and nothing is shared between threads on the way of a
// connection: no lock, no hand-over. shutdown() stops every thread gracefully and sums their
// counters.
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/endpoint.hpp>
#include <ringnet/error.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/listener.hpp>
#include <ringnet/server.hpp>
#include <ringnet/spawn.hpp>
#include <ringnet/stop_token.hpp>
#include <ringnet/task.hpp>
#include <ringnet/timer.hpp>

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <latch>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

RINGNET_BEGIN_NAMESPACE

struct threaded_server_options {
  /// Server threads, each with its own ring and listener (at least 1).
  unsigned threads = 1;
  /// Pins thread i to the i-th CPU (modulo their number) of those the starting thread may run on.
  bool pin_threads = false;
  /// For every listener; reuse_port is set whenever threads > 1.
  listen_options listen{.backlog = 4096};
  server_options server{};
  io_context_options context{};
};

/// Runs rn::server on `threads` threads. `make_handler(io_context&)` is called once on each
/// thread, on that thread, before it accepts: what it returns is that thread's handler (per-thread
/// state such as a buffer_ring lives in it). Movable; shut down before destruction, or the
/// destructor shuts down with no grace (open connections are reset).
template <class MakeHandler>
  requires std::invocable<MakeHandler&, io_context&>
class threaded_server {
  using handler_type = std::invoke_result_t<MakeHandler&, io_context&>;

 public:
  /// Binds one listener per thread on `at` (port 0: the port the first one got, for all), starts
  /// the threads and returns once each of them made its handler and accepts. A bind error is
  /// returned (no thread started); an exception of make_handler, or a failed pinning, stops the
  /// threads already running and is rethrown here.
  static result<threaded_server> start(const endpoint& at, MakeHandler make_handler,
                                       threaded_server_options opts = {}) {
    if (opts.threads == 0) return std::make_error_code(std::errc::invalid_argument);
    auto st = std::make_unique<state>(std::move(make_handler), opts);
    if (opts.threads > 1) st->opts.listen.reuse_port = true;
    endpoint local = at;
    for (unsigned i = 0; i < opts.threads; ++i) {
      auto w = std::make_unique<worker>(opts.context);
      // Bound here, run on its own thread: a ring binds to the thread that first runs it.
      result<listener> l = listener::bind(*w->ctx, local, st->opts.listen);
      if (!l) return l.error();
      if (i == 0) {
        result<endpoint> got = l->local_endpoint();
        if (!got) return got.error();
        local = *got;
      }
      w->l = std::move(*l);
      st->workers.push_back(std::move(w));
    }
    st->local = local;
    std::vector<int> cpus;
    if (opts.pin_threads) cpus = allowed_cpus();
    std::latch ready(static_cast<std::ptrdiff_t>(opts.threads));
    for (std::size_t i = 0; i < st->workers.size(); ++i) {
      const int cpu = cpus.empty() ? -1 : cpus[i % cpus.size()];
      st->workers[i]->thread = std::thread([s = st.get(), w = st->workers[i].get(), cpu, &ready] {
        s->run(*w, cpu, ready);
      });
    }
    ready.wait();
    for (auto& w : st->workers) {
      if (w->error) {
        const std::exception_ptr e = w->error;
        st->stop(std::chrono::nanoseconds::zero());
        std::rethrow_exception(e);
      }
    }
    return threaded_server(std::move(st));
  }

  threaded_server(threaded_server&&) noexcept = default;
  threaded_server& operator=(threaded_server&& o) noexcept {
    if (this != &o) {
      if (st_) st_->stop(std::chrono::nanoseconds::zero());
      st_ = std::move(o.st_);
    }
    return *this;
  }
  ~threaded_server() {
    if (st_) st_->stop(std::chrono::nanoseconds::zero());
  }

  /// The address every listener is bound to (the port found for port 0).
  [[nodiscard]] const endpoint& local_endpoint() const noexcept { return st_->local; }
  [[nodiscard]] unsigned threads() const noexcept { return static_cast<unsigned>(st_->workers.size()); }

  /// Stops accepting on every thread, asks every connection to finish, waits up to `grace`,
  /// resets the rest, and joins the threads: rn::server::shutdown on each, at once. Blocks; call
  /// it from a thread that is not one of the server's (a handler calling it would wait for
  /// itself: resource_deadlock_would_occur is thrown). A second call returns the first's report.
  /// Rethrows an exception that ended a thread early (its connections are counted as they ended).
  shutdown_report shutdown(std::chrono::nanoseconds grace) {
    st_->stop(grace);
    for (auto& w : st_->workers)
      if (w->error) std::rethrow_exception(std::exchange(w->error, nullptr));
    return st_->report;
  }

  /// After shutdown(): how the connections of all threads ended, summed (max_active: the sum of
  /// each thread's most at once).
  [[nodiscard]] connection_counters counters() const noexcept {
    RINGNET_ASSERT(st_->stopped, "threaded_server::counters() before shutdown()");
    connection_counters sum{};
    for (const auto& w : st_->workers) sum += w->counters;
    return sum;
  }
  /// After shutdown(): thread i's counters (which threads the kernel's hash gave connections to).
  [[nodiscard]] const connection_counters& counters_of_thread(unsigned i) const noexcept {
    RINGNET_ASSERT(st_->stopped, "threaded_server::counters_of_thread() before shutdown()");
    RINGNET_ASSERT(i < st_->workers.size(), "threaded_server::counters_of_thread(): no such thread");
    return st_->workers[i]->counters;
  }

 private:
  struct worker {
    explicit worker(const io_context_options& o) { ctx.emplace(o); }
    std::optional<io_context> ctx;  // destroyed on the thread that ran it
    listener l;
    std::thread thread;
    std::exception_ptr error;
    connection_counters counters{};
    shutdown_report report{};
  };

  struct state {
    state(MakeHandler m, const threaded_server_options& o) : make(std::move(m)), opts(o) {}
    MakeHandler make;
    threaded_server_options opts;
    endpoint local;
    std::vector<std::unique_ptr<worker>> workers;
    inplace_stop_source quit;
    std::atomic<std::chrono::nanoseconds::rep> grace{0};
    bool stopped = false;
    shutdown_report report{};

    void run(worker& w, int cpu, std::latch& ready) noexcept {
      bool counted = false;
      try {
        if (cpu >= 0) pin_to(cpu);
        sync_wait(*w.ctx, serve(w, ready, counted));
      } catch (...) {
        w.error = std::current_exception();
      }
      w.l = listener{};  // a thread that failed early must not keep connections in its backlog
      w.ctx.reset();
      if (!counted) ready.count_down();
    }

    task<void> serve(worker& w, std::latch& ready, bool& counted) {
      io_context& ctx = *w.ctx;
      server srv(ctx, std::move(w.l), make(ctx), opts.server);
      spawn(ctx, srv.run());
      counted = true;
      ready.count_down();  // `ready` may be gone after this
      (void)co_await sleep_until(ctx, std::chrono::steady_clock::time_point::max(), quit.get_token());
      w.report = co_await srv.shutdown(std::chrono::nanoseconds(grace.load(std::memory_order_acquire)));
      w.counters = srv.counters();
    }

    void stop(std::chrono::nanoseconds g) {
      for (const auto& w : workers)
        if (w->thread.get_id() == std::this_thread::get_id())
          RINGNET_THROW(std::system_error(
              std::make_error_code(std::errc::resource_deadlock_would_occur),
              "ringnet: threaded_server shut down from one of its own threads"));
      if (stopped) return;
      grace.store(g.count(), std::memory_order_release);
      quit.request_stop();
      for (auto& w : workers) {
        if (w->thread.joinable()) w->thread.join();
        report += w->report;
      }
      stopped = true;
    }
  };

  static std::vector<int> allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    std::vector<int> cpus;
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
    for (std::size_t c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(static_cast<int>(c));
    return cpus;
  }
  static void pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<std::size_t>(cpu), &set);
    if (const int e = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); e != 0)
      RINGNET_THROW(std::system_error(std::error_code(e, std::system_category()),
                                      "ringnet: pinning a server thread to a CPU"));
  }

  explicit threaded_server(std::unique_ptr<state> s) noexcept : st_(std::move(s)) {}
  std::unique_ptr<state> st_;
};

RINGNET_END_NAMESPACE
