/* bench-uring-proxy: the hand-written liburing TCP copy proxy, the reference of the bulk benchmark.
 *
 * For every client, connect to the upstream and copy both ways. Each direction owns a circular
 * buffer (--buffer bytes, default 1 MiB): one recv fills the free part while one send drains the
 * filled part, so reading and writing overlap. Half-close is propagated: EOF from one side →
 * shutdown(SHUT_WR) of the other once everything read has been sent, the other direction keeps
 * running; both sockets close when both directions ended. An error on either side (RST, refused
 * upstream) aborts both (SO_LINGER {1,0} + close).
 *
 * --recv bundles|incremental measures receiving from a provided-buffer ring instead: each
 * direction's --buffer bytes become a ring of its own, a multishot recv is kept armed (re-armed
 * whenever the kernel ends it), and one sendmsg (MSG_WAITALL) sends everything received so far;
 * a buffer goes back into the ring once the kernel is done filling it and all of it was sent,
 * and a recv that ran out of buffers (-ENOBUFS) is re-armed then.
 *   bundles (IORING_RECVSEND_BUNDLE, kernel 6.10): 64 KiB buffers; one completion fills as many
 *     of them as the socket has data for. The kernel ends the multishot after most completions
 *     that carry data, so it is re-armed about as often as the circular buffer's recv.
 *   incremental (IOU_PBUF_RING_INC, 6.12): 256 KiB buffers; a completion takes only the bytes it
 *     received from the buffer at the ring's head, the next one goes on from there. */
#include "peer_uring.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Kernel 6.10 and 6.12 (liburing 2.3's headers predate them). */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
#define PROXY_PBUF_RING_INC 2 /* IOU_PBUF_RING_INC, io_uring_buf_reg.flags */

/* struct io_uring_buf_reg in the kernel's layout: the field after bgid is `pad` in liburing 2.3's
 * headers and `flags` in newer ones, so neither name is used. */
struct buf_reg {
    __u64 ring_addr;
    __u32 ring_entries;
    __u16 bgid;
    __u16 flags;
    __u64 resv[3];
};
_Static_assert(sizeof(struct buf_reg) == sizeof(struct io_uring_buf_reg), "kernel layout");

enum recv_mode { RECV_CIRCULAR, RECV_BUNDLES, RECV_INCREMENTAL };
enum { RING_MAX_BUFFERS = 64, RING_MAX_SEGMENTS = 2 * RING_MAX_BUFFERS + 2 };

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
    /* --recv bundles|incremental: buf is split into ring_entries buffers of buf_size, buffer group
     * bgid. Received bytes wait in `queued` as segments in arrival order, from index queue_head,
     * queue_len of them; the first `sending` of them are in the send. len counts their bytes. */
    struct io_uring_buf_ring *ring;
    unsigned short bgid;
    unsigned ring_head; /* how many buffers the kernel has finished with and moved past */
    unsigned taken;     /* of those, how many are not back in the ring */
    struct {
        unsigned short bid;
        unsigned off, len;
    } queued[RING_MAX_SEGMENTS];
    unsigned queue_head, queue_len, sending;
    size_t sending_bytes;
    struct {
        unsigned filled;   /* bytes received into it so far */
        unsigned segments; /* queued segments in it */
        bool finished;     /* the kernel moved past it */
    } bufstate[RING_MAX_BUFFERS];
    struct iovec iov[RING_MAX_SEGMENTS];
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
    enum recv_mode mode;
    unsigned ring_entries; /* --recv bundles|incremental: buffers per direction, a power of two */
    unsigned buf_size;
    unsigned short next_bgid, free_bgids[65536];
    unsigned free_bgid_count;
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

static char *ring_buf(const struct half *h, unsigned bid) { return h->buf + (size_t)bid * P.buf_size; }

static void ring_return(struct half *h, unsigned bid)
{
    io_uring_buf_ring_add(h->ring, ring_buf(h, bid), P.buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(P.ring_entries), 0);
    io_uring_buf_ring_advance(h->ring, 1);
}

