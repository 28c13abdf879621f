/* The part of a liburing peer that is not about connections: the ring (SINGLE_ISSUER |
 * DEFER_TASKRUN with fallbacks), a multishot accept that re-arms itself, SIGINT/SIGTERM read
 * from a signalfd through the ring, the grace period, and the event loop (one io_uring_enter per
 * turn, completions reaped in bulk). The program handles its own completions and connections. */
#ifndef PEER_URING_H
#define PEER_URING_H

#include "peer_common.h"

#include <liburing.h>
#include <stdint.h>
#include <sys/signalfd.h>

/* user_data = pointer | tag. Tags 0-3 belong to the program, 4-7 to the server, which drops the
 * CQEs tagged PEER_TAG_IGNORE. */
enum { PEER_TAG_BITS = 3, PEER_TAG_MASK = 7, PEER_TAG_PROGRAM_MAX = 3, PEER_TAG_IGNORE = 7 };

static inline __u64 peer_ud(const void *p, unsigned tag) { return (__u64)(uintptr_t)p | tag; }
static inline void *peer_ud_ptr(__u64 ud) { return (void *)(uintptr_t)(ud & ~(__u64)PEER_TAG_MASK); }
static inline unsigned peer_ud_tag(__u64 ud) { return (unsigned)(ud & PEER_TAG_MASK); }

struct peer_server;

struct peer_server_ops {
    /* A new connection (a blocking socket, TCP_NODELAY inherited from the listener): an fd, or
     * with direct descriptors an index into the ring's file table. */
    void (*accepted)(struct peer_server *s, int fd);
    /* A completion tagged 0..PEER_TAG_PROGRAM_MAX. */
    void (*completion)(struct peer_server *s, struct io_uring_cqe *cqe);
    /* The grace period ran out (or a second signal came): abort every connection. */
    void (*abort_all)(struct peer_server *s);
    /* Optional: called once per loop turn, after the completions of the turn were handled. */
    void (*turn_end)(struct peer_server *s);
};

struct peer_server {
    struct io_uring ring;
    const struct peer_server_ops *ops;
    int listen_fd;     /* -1 once closed */
    int signal_fd;
    bool accept_armed; /* the multishot accept is in the kernel */
    bool stopping;     /* a signal came: no more accepting, grace running */
    size_t live;       /* connections the program still owns; the loop ends at 0 once stopping */
    struct __kernel_timespec grace, backoff;
    struct signalfd_siginfo siginfo;
    bool direct;          /* accepted sockets go into the ring's file table (--descriptors direct) */
    unsigned min_wait_us; /* --min-wait-us */
    bool ring_fd_registered;
};

/* The SQE flag that names a connection's socket: IOSQE_FIXED_FILE with direct descriptors. */
static inline unsigned char peer_fd_flags(const struct peer_server *s) { return s->direct ? IOSQE_FIXED_FILE : 0; }

/* Listener + ring + signal handling. Exits on failure. */
void peer_server_init(struct peer_server *s, const struct peer_args *args, const struct peer_server_ops *ops,
                      unsigned sq_entries, unsigned cq_entries);

/* Prints "listening on ...", then runs until stopping and every connection is gone, then tears
 * the ring down. */
void peer_server_run(struct peer_server *s);

/* An SQE, submitting first if the SQ is full (never NULL). */
static inline struct io_uring_sqe *peer_sqe(struct peer_server *s)
{
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(&s->ring)))
        io_uring_submit(&s->ring);
    return sqe;
}

/* Cancels the request with this user_data; the cancel's own CQE is ignored. Safe while the
 * request's final CQE is already in the CQ: SQEs run in order, so the cancel reaches the kernel
 * before any new request can reuse the user_data (or the fd). */
void peer_cancel(struct peer_server *s, __u64 user_data);

#endif
