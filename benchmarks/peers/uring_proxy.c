/* bench-uring-proxy: the hand-written liburing TCP copy proxy, the reference of the bulk benchmark.
 *
 * For every client, connect to the upstream and copy both ways. Each direction owns a circular
 * buffer (--buffer bytes, default 1 MiB): one recv fills the free part while one send drains the
 * filled part, so reading and writing overlap. Half-close is propagated: EOF from one side →
 * shutdown(SHUT_WR) of the other once everything read has been sent, the other direction keeps
 * running; both sockets close when both directions ended. An error on either side (RST, refused
 * upstream) aborts both (SO_LINGER {1,0} + close). */
#include "peer_uring.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

enum { TAG_CONNECT = 0, TAG_RECV = 1, TAG_SEND = 2 };

struct session;

struct half { /* one direction: src → buf → dst */
    struct session *sess;
    int src, dst;
    char *buf;
    size_t head, len; /* the filled part of the circular buffer */
    bool recv_armed, send_armed;
    bool eof;  /* src sent FIN */
    bool shut; /* dst got our FIN: this direction is over */
};

struct session {
    struct peer_link live;
    struct half dir[2]; /* [0] client → upstream, [1] upstream → client */
    int client, upstream;
    bool connecting, failed;
};

static struct {
    struct peer_server srv;
    struct peer_endpoint upstream;
    size_t cap; /* bytes per direction */
    struct peer_link sessions;
    struct peer_pool pool, buffers;
} P = { .pool = PEER_POOL_INIT(struct session, 64) };

static void arm_recv(struct half *h)
{
    size_t tail = (h->head + h->len) % P.cap;
    size_t room = tail >= h->head ? P.cap - tail : h->head - tail;
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_recv(sqe, h->src, h->buf + tail, room, 0);
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_RECV));
    h->recv_armed = true;
}

static void arm_send(struct half *h)
{
    size_t run = P.cap - h->head < h->len ? P.cap - h->head : h->len;
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_send(sqe, h->dst, h->buf + h->head, run, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_SEND));
    h->send_armed = true;
}

static void half_step(struct half *h)
{
    if (h->len && !h->send_armed)
        arm_send(h);
    if (!h->eof && !h->recv_armed && h->len < P.cap)
        arm_recv(h);
    if (h->eof && !h->len && !h->send_armed && !h->shut) {
        shutdown(h->dst, SHUT_WR);
        h->shut = true;
    }
}

static bool busy(const struct session *s)
{
    return s->connecting || s->dir[0].recv_armed || s->dir[0].send_armed || s->dir[1].recv_armed ||
           s->dir[1].send_armed;
}

/* Arms what the session needs next, or closes it once nothing is in flight and it is done. */
static void step(struct session *s)
{
    if (!s->failed && !s->connecting) {
        half_step(&s->dir[0]);
        half_step(&s->dir[1]);
    }
    if (busy(s))
        return;
    if (s->failed) {
        peer_abort(s->client);
        peer_abort(s->upstream);
    } else if (s->dir[0].shut && s->dir[1].shut) {
        close(s->client);
        close(s->upstream);
    } else {
        return;
    }
    peer_pool_put(&P.buffers, s->dir[0].buf);
    peer_list_remove(&s->live);
    peer_pool_put(&P.pool, s);
    P.srv.live--;
}

/* Cancels whatever is in flight; step() aborts both sockets once the final CQEs are in. */
static void fail(struct session *s)
{
    if (s->failed)
        return;
    s->failed = true;
    if (s->connecting)
        peer_cancel(&P.srv, peer_ud(s, TAG_CONNECT));
    for (int i = 0; i < 2; i++) {
        if (s->dir[i].recv_armed)
            peer_cancel(&P.srv, peer_ud(&s->dir[i], TAG_RECV));
        if (s->dir[i].send_armed)
            peer_cancel(&P.srv, peer_ud(&s->dir[i], TAG_SEND));
    }
}

static void accepted(struct peer_server *srv, int fd)
{
    int up = socket(P.upstream.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (up < 0) {
        peer_abort(fd);
        return;
    }
    int one = 1;
    setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    struct session *s = peer_pool_get(&P.pool);
    char *mem = peer_pool_get(&P.buffers);
    *s = (struct session){
        .dir = { { .sess = s, .src = fd, .dst = up, .buf = mem },
                 { .sess = s, .src = up, .dst = fd, .buf = mem + P.cap } },
        .client = fd,
        .upstream = up,
        .connecting = true,
    };
    peer_list_push(&P.sessions, &s->live);
    srv->live++;

    struct io_uring_sqe *sqe = peer_sqe(srv);
    io_uring_prep_connect(sqe, up, (const struct sockaddr *)&P.upstream.addr, P.upstream.len);
    io_uring_sqe_set_data64(sqe, peer_ud(s, TAG_CONNECT));
}

static void completion(struct peer_server *srv, struct io_uring_cqe *cqe)
{
    (void)srv;
    struct session *s;
    int res = cqe->res;
    if (peer_ud_tag(cqe->user_data) == TAG_CONNECT) {
        s = peer_ud_ptr(cqe->user_data);
        s->connecting = false;
        if (res < 0)
            fail(s); /* refused upstream: the client gets RST */
    } else {
        struct half *h = peer_ud_ptr(cqe->user_data);
        s = h->sess;
        if (peer_ud_tag(cqe->user_data) == TAG_RECV) {
            h->recv_armed = false;
            if (res > 0)
                h->len += (size_t)res;
            else if (res == 0)
                h->eof = true;
            else
                fail(s);
        } else {
            h->send_armed = false;
            if (res > 0) {
                h->head = (h->head + (size_t)res) % P.cap;
                h->len -= (size_t)res;
                if (!h->len && !h->recv_armed)
                    h->head = 0; /* the next recv gets the whole buffer */
            } else {
                fail(s);
            }
        }
    }
    step(s);
}

static void abort_all(struct peer_server *srv)
{
    (void)srv;
    for (struct peer_link *l = P.sessions.next, *next; l != &P.sessions; l = next) {
        next = l->next;
        struct session *s = peer_container_of(l, struct session, live);
        fail(s);
        step(s);
    }
}

int main(int argc, char **argv)
{
    static const struct peer_server_ops ops = { accepted, completion, abort_all, NULL };
    struct peer_args args;
    peer_parse_args(argc, argv, PEER_ARGS_PROXY, &args);
    P.upstream = args.upstream;
    P.cap = args.buffer;
    P.buffers = (struct peer_pool){ .size = 2 * args.buffer, .per_chunk = 1 };
    peer_list_init(&P.sessions);
    peer_server_init(&P.srv, &args, &ops, 1024, 8192);
    peer_server_run(&P.srv);
    return 0;
}
