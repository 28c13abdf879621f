/* bench-uring-proxy: the hand-written liburing TCP copy proxy, the reference of the bulk benchmark.
 *
 * For every client, connect to the upstream and copy both ways. Each direction owns a circular
 * buffer (--buffer bytes, default 1 MiB): one recv fills the free part while one send drains the
 * filled part, so reading and writing overlap. Half-close is propagated: EOF from one side →
 * shutdown(SHUT_WR) of the other once everything read has been sent, the other direction keeps
 * running; both sockets close when both directions ended. An error on either side (RST, refused
 * upstream) aborts both (SO_LINGER {1,0} + close).
 *
 * --recv bundles measures receive bundles instead (IORING_RECVSEND_BUNDLE, kernel 6.10): each
 * direction's bytes are split into 64 KiB buffers in a provided-buffer ring of its own, one
 * multishot recv fills as many of them per completion as the socket has data for, and one
 * sendmsg (MSG_WAITALL) sends every buffer received so far; a sent buffer goes back into the
 * ring, and a recv that ran out of buffers (-ENOBUFS) is re-armed then. */
#include "peer_uring.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Kernel 6.10 (liburing 2.3's headers predate them). */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif

enum { BUNDLE_BUF_SIZE = 64 << 10, BUNDLE_MAX_IOV = 64 };

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
    /* --recv bundles: buf is split into ring_entries buffers of BUNDLE_BUF_SIZE, buffer group bgid.
     * Received buffers wait in `queued` in arrival order (the last buffer of each recv may be
     * partly filled), from index `queue_head`, `queue_len` of them; the first `sending` of them
     * are in the send. len counts their bytes. */
    struct io_uring_buf_ring *ring;
    unsigned short bgid;
    unsigned ring_head; /* how many buffers the kernel has taken from the ring */
    struct {
        unsigned short bid;
        unsigned len;
    } queued[BUNDLE_MAX_IOV];
    unsigned queue_head, queue_len, sending;
    size_t sending_bytes;
    struct iovec iov[BUNDLE_MAX_IOV];
    struct msghdr msg;
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
    bool bundles;
    unsigned ring_entries; /* --recv bundles: buffers per direction, a power of two */
    unsigned short next_bgid, free_bgids[1024], free_bgid_count;
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

static char *bundle_buf(const struct half *h, unsigned bid) { return h->buf + (size_t)bid * BUNDLE_BUF_SIZE; }

static void bundle_return(struct half *h, unsigned bid)
{
    io_uring_buf_ring_add(h->ring, bundle_buf(h, bid), BUNDLE_BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(P.ring_entries), 0);
    io_uring_buf_ring_advance(h->ring, 1);
}

/* A provided-buffer ring of its own for this direction, filled with all its buffers. */
static bool bundle_setup(struct half *h)
{
    size_t bytes = (P.ring_entries * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
    void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return false;
    h->bgid = P.free_bgid_count ? P.free_bgids[--P.free_bgid_count] : P.next_bgid++;
    struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)mem, .ring_entries = P.ring_entries, .bgid = h->bgid };
    if (io_uring_register_buf_ring(&P.srv.ring, &reg, 0) < 0) {
        munmap(mem, bytes);
        return false;
    }
    h->ring = mem;
    io_uring_buf_ring_init(h->ring);
    for (unsigned i = 0; i < P.ring_entries; i++)
        bundle_return(h, i);
    return true;
}

static void bundle_teardown(struct half *h)
{
    if (!h->ring)
        return;
    io_uring_unregister_buf_ring(&P.srv.ring, h->bgid);
    munmap(h->ring, (P.ring_entries * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095);
    h->ring = NULL;
    if (P.free_bgid_count < sizeof P.free_bgids / sizeof P.free_bgids[0])
        P.free_bgids[P.free_bgid_count++] = h->bgid;
}

static void bundle_arm_recv(struct half *h)
{
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_recv_multishot(sqe, h->src, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = h->bgid;
    sqe->ioprio |= IORING_RECVSEND_BUNDLE;
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_RECV));
    h->recv_armed = true;
}

