/* bench-epoll-echo: the classic non-blocking epoll echo server (the lifecycle echo of README "Benchmarks").
 *
 * Edge-triggered, every socket registered once for IN|OUT|RDHUP (no epoll_ctl after the ADD).
 * Data is read into one shared buffer and sent back at once; what a short send leaves over goes
 * to a per-connection block from a pool, and the connection stops reading until that block is
 * flushed (back-pressure: a client that does not read is not read from either). */
#include "peer_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

enum { BUF_SIZE = 16 * 1024, MAX_EVENTS = 256, ACCEPT_BACKOFF_MS = 10 };

struct out_block {
    char data[BUF_SIZE];
};

struct conn {
    struct peer_link live;
    int fd;
    bool readable; /* edge seen, not yet read to EAGAIN / short read */
    bool rdhup;    /* the peer's FIN was signalled: read until recv returns 0 */
    bool eof;
    struct out_block *out; /* unsent echo, NULL when none */
    unsigned out_off, out_len;
};

static struct {
    int epfd, listen_fd, signal_fd;
    bool stopping, accept_paused;
    long long deadline_ms, accept_retry_ms;
    size_t live;
    struct peer_link conns;
    struct peer_pool conn_pool, out_pool;
    char rbuf[BUF_SIZE];
} E = {
    .conn_pool = PEER_POOL_INIT(struct conn, 256),
    .out_pool = PEER_POOL_INIT(struct out_block, 16),
};

/* epoll_event.data.ptr of the two non-connection fds */
static char listener_tag, signal_tag;

static void release(struct conn *c, bool abortive)
{
    if (abortive)
        peer_abort(c->fd);
    else
        close(c->fd);
    if (c->out)
        peer_pool_put(&E.out_pool, c->out);
    peer_list_remove(&c->live);
    peer_pool_put(&E.conn_pool, c);
    E.live--;
}

/* false: the connection failed (EPIPE, ECONNRESET...) */
static bool flush(struct conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out->data + c->out_off, c->out_len, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EINTR;
        c->out_off += (unsigned)n;
        c->out_len -= (unsigned)n;
    }
    peer_pool_put(&E.out_pool, c->out);
    c->out = NULL;
    return true;
}

static bool echo(struct conn *c, const char *data, size_t len)
{
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            return false;
        n = 0;
    }
    if ((size_t)n < len) { /* keep the rest until EPOLLOUT */
        c->out = peer_pool_get(&E.out_pool);
        c->out_off = 0;
        c->out_len = (unsigned)(len - (size_t)n);
        memcpy(c->out->data, data + n, c->out_len);
    }
    return true;
}

static void service(struct conn *c)
{
    if (c->out && !flush(c)) {
        release(c, false);
        return;
    }
    while (c->readable && !c->out && !c->eof) {
        ssize_t n = recv(c->fd, E.rbuf, sizeof E.rbuf, 0);
        if (n > 0) {
            if (!echo(c, E.rbuf, (size_t)n)) {
                release(c, false);
                return;
            }
            /* A short read drained the socket: new data raises a new edge. */
            if ((size_t)n < sizeof E.rbuf && !c->rdhup)
                c->readable = false;
        } else if (n == 0) {
            c->eof = true;
        } else if (errno == EAGAIN) {
            c->readable = false;
        } else if (errno != EINTR) {
            release(c, false);
            return;
        }
    }
    if (c->eof && !c->out) {
        shutdown(c->fd, SHUT_WR);
        release(c, false);
    }
}

static void accept_all(void)
{
    for (;;) {
        int fd = accept4(E.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: no new edge will come, retry after a pause */
            E.accept_paused = errno != EAGAIN;
            E.accept_retry_ms = peer_now_ms() + ACCEPT_BACKOFF_MS;
            return;
        }
        struct conn *c = peer_pool_get(&E.conn_pool);
        *c = (struct conn){ .fd = fd };
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c };
        if (epoll_ctl(E.epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            peer_pool_put(&E.conn_pool, c);
            close(fd);
            continue;
        }
        peer_list_push(&E.conns, &c->live);
        E.live++;
    }
}

static void abort_all(void)
{
    while (!peer_list_empty(&E.conns))
        release(peer_container_of(E.conns.next, struct conn, live), true);
}

static void on_signal(double grace)
{
    struct signalfd_siginfo si;
    while (read(E.signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (E.stopping) { /* a second signal: do not wait for the grace period */
            E.deadline_ms = 0;
            continue;
        }
        E.stopping = true;
        E.deadline_ms = peer_now_ms() + (long long)(grace * 1000);
        close(E.listen_fd); /* also leaves the epoll set */
    }
}

int main(int argc, char **argv)
{
    struct peer_args args;
    peer_parse_args(argc, argv, 0, &args);
    peer_raise_nofile();
    peer_list_init(&E.conns);
    E.signal_fd = peer_signalfd(true);
    E.listen_fd = peer_listen(&args.listen, true);
    E.epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = { .events = EPOLLIN | EPOLLET, .data.ptr = &listener_tag };
    struct epoll_event sev = { .events = EPOLLIN, .data.ptr = &signal_tag };
    if (E.epfd < 0 || epoll_ctl(E.epfd, EPOLL_CTL_ADD, E.listen_fd, &lev) < 0 ||
        epoll_ctl(E.epfd, EPOLL_CTL_ADD, E.signal_fd, &sev) < 0) {
        perror("epoll");
        return 1;
    }
    peer_announce(E.listen_fd);

    struct epoll_event events[MAX_EVENTS];
    while (!E.stopping || E.live > 0) {
        int timeout = -1;
        if (E.stopping) {
            long long left = E.deadline_ms - peer_now_ms();
            timeout = left > 0 ? (int)left : 0;
        } else if (E.accept_paused) {
            timeout = ACCEPT_BACKOFF_MS;
        }
        int n = epoll_wait(E.epfd, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &listener_tag) {
                accept_all();
            } else if (p == &signal_tag) {
                on_signal(args.grace);
            } else {
                struct conn *c = p;
                uint32_t ev = events[i].events;
                if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    c->readable = true;
                if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                    c->rdhup = true;
                service(c);
            }
        }
        /* after the batch: nothing may be released while events still point at it */
        if (E.stopping && peer_now_ms() >= E.deadline_ms)
            abort_all();
        else if (E.accept_paused && !E.stopping && peer_now_ms() >= E.accept_retry_ms)
            accept_all();
    }
    close(E.epfd);
    close(E.signal_fd);
    return 0;
}
