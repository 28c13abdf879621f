/* bench-uring-echo: the hand-written liburing echo server, the practical limit that the other
 * peers are measured against (the lifecycle echo of README "Benchmarks").
 *
 * Per connection: one multishot recv into a provided-buffer ring, and one IORING_OP_SEND at a
 * time straight out of the received buffers (no copy). A connection keeps a FIFO of received
 * buffers still to be echoed; a buffer returns to the ring once it has been sent in full. When a
 * connection has CONN_QUEUE_MAX buffers queued (its client does not read), its recv is cancelled
 * and re-armed once the queue drained; a recv that ended with -ENOBUFS waits on the starved list
 * until buffers come back. On EOF: echo what is left, shutdown(SHUT_WR), close.
 *
 * Measurement variants (peer_common.h): --descriptors direct keeps the sockets in the ring's file
 * table; --teardown sqes ends a connection with a hard-linked shutdown + close in the next
 * submission, their successes posting no CQE; --min-wait-us batches the waits. With direct
 * descriptors an abort is a close (a FIN): SO_LINGER needs a socket command this probe does not
 * make. */
#include "peer_uring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum {
    BUF_SIZE = 16 * 1024,
    BUF_COUNT = 2048, /* a power of two, at most 32768 */
    BUF_GROUP = 1,
    CONN_QUEUE_MAX = 16,  /* buffers queued on one connection before its recv pauses */
    STARVED_RESUME = 64,  /* free buffers needed to re-arm the starved recvs */
    TAG_RECV = 0,
    TAG_SEND = 1,
};

struct conn {
    struct peer_link live;    /* every connection */
    struct peer_link starved; /* linked while waiting for buffers */
    int fd;
    int qhead, qtail;         /* buffer ids queued for sending (linked by buf_next), -1: empty */
    unsigned qoff;            /* bytes of qhead already sent */
    unsigned queued;          /* buffers in the queue */
    bool recv_armed, recv_cancelled, send_armed;
    bool eof, failed, aborting;
};

static struct {
    struct peer_server srv;
    struct io_uring_buf_ring *br;
    char *bufs;
    unsigned avail; /* buffers in the ring, available to the kernel */
    int buf_next[BUF_COUNT];
    unsigned buf_len[BUF_COUNT];
    struct peer_link conns, starved;
    struct peer_pool pool;
    bool sqe_teardown;
} E = { .pool = PEER_POOL_INIT(struct conn, 256) };