/* One sendmsg of every queued buffer; MSG_WAITALL: it completes with all of them or fails. */
static void bundle_arm_send(struct half *h)
{
    unsigned n = h->queue_len;
    h->sending_bytes = 0;
    for (unsigned i = 0; i < n; i++) {
        unsigned q = (h->queue_head + i) % BUNDLE_MAX_IOV;
        h->iov[i] = (struct iovec){ bundle_buf(h, h->queued[q].bid), h->queued[q].len };
        h->sending_bytes += h->queued[q].len;
    }
    h->msg = (struct msghdr){ .msg_iov = h->iov, .msg_iovlen = n };
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_sendmsg(sqe, h->dst, &h->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_SEND));
    h->sending = n;
    h->send_armed = true;
}

/* A recv completion of res > 0 bytes: it filled the next buffers of the ring, in ring order,
 * the first of them named by the CQE. */
static void bundle_received(struct half *h, size_t res, unsigned first_bid)
{
    if (h->ring->bufs[h->ring_head & io_uring_buf_ring_mask(P.ring_entries)].bid != first_bid) {
        fprintf(stderr, "bench-uring-proxy: a bundle did not start at the ring's head\n");
        abort();
    }
    while (res) {
        unsigned short bid = h->ring->bufs[h->ring_head++ & io_uring_buf_ring_mask(P.ring_entries)].bid;
        unsigned len = res < BUNDLE_BUF_SIZE ? (unsigned)res : BUNDLE_BUF_SIZE;
        unsigned q = (h->queue_head + h->queue_len++) % BUNDLE_MAX_IOV;
        h->queued[q].bid = bid;
        h->queued[q].len = len;
        h->len += len;
        res -= len;
    }
}

/* The send of the first `sending` queued buffers completed with res: all of them (MSG_WAITALL),
 * or the connection failed. */
static bool bundle_sent(struct half *h, int res)
{
    if (res < 0 || (size_t)res != h->sending_bytes)
        return false;
    for (unsigned i = 0; i < h->sending; i++) {
        bundle_return(h, h->queued[h->queue_head].bid);
        h->queue_head = (h->queue_head + 1) % BUNDLE_MAX_IOV;
    }
    h->queue_len -= h->sending;
    h->len -= (size_t)res;
    h->sending = 0;
    return true;
}

static void half_step(struct half *h)
{
    if (h->len && !h->send_armed) {
        if (P.bundles)
            bundle_arm_send(h);
        else
            arm_send(h);
    }
    if (!h->eof && !h->recv_armed && (P.bundles ? h->queue_len < P.ring_entries : h->len < P.cap)) {
        if (P.bundles)
            bundle_arm_recv(h);
        else
            arm_recv(h);
    }
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
    bundle_teardown(&s->dir[0]);
    bundle_teardown(&s->dir[1]);
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
    if (P.bundles && !(bundle_setup(&s->dir[0]) && bundle_setup(&s->dir[1]))) {
        s->connecting = false;
        fail(s);
        step(s);
        return;
    }

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
            h->recv_armed = P.bundles && (cqe->flags & IORING_CQE_F_MORE); /* multishot goes on */
            if (res > 0 && P.bundles)
                bundle_received(h, (size_t)res, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            else if (res > 0)
                h->len += (size_t)res;
            else if (res == 0)
                h->eof = true;
            else if (!(P.bundles && res == -ENOBUFS)) /* out of buffers: re-armed once some are sent */
                fail(s);
        } else if (P.bundles) {
            h->send_armed = false;
            if (!bundle_sent(h, res))
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
    P.bundles = args.recv_bundles;
    P.next_bgid = 1;
    if (P.bundles) {
        /* buffers per direction: --buffer's worth, a power of two from 2 to BUNDLE_MAX_IOV */
        P.ring_entries = 2;
        while (P.ring_entries < BUNDLE_MAX_IOV && (size_t)P.ring_entries * 2 * BUNDLE_BUF_SIZE <= P.cap)
            P.ring_entries *= 2;
        if (P.cap < (size_t)P.ring_entries * BUNDLE_BUF_SIZE)
            P.cap = (size_t)P.ring_entries * BUNDLE_BUF_SIZE;
    }
    P.buffers = (struct peer_pool){ .size = 2 * P.cap, .per_chunk = 1 };
    peer_list_init(&P.sessions);
    peer_server_init(&P.srv, &args, &ops, 1024, 8192);
    if (P.bundles && !(P.srv.ring.features & IORING_FEAT_RECVSEND_BUNDLE)) {
        fprintf(stderr, "--recv bundles: this kernel has no IORING_FEAT_RECVSEND_BUNDLE (6.10)\n");
        return 1;
    }
    peer_server_run(&P.srv);
    return 0;
}
