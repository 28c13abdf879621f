// Detached tasks (spawn) and blocking entry points (sync_wait).
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/ring.hpp>
#include <ringnet/io_context.hpp>
#include <ringnet/task.hpp>

#include <coroutine>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

RINGNET_BEGIN_NAMESPACE

namespace detail {

// A fire-and-forget coroutine owned by its ring: linked in on start, unlinked and freed at the
// end; a ring that is destroyed first destroys the frame itself.
struct detached_task {
  struct promise_type : detached_link, remote_node, pooled_frame {
    ring* owner = nullptr;
    detached_task get_return_object() noexcept {
      frame = std::coroutine_handle<promise_type>::from_promise(*this);
      return {this};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    auto final_suspend() noexcept {
      owner->detach(this);
      return std::suspend_never{};
    }
    void return_void() const noexcept {}
    void unhandled_exception() const noexcept { std::terminate(); }  // the body catches all
  };
  promise_type* promise;
};

struct report_to_context {
  ring* r;
  void operator()(std::exception_ptr e) const noexcept { r->report(std::move(e)); }
};

template <class Awaitable, class ErrorSink>
detached_task run_detached(Awaitable aw, ErrorSink sink) {
  try {
    co_await std::move(aw);
  } catch (...) {
    sink(std::current_exception());
  }
}

inline void start_detached(ring& r, detached_task t) {
  auto* p = t.promise;
  p->owner = &r;
  p->run = [](remote_node* n) noexcept {
    auto& pr = static_cast<detached_task::promise_type&>(*n);
    pr.owner->attach(&pr);
    pr.owner->post(pr.frame);
  };
  if (r.on_this_thread())
    p->run(p);
  else
    r.post_remote(p);  // from another thread, or before run(): the ring picks it up
}

}  // namespace detail

/// Runs `aw` (a task or any awaitable) on `ctx` without waiting for it. The context owns it:
/// run() keeps going while it lives. An exception it lets escape goes to `on_error`, by default
/// to the context's exception handler (or out of run()). Safe to call from any thread.
template <class Awaitable>
void spawn(io_context& ctx, Awaitable&& aw) {
  detail::ring& r = detail::ring_of(ctx);
  detail::start_detached(r, detail::run_detached(std::forward<Awaitable>(aw),
                                                 detail::report_to_context{&r}));
}
template <class Awaitable, class ErrorSink>
  requires std::is_invocable_v<ErrorSink&, std::exception_ptr>
void spawn(io_context& ctx, Awaitable&& aw, ErrorSink on_error) {
  detail::start_detached(detail::ring_of(ctx),
                         detail::run_detached(std::forward<Awaitable>(aw), std::move(on_error)));
}

namespace detail {
template <class T>
struct sync_wait_state {
  std::optional<std::conditional_t<std::is_void_v<T>, std::monostate, T>> value;
  std::exception_ptr error;
  bool done = false;
};

template <class Awaitable, class T>
task<void> sync_wait_body(Awaitable aw, sync_wait_state<T>& st) {
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(aw);
      st.value.emplace();
    } else {
      st.value.emplace(co_await std::move(aw));
    }
  } catch (...) {
    st.error = std::current_exception();
  }
  st.done = true;
}
}  // namespace detail

/// Runs `ctx` on this thread until `aw` completes, then returns its result (or rethrows). Other
/// work on the context keeps running meanwhile; stop() does not interrupt sync_wait.
template <class Awaitable>
auto sync_wait(io_context& ctx, Awaitable&& aw) -> await_result_t<Awaitable> {
  using T = await_result_t<Awaitable>;
  using A = std::remove_cvref_t<Awaitable>;
  detail::ring& r = detail::ring_of(ctx);
  detail::sync_wait_state<T> st;
  task<void> body = detail::sync_wait_body<A, T>(A(std::forward<Awaitable>(aw)), st);
  auto h = body.release();
  r.post(h);
  while (!st.done) r.run_turn(true);
  h.destroy();
  if (st.error) std::rethrow_exception(st.error);
  r.rethrow_unhandled();
  if constexpr (!std::is_void_v<T>) return std::move(*st.value);
}

RINGNET_END_NAMESPACE
