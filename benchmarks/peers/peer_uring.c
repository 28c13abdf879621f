#include "peer_uring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/syscall.h>

enum { TAG_ACCEPT = 4, TAG_SIGNAL = 5, TAG_TIMER = 6, TAG_IGNORE = PEER_TAG_IGNORE };

/* Kernel 6.12, newer than liburing 2.3's headers: the min-wait feature bit, and
 * io_uring_getevents_arg with min_wait_usec (liburing 2.3 calls the field pad, later ones
 * min_wait_usec: the kernel's layout is declared here rather than either name used). */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
struct min_wait_arg {
    __u64 sigmask;
    __u32 sigmask_sz;
    __u32 min_wait_usec;
    __u64 ts;
};
_Static_assert(sizeof(struct min_wait_arg) == sizeof(struct io_uring_getevents_arg), "kernel layout");
/* Sockets the file table holds with direct descriptors, at most RLIMIT_NOFILE (the kernel's
 * limit for the table too): the many workload's 10,000 and churn's turnover (an index is free
 * again once its close completed). */
static unsigned direct_table_size(void)
{
    struct rlimit rl;
    rlim_t n = 32768;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n)
        n = rl.rlim_cur;
    return (unsigned)n;
}

/* Returns the ring's IORING_FEAT_* bits; *registered: whether its fd is registered. */
static unsigned ring_init(struct io_uring *ring, unsigned sq_entries, unsigned cq_entries, bool *registered)
{
    static const struct {
        unsigned flags;
        const char *name;
    } modes[] = {
        { IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, "SINGLE_ISSUER|DEFER_TASKRUN" },
        { IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN" },
        { 0, "no task-run flags" },
    };
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        struct io_uring_params p = {
            .flags = modes[i].flags | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL,
            .cq_entries = cq_entries,
        };
        ret = io_uring_queue_init_params(sq_entries, ring, &p);
        if (ret == 0) {
            *registered = io_uring_register_ring_fd(ring) == 1; /* enter without fdget/fdput; optional */
            if (i > 0)
                fprintf(stderr, "note: io_uring set up with %s (%s refused)\n", modes[i].name, modes[0].name);
            return p.features;
        }
    }
    fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
    exit(1);
}

static void arm_accept(struct peer_server *s)
{
    struct io_uring_sqe *sqe = peer_sqe(s);
    if (s->direct)
        io_uring_prep_multishot_accept_direct(sqe, s->listen_fd, NULL, NULL, 0);
    else
        io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, peer_ud(NULL, TAG_ACCEPT));
    s->accept_armed = true;
}

static void arm_signal(struct peer_server *s)
{
    struct io_uring_sqe *sqe = peer_sqe(s);
    io_uring_prep_read(sqe, s->signal_fd, &s->siginfo, sizeof s->siginfo, 0);
    io_uring_sqe_set_data64(sqe, peer_ud(NULL, TAG_SIGNAL));
}

static void arm_timer(struct peer_server *s, struct __kernel_timespec *ts)
{
    struct io_uring_sqe *sqe = peer_sqe(s);
    io_uring_prep_timeout(sqe, ts, 0, 0);
    io_uring_sqe_set_data64(sqe, peer_ud(ts, TAG_TIMER));
}

void peer_cancel(struct peer_server *s, __u64 user_data)
{
    struct io_uring_sqe *sqe = peer_sqe(s);
    io_uring_prep_cancel64(sqe, user_data, 0);
    io_uring_sqe_set_data64(sqe, peer_ud(NULL, TAG_IGNORE));
}

void peer_server_init(struct peer_server *s, const struct peer_args *args, const struct peer_server_ops *ops,
                      unsigned sq_entries, unsigned cq_entries)
{
    memset(s, 0, sizeof *s);
    s->ops = ops;
    peer_raise_nofile();
    s->signal_fd = peer_signalfd(false); /* blocking: a read on an O_NONBLOCK file fails with -EAGAIN */
    s->listen_fd = peer_listen(&args->listen, false);
    unsigned features = ring_init(&s->ring, sq_entries, cq_entries, &s->ring_fd_registered);
    s->direct = args->direct;
    s->min_wait_us = args->min_wait_us;
    if (s->direct) {
        int ret = io_uring_register_files_sparse(&s->ring, direct_table_size());
        if (ret < 0) {
            fprintf(stderr, "io_uring_register_files_sparse: %s\n", strerror(-ret));
            exit(1);
        }
    }
    if (s->min_wait_us && !(features & IORING_FEAT_MIN_TIMEOUT)) {
        fprintf(stderr, "--min-wait-us: this kernel has no IORING_FEAT_MIN_TIMEOUT (6.12)\n");
        exit(1);
    }
    long long grace_ns = (long long)(args->grace * 1e9);
    s->grace.tv_sec = grace_ns / 1000000000;
    s->grace.tv_nsec = grace_ns % 1000000000;
    s->backoff.tv_nsec = 10 * 1000 * 1000;
    arm_accept(s);
    arm_signal(s);
}

