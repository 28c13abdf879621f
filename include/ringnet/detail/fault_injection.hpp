// Fault injection for tests: compiled in only with RINGNET_FAULT_INJECTION=1 (the meson option
// fault_injection sets it for the test programs), and even then off unless RINGNET_FAULT_RATE
// asks for it. A chosen fraction of the requests the ring submits then fail, or come up short, in
// the ways a real kernel may make them, so that the library's reaction to each runs.
//
// Nothing is changed after the fact: a request the kernel really ran keeps its real result (a
// recv that consumed bytes, reported as failed, would lose them by the injector's own doing).
// Every fault is made before the kernel sees the request, on the SQEs about to be submitted:
//
// - error: the SQE becomes an IORING_OP_NOP that completes with an error its own opcode can
//   return (IORING_NOP_INJECT_RESULT): -ECANCELED for any; -ENOBUFS for a buffer-select recv (no
//   buffer left) and for send and accept (no memory); -EAGAIN for a recv, send, accept, connect
//   or read; -EINTR for what runs in an io-wq worker (SPLICE, SHUTDOWN) and for a read; -EMFILE
//   for SOCKET. It keeps its user_data and link flags: a failed NOP breaks its link, so a linked
//   timeout completes -ECANCELED, as behind any request that failed.
// - short transfer: a plain-buffer RECV, SEND or SPLICE asks for 1..len bytes instead of len.
// - full submission queue: get_sqes() submits first, as when io_uring_get_sqe() finds no room.
//
// Untouched, because a kernel does not fail them on its own or the library relies on them:
// cancels, timeouts and linked timeouts, CLOSE (a CLOSE failed before it ran would leak its
// descriptor; a real one releases it whatever it returns) and the ring's own wake-up read.
//
// Kernels without IORING_NOP_INJECT_RESULT complete such a NOP with 0, which is no error at all:
// that is probed once per process, and without it only short transfers and a full queue are
// injected.
//
// Environment, read once per ring: RINGNET_FAULT_RATE, the probability of each fault at each
// chance (0..1; unset or 0: off), and RINGNET_FAULT_SEED, the seed of the ring's generator
// (mixed with the ring's creation index in the process, so rings differ but runs repeat).
#pragma once

#include <ringnet/detail/completion.hpp>
#include <ringnet/detail/config.hpp>

#include <liburing.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <span>

RINGNET_BEGIN_NAMESPACE
namespace detail {

// IORING_NOP_INJECT_RESULT (sqe->nop_flags, which shares rw_flags' place): the NOP completes
// with the result in sqe->len. liburing 2.3's headers lack both names.
inline constexpr std::uint32_t nop_inject_result = 1u << 0;

// Whether this kernel's NOP completes with an injected result (older ones ignore the flag).
inline bool nop_injects_results() noexcept {
  static const bool yes = [] {
    io_uring probe{};
    if (io_uring_queue_init(2, &probe, 0) < 0) return false;
    bool ok = false;
    if (io_uring_sqe* sqe = io_uring_get_sqe(&probe)) {
      io_uring_prep_nop(sqe);
      sqe->rw_flags = static_cast<int>(nop_inject_result);
      sqe->len = static_cast<unsigned>(-EALREADY);
      io_uring_cqe* cqe = nullptr;
      if (io_uring_submit_and_wait(&probe, 1) == 1 && io_uring_peek_cqe(&probe, &cqe) == 0)
        ok = cqe->res == -EALREADY;
    }
    io_uring_queue_exit(&probe);
    return ok;
  }();
  return yes;
}

class fault_injector {
 public:
  fault_injector() noexcept {
    static std::atomic<std::uint64_t> rings{0};
    const char* rate = std::getenv("RINGNET_FAULT_RATE");
    const double p = rate ? std::strtod(rate, nullptr) : 0.0;
    if (!(p > 0.0)) return;  // also NaN
    limit_ = p >= 1.0 ? UINT64_MAX : static_cast<std::uint64_t>(p * 18446744073709551616.0);
    const char* seed = std::getenv("RINGNET_FAULT_SEED");
    state_ = (seed ? std::strtoull(seed, nullptr, 10) : 0) +
             0x9e3779b97f4a7c15ull * (rings.fetch_add(1, std::memory_order_relaxed) + 1);
    errors_ = nop_injects_results();
  }

