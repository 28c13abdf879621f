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
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <latch>
#include <memory>
#include <new>
#include <mutex>
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
  /// For each thread's server: max_connections and the counters are per thread.
  server_options server{};
  io_context_options context{};
};

/// Runs rn::server on `threads` threads. `make_handler(io_context&)` is called once for each
/// thread, on that thread, one call at a time, before it accepts: what it returns is that thread's
/// handler (per-thread state such as a buffer_ring lives in it). Handlers must honour their stop
/// token (as for rn::server): shutdown waits for every connection's task.
///
/// Movable. Destroying or move-assigning it shuts down with no grace (open connections are reset)
/// and drops what an exception ended a thread with; doing so on one of its own threads is a
/// contract violation (a thread cannot wait for itself to end). A moved-from object may only be
/// destroyed or assigned to.
template <class MakeHandler>
  requires std::invocable<MakeHandler&, io_context&>
class threaded_server {
  using handler_type = std::invoke_result_t<MakeHandler&, io_context&>;

 public:
  /// Binds one listener per thread on `at` (port 0: the port the first one got, for all), starts
  /// the threads and returns once each of them made its handler and accepts. A ring or bind
  /// error (with threads > 1 also a fixed port someone else listens on) is returned, no thread
  /// started; so is a thread that cannot be created, after those already running stopped. An
  /// exception of make_handler, or a failed pinning, stops the threads already running and is
  /// rethrown here.
  static result<threaded_server> start(const endpoint& at, MakeHandler make_handler,
                                       threaded_server_options opts = {}) {
    if (opts.threads == 0) return std::make_error_code(std::errc::invalid_argument);
    auto st = std::make_unique<state>(std::move(make_handler), opts);
    if (opts.threads > 1) {
      st->opts.listen.reuse_port = true;
      // SO_REUSEPORT would let these listeners join one that another server (of this user)
      // already has on a fixed port, and share its connections: that port counts as taken.
      if (at.port() != 0)
        if (std::error_code e = port_taken(at)) return e;
    }
    endpoint local = at;
    for (unsigned i = 0; i < opts.threads; ++i) {
      std::unique_ptr<worker> w;
      try {
        w = std::make_unique<worker>(opts.context);
      } catch (const std::system_error& e) {  // io_uring_setup refused: EMFILE, ENOMEM, ...
        return e.code();
      }
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
    std::size_t started = 0;
    std::error_code spawn_error;
    for (; started < st->workers.size(); ++started) {
      worker& w = *st->workers[started];
      const int cpu = cpus.empty() ? -1 : cpus[started % cpus.size()];
      try {
        w.thread = std::thread([s = st.get(), &w, cpu, &ready] { s->run(w, cpu, ready); });
      } catch (const std::system_error& e) {  // out of threads
        spawn_error = e.code();
        break;
      } catch (const std::bad_alloc&) {
        spawn_error = std::make_error_code(std::errc::not_enough_memory);
        break;
      }
    }
    // Threads that never started count themselves out; their listeners close with them.
    ready.count_down(static_cast<std::ptrdiff_t>(st->workers.size() - started));
    ready.wait();
    if (spawn_error) {
      st->stop(std::chrono::nanoseconds::zero());
      return spawn_error;
    }
    for (auto& w : st->workers) {
      if (w->start_error) {
        st->stop(std::chrono::nanoseconds::zero());
        std::rethrow_exception(w->start_error);
      }
    }
    return threaded_server(std::move(st));
  }

  threaded_server(threaded_server&&) noexcept = default;
  threaded_server& operator=(threaded_server&& o) noexcept {
    if (this != &o) {
      if (st_) st_->stop_noexcept();
      st_ = std::move(o.st_);
    }
    return *this;
  }
  ~threaded_server() {
    if (st_) st_->stop_noexcept();
  }

  /// The address every listener is bound to (the port found for port 0).
  [[nodiscard]] const endpoint& local_endpoint() const noexcept { return live().local; }
  [[nodiscard]] unsigned threads() const noexcept { return static_cast<unsigned>(live().workers.size()); }

  /// Stops accepting on every thread, asks every connection to finish, waits up to `grace`,
  /// resets the rest, and joins the threads: rn::server::shutdown on each, at once. Blocks; call
  /// it from a thread that is not one of the server's (a handler calling it would wait for
  /// itself: resource_deadlock_would_occur is thrown). Calls from several threads wait for the
  /// first; later calls return its report. An exception a thread's loop ended with (a spawned
  /// task's, left unhandled) is rethrown once, by the call that joined it; the next call returns
  /// the report.
  shutdown_report shutdown(std::chrono::nanoseconds grace) {
    state& st = live();
    st.stop(grace);
    std::lock_guard lock(st.stop_mutex);  // concurrent calls: one takes each exception
    for (auto& w : st.workers)
      if (w->error) std::rethrow_exception(std::exchange(w->error, nullptr));
    return st.report;
  }

  /// After shutdown(): how the connections of all threads ended, summed (max_active: the sum of
  /// each thread's most at once).
  [[nodiscard]] connection_counters counters() const noexcept {
    RINGNET_ASSERT(live().stopped, "threaded_server::counters() before shutdown()");
    connection_counters sum{};
    for (const auto& w : live().workers) sum += w->counters;
    return sum;
  }
  /// After shutdown(): thread i's counters (which threads the kernel's hash gave connections to).
  [[nodiscard]] const connection_counters& counters_of_thread(unsigned i) const noexcept {
    RINGNET_ASSERT(live().stopped, "threaded_server::counters_of_thread() before shutdown()");
    RINGNET_ASSERT(i < live().workers.size(), "threaded_server::counters_of_thread(): no such thread");
    return live().workers[i]->counters;
  }

 private:
  struct worker {
    explicit worker(const io_context_options& o) { ctx.emplace(o); }
    std::optional<io_context> ctx;  // destroyed on the thread that ran it
    listener l;
    std::thread thread;
    std::atomic<std::uint64_t> token{0};  // detail::this_thread_token() of its thread, once running
    std::exception_ptr start_error;  // before it accepted: read by start() after the latch
    std::exception_ptr error;        // afterwards: read after the thread was joined
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
    std::mutex make_mutex;  // make_handler is called one call at a time
    std::mutex stop_mutex;  // shutdown() from several threads: one joins, the others wait
    bool stopped = false;
    shutdown_report report{};

    void run(worker& w, int cpu, std::latch& ready) noexcept {
      bool counted = false;
      w.token.store(detail::this_thread_token(), std::memory_order_release);
      try {
        if (cpu >= 0) pin_to(cpu);
        sync_wait(*w.ctx, serve(w, ready, counted));
      } catch (...) {
        (counted ? w.error : w.start_error) = std::current_exception();
      }
      w.l = listener{};  // a thread that failed early must not keep connections in its backlog
      w.ctx.reset();
      if (!counted) ready.count_down();  // `ready` may be gone after this
    }

    task<void> serve(worker& w, std::latch& ready, bool& counted) {
      io_context& ctx = *w.ctx;
      std::unique_lock made(make_mutex);
      handler_type h = make(ctx);
      made.unlock();
      server srv(ctx, std::move(w.l), std::move(h), opts.server);
      spawn(ctx, srv.run());
      counted = true;
      ready.count_down();  // `ready` may be gone after this
      (void)co_await sleep_until(ctx, std::chrono::steady_clock::time_point::max(), quit.get_token());
      w.report = co_await srv.shutdown(std::chrono::nanoseconds(grace.load(std::memory_order_acquire)));
      w.counters = srv.counters();
    }

    // By a token no later thread gets (a joined thread's std::thread::id is handed out again).
    [[nodiscard]] bool on_own_thread() const noexcept {
      for (const auto& w : workers)
        if (w->token.load(std::memory_order_acquire) == detail::this_thread_token()) return true;
      return false;
    }

    void stop(std::chrono::nanoseconds g) {
      if (on_own_thread())
        RINGNET_THROW(std::system_error(
            std::make_error_code(std::errc::resource_deadlock_would_occur),
            "ringnet: threaded_server shut down from one of its own threads"));
      std::lock_guard lock(stop_mutex);
      if (stopped) return;
      grace.store(g.count(), std::memory_order_release);
      quit.request_stop();
      for (auto& w : workers) {
        if (w->thread.joinable()) w->thread.join();
        report += w->report;
      }
      stopped = true;
    }
    void stop_noexcept() noexcept {
      if (on_own_thread())
        detail::contract_violation("rn::threaded_server destroyed or assigned on one of its own threads",
                           __FILE__, __LINE__);
      stop(std::chrono::nanoseconds::zero());
    }
  };

  // Whether another socket (without SO_REUSEPORT, or of another user) already listens on `at`.
  static std::error_code port_taken(const endpoint& at) noexcept {
    const int fd = ::socket(at.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno_code(errno);
    int r = detail::set_int_option(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (r == 0 && at.family() == AF_INET6) r = detail::set_int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (r == 0 && ::bind(fd, at.data(), at.size()) < 0) r = -errno;
    const std::error_code e = r < 0 ? errno_code(-r) : std::error_code{};
    ::close(fd);
    return e;
  }

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
  state& live() const noexcept {
    RINGNET_ASSERT(st_ != nullptr, "use of a moved-from rn::threaded_server");
    return *st_;
  }
  std::unique_ptr<state> st_;
};

RINGNET_END_NAMESPACE