static void close_listener(struct peer_server *s)
{
    close(s->listen_fd);
    s->listen_fd = -1;
}

static void on_signal(struct peer_server *s)
{
    if (s->stopping) { /* a second signal: do not wait for the grace period */
        s->ops->abort_all(s);
        return;
    }
    s->stopping = true;
    if (s->accept_armed)
        peer_cancel(s, peer_ud(NULL, TAG_ACCEPT)); /* the listener closes on its final CQE */
    else
        close_listener(s); /* in accept back-off */
    arm_timer(s, &s->grace);
    arm_signal(s);
}

static void on_accept(struct peer_server *s, const struct io_uring_cqe *cqe)
{
    if (cqe->res >= 0)
        s->ops->accepted(s, cqe->res);
    if (cqe->flags & IORING_CQE_F_MORE)
        return;
    s->accept_armed = false;
    if (s->stopping)
        close_listener(s);
    else if (cqe->res >= 0)
        arm_accept(s);
    else /* -EMFILE, -ENFILE, -ENOMEM...: retry after a pause rather than spin */
        arm_timer(s, &s->backoff);
}

/* Submits, then waits up to min_wait_us for wait_nr completions, and after that for the first
 * one: io_uring_enter with the min-wait argument liburing 2.3 cannot pass. The SQ flush is
 * liburing's own for a ring without SQPOLL. */
static int submit_and_wait_min(struct peer_server *s, unsigned wait_nr)
{
    struct io_uring *r = &s->ring;
    unsigned tail = r->sq.sqe_tail;
    if (r->sq.sqe_head != tail) {
        r->sq.sqe_head = tail;
        io_uring_smp_store_release(r->sq.ktail, tail);
    }
    unsigned submit = tail - *r->sq.khead;
    /* Without a timeout the kernel ends the wait at the min-wait, empty-handed (-ETIME). */
    static const struct __kernel_timespec hour = { .tv_sec = 3600 };
    struct min_wait_arg arg = { .min_wait_usec = s->min_wait_us, .ts = (__u64)(uintptr_t)&hour };
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    int fd = r->ring_fd;
    if (s->ring_fd_registered) {
        flags |= IORING_ENTER_REGISTERED_RING;
        fd = r->enter_ring_fd;
    }
    long ret = syscall(__NR_io_uring_enter, fd, submit, wait_nr, flags, &arg, sizeof arg);
    return ret < 0 ? -errno : (int)ret;
}

void peer_server_run(struct peer_server *s)
{
    peer_announce(s->listen_fd);
    unsigned last_batch = 1; /* completions the previous turn handled */
    while (!s->stopping || s->listen_fd >= 0 || s->live > 0) {
        /* min-wait: wait up to min_wait_us for as many completions as the previous turn had (at
         * most 64). Not for one: the kernel would arm a timer for every wait. */
        unsigned batch = last_batch > 64 ? 64u : last_batch;
        int ret = s->min_wait_us && batch > 1 ? submit_and_wait_min(s, batch) : io_uring_submit_and_wait(&s->ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-ret));
            exit(1);
        }
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(&s->ring, head, cqe)
        {
            seen++;
            switch (peer_ud_tag(cqe->user_data)) {
            case TAG_ACCEPT:
                on_accept(s, cqe);
                break;
            case TAG_SIGNAL:
                if (cqe->res == (int)sizeof s->siginfo)
                    on_signal(s);
                else
                    arm_signal(s);
                break;
            case TAG_TIMER:
                if (peer_ud_ptr(cqe->user_data) == &s->grace)
                    s->ops->abort_all(s);
                else if (!s->stopping) /* end of the accept back-off */
                    arm_accept(s);
                break;
            case TAG_IGNORE:
                break;
            default:
                s->ops->completion(s, cqe);
            }
        }
        io_uring_cq_advance(&s->ring, seen);
        last_batch = seen ? seen : 1;
        if (s->ops->turn_end)
            s->ops->turn_end(s);
    }
    io_uring_submit(&s->ring); /* the last connections' teardown SQEs (--teardown sqes) */
    io_uring_queue_exit(&s->ring);
    close(s->signal_fd);
}