  // A send that could be made at once with send(2) goes to the ring instead, where faults are
  // injected, half of the time.
  [[nodiscard]] bool keep_off_inline() noexcept { return limit_ != 0 && (next() & 1) == 0; }

  // get_sqes(): act as if the submission queue were full.
  [[nodiscard]] bool sq_full() noexcept { return chance(); }

  // Just before submission: the SQEs queued since the last one (liburing's sqe_head..sqe_tail;
  // its SQ array maps slot i to SQE i).
  void rewrite(io_uring& r) noexcept {
    if (limit_ == 0) return;
    for (unsigned i = r.sq.sqe_head; i != r.sq.sqe_tail; ++i) rewrite(r.sq.sqes[i & r.sq.ring_mask]);
  }

 private:
  void rewrite(io_uring_sqe& sqe) noexcept {
    if (sqe.user_data == ignore_cqe || sqe.user_data == wake_cqe) return;
    const bool selects = (sqe.flags & IOSQE_BUFFER_SELECT) != 0;
    const std::span<const int> errors = errors_of(sqe.opcode, selects);
    if (errors.empty()) return;
    if (errors_ && chance()) {
      fail(sqe, errors[next() % errors.size()]);
      return;
    }
    const bool transfers =
        sqe.opcode == IORING_OP_RECV || sqe.opcode == IORING_OP_SEND || sqe.opcode == IORING_OP_SPLICE;
    if (transfers && !selects && sqe.len > 1 && chance())
      sqe.len = static_cast<unsigned>(1 + next() % sqe.len);
  }

  // The errors a kernel may complete `opcode` with on its own; empty: never injected.
  static std::span<const int> errors_of(unsigned opcode, bool selects) noexcept {
    static constexpr int buffer_recv[] = {-ECANCELED, -ENOBUFS};
    static constexpr int recv[] = {-ECANCELED, -EAGAIN};
    static constexpr int send_or_accept[] = {-ECANCELED, -EAGAIN, -ENOBUFS};
    static constexpr int connect[] = {-ECANCELED, -EAGAIN};
    static constexpr int socket[] = {-ECANCELED, -EMFILE};
    static constexpr int in_worker[] = {-ECANCELED, -EINTR};
    static constexpr int read[] = {-ECANCELED, -EAGAIN, -EINTR};
    static constexpr int poll[] = {-ECANCELED};
    switch (opcode) {
      case IORING_OP_RECV:
        if (selects) return buffer_recv;
        return recv;
      case IORING_OP_SEND:
      case IORING_OP_ACCEPT: return send_or_accept;
      case IORING_OP_CONNECT: return connect;
      case IORING_OP_SOCKET: return socket;
      case IORING_OP_SPLICE:
      case IORING_OP_SHUTDOWN: return in_worker;
      case IORING_OP_READ: return read;
      case IORING_OP_POLL_ADD: return poll;
      default: return {};
    }
  }

  static void fail(io_uring_sqe& sqe, int error) noexcept {
    const auto links = static_cast<std::uint8_t>(sqe.flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK));
    io_uring_prep_nop(&sqe);  // clears every field but user_data
    sqe.flags = links;
    sqe.rw_flags = static_cast<int>(nop_inject_result);
    sqe.len = static_cast<unsigned>(error);
  }

  bool chance() noexcept { return limit_ != 0 && next() < limit_; }

  std::uint64_t next() noexcept {  // splitmix64
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  std::uint64_t limit_ = 0;  // a chance is taken when next() < limit_: rate × 2^64
  std::uint64_t state_ = 0;
  bool errors_ = false;
};

}  // namespace detail
RINGNET_END_NAMESPACE
