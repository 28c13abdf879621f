// bench-asio-echo / bench-asio-uring-echo: the lifecycle echo server (README, "Benchmarks") written the
// way a Boost.Asio user writes it: C++20 coroutines, one single-threaded io_context. Built twice,
// on Asio's default epoll reactor and with -DBOOST_ASIO_HAS_IO_URING -DBOOST_ASIO_DISABLE_EPOLL.
#include "peer_common.h"

#include <boost/asio.hpp>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>

namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

namespace {

// Errors as values on the hot path, no exceptions.
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

struct server {
    asio::io_context ctx{1};
    tcp::acceptor acceptor{ctx};
    asio::signal_set signals{ctx, SIGINT, SIGTERM};
    asio::steady_timer grace_timer{ctx};
    std::chrono::milliseconds grace{};
    bool stopping = false;

    // The live sessions, so that the end of the grace period can abort them.
    struct session_entry {
        session_entry *prev, *next;
        tcp::socket *socket;
    };
    session_entry sessions{&sessions, &sessions, nullptr};

    bool idle() const { return sessions.next == &sessions; }

    void abort_all()
    {
        for (session_entry *e = sessions.next; e != &sessions; e = e->next) {
            error_code ec;
            e->socket->set_option(asio::socket_base::linger(true, 0), ec);
            e->socket->close(ec); // its pending operation completes with operation_aborted
        }
    }
};

// Registers a session's socket for its lifetime (lives in the coroutine frame).
class session_registration {
public:
    session_registration(server &srv, tcp::socket &socket) : srv_(srv), entry_{srv.sessions.prev, &srv.sessions, &socket}
    {
        entry_.prev->next = &entry_;
        srv.sessions.prev = &entry_;
    }
    ~session_registration()
    {
        entry_.prev->next = entry_.next;
        entry_.next->prev = entry_.prev;
        if (srv_.stopping && srv_.idle())
            srv_.grace_timer.cancel(); // the last one out ends the grace period
    }
    session_registration(const session_registration &) = delete;
    session_registration &operator=(const session_registration &) = delete;

private:
    server &srv_;
    server::session_entry entry_;
};

asio::awaitable<void> session(server &srv, tcp::socket socket)
{
    session_registration registration(srv, socket);
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    std::array<char, 16 * 1024> buf;
    for (;;) {
        auto [rec, n] = co_await socket.async_read_some(asio::buffer(buf), use_tuple);
        if (rec == asio::error::eof) {
            socket.shutdown(tcp::socket::shutdown_send, ec); // half-close; the destructor closes
            co_return;
        }
        if (rec)
            co_return; // reset, or aborted at the end of the grace period
        auto [wec, written] = co_await asio::async_write(socket, asio::buffer(buf.data(), n), use_tuple);
        if (wec)
            co_return;
    }
}

asio::awaitable<void> accept_loop(server &srv)
{
    asio::steady_timer backoff(srv.ctx);
    for (;;) {
        auto [ec, socket] = co_await srv.acceptor.async_accept(use_tuple);
        if (ec) {
            if (srv.stopping)
                co_return;
            backoff.expires_after(std::chrono::milliseconds(10)); // EMFILE and friends: do not spin
            co_await backoff.async_wait(use_tuple);
            continue;
        }
        asio::co_spawn(srv.ctx, session(srv, std::move(socket)), asio::detached);
    }
}

// SIGINT/SIGTERM: stop accepting, give the sessions the grace period, abort the rest. A second
// signal ends the grace period at once.
asio::awaitable<void> lifecycle(server &srv)
{
    auto [ec, signo] = co_await srv.signals.async_wait(use_tuple);
    if (ec)
        co_return;
    srv.stopping = true;
    srv.acceptor.close(ec);
    if (!srv.idle()) {
        srv.grace_timer.expires_after(srv.grace);
        srv.signals.async_wait([&srv](error_code sec, int) {
            if (!sec)
                srv.grace_timer.cancel();
        });
        co_await srv.grace_timer.async_wait(use_tuple);
        srv.abort_all();
    }
    srv.signals.cancel();
}

} // namespace

int main(int argc, char **argv)
{
    peer_args args;
    peer_parse_args(argc, argv, 0, &args);
    peer_raise_nofile();
    std::signal(SIGPIPE, SIG_IGN);

    server srv;
    srv.grace = std::chrono::milliseconds(static_cast<long long>(args.grace * 1000));
    tcp::endpoint ep;
    std::memcpy(ep.data(), &args.listen.addr, args.listen.len);
    ep.resize(args.listen.len);
    error_code ec;
    srv.acceptor.open(ep.protocol(), ec);
    if (!ec)
        srv.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec)
        srv.acceptor.bind(ep, ec);
    if (!ec)
        srv.acceptor.listen(PEER_BACKLOG, ec);
    if (ec) {
        std::fprintf(stderr, "%s: listen: %s\n", argv[0], ec.message().c_str());
        return 1;
    }
    peer_announce(srv.acceptor.native_handle());

    asio::co_spawn(srv.ctx, accept_loop(srv), asio::detached);
    asio::co_spawn(srv.ctx, lifecycle(srv), asio::detached);
    srv.ctx.run();
    return 0;
}