static size_t ring_bytes(void) { return (P.ring_entries * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095; }

static int register_ring(void *mem, unsigned short bgid)
{
    struct buf_reg reg = { .ring_addr = (uintptr_t)mem, .ring_entries = P.ring_entries, .bgid = bgid,
                           .flags = P.mode == RECV_INCREMENTAL ? PROXY_PBUF_RING_INC : 0 };
    return io_uring_register_buf_ring(&P.srv.ring, (struct io_uring_buf_reg *)(void *)&reg, 0);
}

/* A provided-buffer ring of its own for this direction, filled with all its buffers. */
static bool ring_setup(struct half *h)
{
    void *mem = mmap(NULL, ring_bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return false;
    h->bgid = P.free_bgid_count ? P.free_bgids[--P.free_bgid_count] : P.next_bgid++;
    if (register_ring(mem, h->bgid) < 0) {
        munmap(mem, ring_bytes());
        P.free_bgids[P.free_bgid_count++] = h->bgid;
        return false;
    }
    h->ring = mem;
    io_uring_buf_ring_init(h->ring);
    for (unsigned i = 0; i < P.ring_entries; i++)
        ring_return(h, i);
    return true;
}

static void ring_teardown(struct half *h)
{
    if (!h->ring)
        return;
    io_uring_unregister_buf_ring(&P.srv.ring, h->bgid);
    munmap(h->ring, ring_bytes());
    h->ring = NULL;
    P.free_bgids[P.free_bgid_count++] = h->bgid;
}

static void ring_arm_recv(struct half *h)
{
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_recv_multishot(sqe, h->src, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = h->bgid;
    if (P.mode == RECV_BUNDLES)
        sqe->ioprio |= IORING_RECVSEND_BUNDLE;
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_RECV));
    h->recv_armed = true;
}

/* One sendmsg of every queued segment; MSG_WAITALL: it completes with all of them or fails. */
static void ring_arm_send(struct half *h)
{
    unsigned n = h->queue_len;
    h->sending_bytes = 0;
    for (unsigned i = 0; i < n; i++) {
        unsigned q = (h->queue_head + i) % RING_MAX_SEGMENTS;
        h->iov[i] = (struct iovec){ ring_buf(h, h->queued[q].bid) + h->queued[q].off, h->queued[q].len };
        h->sending_bytes += h->queued[q].len;
    }
    h->msg = (struct msghdr){ .msg_iov = h->iov, .msg_iovlen = n };
    struct io_uring_sqe *sqe = peer_sqe(&P.srv);
    io_uring_prep_sendmsg(sqe, h->dst, &h->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, peer_ud(h, TAG_SEND));
    h->sending = n;
    h->send_armed = true;
}

/* Queues `len` bytes received into buffer bid after the bytes it already holds; bytes that
 * follow the last queued segment of the same buffer (not yet in a send) extend it. */
static void ring_queue(struct half *h, unsigned bid, unsigned len, bool finished)
{
    unsigned last = (h->queue_head + h->queue_len - 1) % RING_MAX_SEGMENTS;
    if (h->queue_len > h->sending && h->queued[last].bid == bid) {
        h->queued[last].len += len;
    } else {
        unsigned q = (h->queue_head + h->queue_len++) % RING_MAX_SEGMENTS;
        h->queued[q].bid = (unsigned short)bid;
        h->queued[q].off = h->bufstate[bid].filled;
        h->queued[q].len = len;
        h->bufstate[bid].segments++;
    }
    h->bufstate[bid].filled += len;
    h->len += len;
    if (finished) {
        h->bufstate[bid].finished = true;
        h->ring_head++;
        h->taken++;
    }
}

/* A recv completion of res > 0 bytes. It starts in the buffer at the ring's head, named by the
 * CQE; a bundle fills the buffers after it too, each taken whole (the last one partly filled);
 * an incremental ring's buffer stays at the head while the kernel says there is more of it. */
static void ring_received(struct half *h, size_t res, const struct io_uring_cqe *cqe)
{
    unsigned mask = io_uring_buf_ring_mask(P.ring_entries);
    if (h->ring->bufs[h->ring_head & mask].bid != cqe->flags >> IORING_CQE_BUFFER_SHIFT) {
        fprintf(stderr, "bench-uring-proxy: a recv did not start at the ring's head\n");
        abort();
    }
    if (P.mode == RECV_INCREMENTAL) {
        ring_queue(h, cqe->flags >> IORING_CQE_BUFFER_SHIFT, (unsigned)res, !(cqe->flags & IORING_CQE_F_BUF_MORE));
        return;
    }
    while (res) {
        unsigned len = res < P.buf_size ? (unsigned)res : P.buf_size;
        ring_queue(h, h->ring->bufs[h->ring_head & mask].bid, len, true);
        res -= len;
    }
}

/* The send of the first `sending` queued segments completed with res: all of them (MSG_WAITALL),
 * or the connection failed. A buffer the kernel finished with and that has nothing left to
 * send goes back into the ring. */
static bool ring_sent(struct half *h, int res)
{
    if (res < 0 || (size_t)res != h->sending_bytes)
        return false;
    for (unsigned i = 0; i < h->sending; i++) {
        unsigned bid = h->queued[h->queue_head].bid;
        h->queue_head = (h->queue_head + 1) % RING_MAX_SEGMENTS;
        if (--h->bufstate[bid].segments == 0 && h->bufstate[bid].finished) {
            h->bufstate[bid].filled = 0;
            h->bufstate[bid].finished = false;
            h->taken--;
            ring_return(h, bid);
        }
    }
    h->queue_len -= h->sending;
    h->len -= (size_t)res;
    h->sending = 0;
    return true;
}

static void half_step(struct half *h)
{
    if (h->len && !h->send_armed) {
        if (P.mode != RECV_CIRCULAR)
            ring_arm_send(h);
        else
            arm_send(h);
    }
    if (!h->eof && !h->recv_armed && (P.mode != RECV_CIRCULAR ? h->taken < P.ring_entries : h->len < P.cap)) {
        if (P.mode != RECV_CIRCULAR)
            ring_arm_recv(h);
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
    ring_teardown(&s->dir[0]);
    ring_teardown(&s->dir[1]);
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
    if (P.mode != RECV_CIRCULAR && !(ring_setup(&s->dir[0]) && ring_setup(&s->dir[1]))) {
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
            h->recv_armed = cqe->flags & IORING_CQE_F_MORE; /* a multishot recv goes on */
            if (res > 0 && P.mode != RECV_CIRCULAR)
                ring_received(h, (size_t)res, cqe);
            else if (res > 0)
                h->len += (size_t)res;
            else if (res == 0)
                h->eof = true;
            else if (!(P.mode != RECV_CIRCULAR && res == -ENOBUFS)) /* out of buffers: re-armed once some are sent */
                fail(s);
        } else if (P.mode != RECV_CIRCULAR) {
            h->send_armed = false;
            if (!ring_sent(h, res))
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
    P.mode = args.recv_mode;
    P.next_bgid = 1;
    if (P.mode != RECV_CIRCULAR) {
        /* buffers per direction: --buffer's worth, a power of two from 2 to RING_MAX_BUFFERS */
        P.buf_size = P.mode == RECV_BUNDLES ? 64 << 10 : 256 << 10;
        P.ring_entries = 2;
        while (P.ring_entries < RING_MAX_BUFFERS && (size_t)P.ring_entries * 2 * P.buf_size <= P.cap)
            P.ring_entries *= 2;
        if (P.cap < (size_t)P.ring_entries * P.buf_size)
            P.cap = (size_t)P.ring_entries * P.buf_size;
    }
    P.buffers = (struct peer_pool){ .size = 2 * P.cap, .per_chunk = 1 };
    peer_list_init(&P.sessions);
    peer_server_init(&P.srv, &args, &ops, 1024, 8192);
    if (P.mode == RECV_BUNDLES && !(P.srv.ring.features & IORING_FEAT_RECVSEND_BUNDLE)) {
        fprintf(stderr, "--recv bundles: this kernel has no IORING_FEAT_RECVSEND_BUNDLE (6.10)\n");
        return 1;
    }
    if (P.mode == RECV_INCREMENTAL) { /* no feature bit: one registration says (group 0 is not used) */
        void *probe = mmap(NULL, ring_bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int ret = probe == MAP_FAILED ? -ENOMEM : register_ring(probe, 0);
        if (ret < 0) {
            fprintf(stderr, "--recv incremental: cannot register an IOU_PBUF_RING_INC ring (kernel 6.12): %s\n",
                    strerror(-ret));
            return 1;
        }
        io_uring_unregister_buf_ring(&P.srv.ring, 0);
        munmap(probe, ring_bytes());
    }
    peer_server_run(&P.srv);
    return 0;
}