static void setup_buffers(void)
{
    E.br = mmap(NULL, BUF_COUNT * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    E.bufs = mmap(NULL, (size_t)BUF_COUNT * BUF_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (E.br == MAP_FAILED || E.bufs == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)E.br, .ring_entries = BUF_COUNT, .bgid = BUF_GROUP };
    int ret = io_uring_register_buf_ring(&E.srv.ring, &reg, 0);
    if (ret < 0) {
        fprintf(stderr, "io_uring_register_buf_ring: %s\n", strerror(-ret));
        exit(1);
    }
    io_uring_buf_ring_init(E.br);
    for (int i = 0; i < BUF_COUNT; i++)
        io_uring_buf_ring_add(E.br, E.bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(BUF_COUNT), i);
    io_uring_buf_ring_advance(E.br, BUF_COUNT);
    E.avail = BUF_COUNT;
}

static void recycle(int bid)
{
    io_uring_buf_ring_add(E.br, E.bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
                          io_uring_buf_ring_mask(BUF_COUNT), 0);
    io_uring_buf_ring_advance(E.br, 1);
    E.avail++;
}

static void arm_recv(struct conn *c)
{
    struct io_uring_sqe *sqe = peer_sqe(&E.srv);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT | peer_fd_flags(&E.srv);
    sqe->buf_group = BUF_GROUP;
    io_uring_sqe_set_data64(sqe, peer_ud(c, TAG_RECV));
    c->recv_armed = true;
}

static void arm_send(struct conn *c)
{
    struct io_uring_sqe *sqe = peer_sqe(&E.srv);
    io_uring_prep_send(sqe, c->fd, E.bufs + (size_t)c->qhead * BUF_SIZE + c->qoff,
                       E.buf_len[c->qhead] - c->qoff, MSG_NOSIGNAL);
    sqe->flags |= peer_fd_flags(&E.srv);
    io_uring_sqe_set_data64(sqe, peer_ud(c, TAG_SEND));
    c->send_armed = true;
}

static void enqueue(struct conn *c, int bid, unsigned len)
{
    E.buf_len[bid] = len;
    E.buf_next[bid] = -1;
    if (c->qtail >= 0)
        E.buf_next[c->qtail] = bid;
    else
        c->qhead = bid;
    c->qtail = bid;
    c->queued++;
}

static void pop(struct conn *c)
{
    int bid = c->qhead;
    c->qhead = E.buf_next[bid];
    if (c->qhead < 0)
        c->qtail = -1;
    c->qoff = 0;
    c->queued--;
    recycle(bid);
}

/* Returns the queued buffers to the ring, except one a send in flight still reads from. */
static void drop_queue(struct conn *c)
{
    while (c->queued > (c->send_armed ? 1u : 0u)) {
        if (c->send_armed) { /* keep the head, drop the rest */
            int bid = E.buf_next[c->qhead];
            E.buf_next[c->qhead] = E.buf_next[bid];
            if (c->qtail == bid)
                c->qtail = c->qhead;
            c->queued--;
            recycle(bid);
        } else {
            pop(c);
        }
    }
}

static void stop_recv(struct conn *c)
{
    if (c->recv_armed && !c->recv_cancelled) {
        peer_cancel(&E.srv, peer_ud(c, TAG_RECV));
        c->recv_cancelled = true;
    }
}

static void fail(struct conn *c)
{
    c->failed = true;
    drop_queue(c);
    stop_recv(c);
}

/* Ends the connection's socket, after shutdown(SHUT_WR) if `fin`: by syscalls, or (--teardown
 * sqes) as SQEs hard-linked so that the close runs even where the shutdown fails. */
static void end_socket(struct conn *c, bool fin)
{
    if (!E.sqe_teardown) {
        if (fin)
            shutdown(c->fd, SHUT_WR);
        close(c->fd);
        return;
    }
    if (fin && io_uring_sq_space_left(&E.srv.ring) < 2)
        io_uring_submit(&E.srv.ring); /* keep the pair in one submission */
    struct io_uring_sqe *sqe;
    if (fin) {
        sqe = peer_sqe(&E.srv);
        io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
        sqe->flags |= peer_fd_flags(&E.srv) | IOSQE_IO_HARDLINK | IOSQE_CQE_SKIP_SUCCESS;
        io_uring_sqe_set_data64(sqe, peer_ud(NULL, PEER_TAG_IGNORE));
    }
    sqe = peer_sqe(&E.srv);
    if (E.srv.direct)
        io_uring_prep_close_direct(sqe, (unsigned)c->fd);
    else
        io_uring_prep_close(sqe, c->fd);
    sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(sqe, peer_ud(NULL, PEER_TAG_IGNORE));
}

/* Arms what the connection needs next, or closes it once nothing is in flight and it is done. */
static void step(struct conn *c)
{
    bool dead = c->failed || c->aborting;
    if (!dead) {
        if (c->queued && !c->send_armed)
            arm_send(c);
        if (!c->recv_armed && !c->eof && c->queued < CONN_QUEUE_MAX && !peer_link_linked(&c->starved)) {
            if (E.avail > 0)
                arm_recv(c);
            else
                peer_list_push(&E.starved, &c->starved);
        }
    }
    if (c->recv_armed || c->send_armed)
        return;
    if (c->aborting) {
        if (E.srv.direct)
            end_socket(c, false);
        else
            peer_abort(c->fd);
    } else if (c->failed) {
        end_socket(c, false);
    } else if (c->eof && !c->queued) {
        end_socket(c, true);
    } else {
        return; /* alive: starved for buffers */
    }
    peer_list_remove(&c->live);
    peer_list_remove(&c->starved);
    peer_pool_put(&E.pool, c);
    E.srv.live--;
}

/* Once per loop turn, when every completion of the turn is in and E.avail is exact. */
static void feed_starved(struct peer_server *s)
{
    (void)s;
    while (E.avail >= STARVED_RESUME && !peer_list_empty(&E.starved)) {
        struct conn *c = peer_container_of(E.starved.next, struct conn, starved);
        peer_list_remove(&c->starved);
        step(c);
    }
}

static void on_recv(struct conn *c, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->recv_armed = c->recv_cancelled = false;
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
        E.avail--;
        if (cqe->res > 0 && !c->failed && !c->aborting)
            enqueue(c, bid, (unsigned)cqe->res);
        else
            recycle(bid);
    }
    if (cqe->res == 0)
        c->eof = true;
    else if (cqe->res == -ENOBUFS)
        peer_list_push(&E.starved, &c->starved); /* re-armed by feed_starved() */
    else if (cqe->res < 0 && cqe->res != -ECANCELED && cqe->res != -EINTR)
        fail(c); /* -ECONNRESET and friends */
    if (c->recv_armed && c->queued >= CONN_QUEUE_MAX)
        stop_recv(c); /* the client does not read: stop taking buffers from the others */
    step(c);
}

static void on_send(struct conn *c, const struct io_uring_cqe *cqe)
{
    c->send_armed = false;
    if (cqe->res > 0) {
        c->qoff += (unsigned)cqe->res;
        if (c->qoff == E.buf_len[c->qhead])
            pop(c);
    } else if (!c->failed) {
        fail(c); /* -EPIPE, -ECONNRESET, or cancelled by an abort */
    }
    if (c->failed || c->aborting)
        drop_queue(c);
    step(c);
}

static void accepted(struct peer_server *s, int fd)
{
    struct conn *c = peer_pool_get(&E.pool);
    *c = (struct conn){ .fd = fd, .qhead = -1, .qtail = -1 };
    peer_list_init(&c->starved);
    peer_list_push(&E.conns, &c->live);
    s->live++;
    step(c);
}

static void completion(struct peer_server *s, struct io_uring_cqe *cqe)
{
    (void)s;
    struct conn *c = peer_ud_ptr(cqe->user_data);
    if (peer_ud_tag(cqe->user_data) == TAG_RECV)
        on_recv(c, cqe);
    else
        on_send(c, cqe);
}

static void abort_all(struct peer_server *s)
{
    for (struct peer_link *l = E.conns.next, *next; l != &E.conns; l = next) {
        next = l->next;
        struct conn *c = peer_container_of(l, struct conn, live);
        if (c->aborting)
            continue;
        c->aborting = true;
        drop_queue(c);
        peer_list_remove(&c->starved);
        stop_recv(c); /* the final CQEs come back, then step() closes */
        if (c->send_armed)
            peer_cancel(s, peer_ud(c, TAG_SEND));
        step(c);
    }
}

int main(int argc, char **argv)
{
    static const struct peer_server_ops ops = { accepted, completion, abort_all, feed_starved };
    struct peer_args args;
    peer_parse_args(argc, argv, PEER_ARGS_URING_PROBES, &args);
    E.sqe_teardown = args.sqe_teardown;
    peer_list_init(&E.conns);
    peer_list_init(&E.starved);
    peer_server_init(&E.srv, &args, &ops, 1024, 16384);
    setup_buffers();
    peer_server_run(&E.srv);
    return 0;
}
