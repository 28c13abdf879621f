// Detached tasks (spawn) and blocking entry points (sync_wait).
#pragma once

#include <ringnet/config.hpp>
#include <ringnet/detail/join.hpp>
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
  struct promise_type : detached_link, remote_node, pooled {
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

/// Runs `ctx` on this thread until `aw` completes, then returns its result (or rethrows). Other
/// work on the context keeps running meanwhile; stop() does not interrupt sync_wait (it blocks
/// in the kernel as usual). From a coroutine running on `ctx` itself it throws
/// std::system_error (resource_deadlock_would_occur): that loop is already running.
template <class Awaitable>
auto sync_wait(io_context& ctx, Awaitable&& aw) -> await_result_t<Awaitable> {
  using T = await_result_t<Awaitable>;
  using A = std::remove_cvref_t<Awaitable>;
  detail::ring& r = detail::ring_of(ctx);
  r.claim_for_this_thread();
  detail::join_slot<T> slot;
  detail::join_counter counter(1);  // a join of one, whose "parent" is this loop
  detail::join_child child = detail::join_body<A, T>(A(std::forward<Awaitable>(aw)), slot);
  child.coro.promise().counter = &counter;
  r.post(child.coro);
  while (counter.remaining.load(std::memory_order_acquire) > 1) r.run_turn(true, false);
  if (slot.error) std::rethrow_exception(slot.error);
  r.rethrow_unhandled();
  if constexpr (!std::is_void_v<T>) return std::move(*slot.value);
}

RINGNET_END_NAMESPACE
