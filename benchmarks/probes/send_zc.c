/* bench-send-zc: what IORING_OP_SEND_ZC is worth against IORING_OP_SEND, per send size, over a
 * loopback TCP connection on this machine. The question it answers is the size above which a
 * library should send zero-copy.
 *
 * For each size, alternating rounds of the two methods; a round sends --bytes over a fresh
 * connection to a reader thread, one send at a time from SEND_DEPTH buffers in turn. A buffer
 * sent with SEND is free again at its CQE; sent with SEND_ZC only at its notification CQE (the
 * kernel may read it until then). Printed: GB/s, the sending thread's CPU per GB (over loopback
 * most of the delivery too: the receive softirq runs in the sender's context), the process's
 * CPU per GB (the reader's copy out included), the medians of the per-round ratios
 * zc/copy, and how many notifications reported that the kernel copied the data after all
 * (IORING_SEND_ZC_REPORT_USAGE). */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Kernel 6.2, newer than liburing 2.3's headers. */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

enum { SEND_DEPTH = 8, MAX_ROUNDS = 99 };

static void die(const char *what, int err)
{
    fprintf(stderr, "bench-send-zc: %s: %s\n", what, strerror(err));
    exit(1);
}

static double now_s(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *reader(void *arg)
{
    int fd = (int)(intptr_t)arg;
    static char buf[1 << 20];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            break;
    }
    close(fd);
    return NULL;
}

/* A connected pair over 127.0.0.1: *out the sending end, the other end read by a new thread. */
static pthread_t connect_pair(int *out)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &len))
        die("listen on 127.0.0.1", errno);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        die("connect", errno);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        die("accept", errno);
    close(l);
    pthread_t t;
    int err = pthread_create(&t, NULL, reader, (void *)(intptr_t)s);
    if (err)
        die("pthread_create", err);
    *out = c;
    return t;
}

struct result {
    double gbps, send_cpu_per_gb, total_cpu_per_gb;
    unsigned long notifs, copied;
};

/* Sends `total` bytes in sends of `size`, one send in flight at a time (as a stream sends), from
 * SEND_DEPTH buffers taken in turn: with SEND_ZC a buffer is taken again only after its
 * notifications came. A short send continues from where it stopped. */
static struct result run_round(struct io_uring *ring, char *bufs, size_t size, size_t total, int zc)
{
    int fd;
    pthread_t t = connect_pair(&fd);
    struct result r = { 0 };
    size_t done = 0, off = 0, len = 0;
    int held[SEND_DEPTH] = { 0 }; /* notifications buffer i still waits for */
    int cur = -1, next = 0, in_flight = 0, holding = 0;
    double t0 = wall_s(), c0 = now_s(RUSAGE_THREAD), p0 = now_s(RUSAGE_SELF);
    for (;;) {
        if (!in_flight && done < total) {
            if (cur < 0 && !held[next]) {
                cur = next;
                next = (next + 1) % SEND_DEPTH;
                off = 0;
                len = total - done < size ? total - done : size;
            }
            if (cur >= 0) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
                char *p = bufs + (size_t)cur * size + off;
                if (zc)
                    io_uring_prep_send_zc(sqe, fd, p, len - off, MSG_NOSIGNAL, IORING_SEND_ZC_REPORT_USAGE);
                else
                    io_uring_prep_send(sqe, fd, p, len - off, MSG_NOSIGNAL);
                io_uring_sqe_set_data64(sqe, (__u64)cur);
                in_flight = 1;
            }
        }
        if (!in_flight && done == total && !holding)
            break;
        int ret = io_uring_submit_and_wait(ring, 1);
        if (ret < 0 && ret != -EINTR)
            die("io_uring_submit_and_wait", -ret);
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(ring, head, cqe)
        {
            seen++;
            int i = (int)cqe->user_data;
            if (cqe->flags & IORING_CQE_F_NOTIF) {
                r.notifs++;
                if ((unsigned)cqe->res & IORING_NOTIF_USAGE_ZC_COPIED)
                    r.copied++;
                held[i]--;
                holding--;
                continue;
            }
            in_flight = 0;
            if (cqe->flags & IORING_CQE_F_MORE) { /* the notification is still to come */
                held[i]++;
                holding++;
            }
            if (cqe->res < 0)
                die(zc ? "send_zc" : "send", -cqe->res);
            done += (size_t)cqe->res;
            off += (size_t)cqe->res;
            if (off == len)
                cur = -1;
        }
        io_uring_cq_advance(ring, seen);
    }
    double send_cpu = now_s(RUSAGE_THREAD) - c0;
    shutdown(fd, SHUT_WR);
    pthread_join(t, NULL);
    close(fd);
    double wall = wall_s() - t0, cpu = now_s(RUSAGE_SELF) - p0, gb = (double)total / 1e9;
    r.gbps = gb / wall;
    r.send_cpu_per_gb = send_cpu / gb;
    r.total_cpu_per_gb = cpu / gb;
    return r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    size_t total = (size_t)1 << 30;
    int rounds = 5;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--bytes") && i + 1 < argc) {
            total = strtoull(argv[++i], &end, 10);
            if (*end || total < (1u << 20))
                die("--bytes (at least 1048576)", EINVAL);
        } else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
            rounds = (int)strtol(argv[++i], &end, 10);
            if (*end || rounds < 1 || rounds > MAX_ROUNDS)
                die("--rounds (1 .. 99)", EINVAL);
        } else {
            int help = !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
            fprintf(help ? stdout : stderr, "usage: bench-send-zc [--bytes N] [--rounds R]\n");
            return help ? 0 : 2;
        }
    }
    static const size_t sizes[] = { 16384, 65536, 262144, 1048576 };
    struct io_uring ring;
    int ret = io_uring_queue_init(64, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    if (ret < 0)
        die("io_uring_queue_init", -ret);
    char *bufs = aligned_alloc(4096, SEND_DEPTH * sizes[3]);
    if (!bufs)
        die("aligned_alloc", ENOMEM);
    memset(bufs, 'x', SEND_DEPTH * sizes[3]);
    printf("%zu bytes per round, %d rounds per method, %d buffers\n", total, rounds, SEND_DEPTH);
    printf("%8s %10s %10s %12s %12s %10s %10s %9s %9s\n", "size", "copy GB/s", "zc GB/s", "copy cpu/GB",
           "zc cpu/GB", "zc/copy", "zc/copy", "zc/copy", "copied");
    printf("%8s %10s %10s %12s %12s %10s %10s %9s %9s\n", "", "", "", "(sender s)", "(sender s)", "GB/s",
           "send cpu", "all cpu", "notifs");
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        double rate[MAX_ROUNDS], scpu[MAX_ROUNDS], acpu[MAX_ROUNDS], cg[MAX_ROUNDS], zg[MAX_ROUNDS], cc[MAX_ROUNDS],
            zcpu[MAX_ROUNDS];
        unsigned long notifs = 0, copied = 0;
        for (int r = 0; r < rounds; r++) {
            struct result c, z; /* which goes first alternates, so that neither always follows the other */
            if (r % 2) {
                z = run_round(&ring, bufs, sizes[s], total, 1);
                c = run_round(&ring, bufs, sizes[s], total, 0);
            } else {
                c = run_round(&ring, bufs, sizes[s], total, 0);
                z = run_round(&ring, bufs, sizes[s], total, 1);
            }
            cg[r] = c.gbps, zg[r] = z.gbps, cc[r] = c.send_cpu_per_gb, zcpu[r] = z.send_cpu_per_gb;
            rate[r] = z.gbps / c.gbps;
            scpu[r] = z.send_cpu_per_gb / c.send_cpu_per_gb;
            acpu[r] = z.total_cpu_per_gb / c.total_cpu_per_gb;
            notifs += z.notifs;
            copied += z.copied;
        }
        printf("%8zu %10.2f %10.2f %12.3f %12.3f %10.2f %10.2f %9.2f %4lu/%lu\n", sizes[s], median(cg, rounds),
               median(zg, rounds), median(cc, rounds), median(zcpu, rounds), median(rate, rounds),
               median(scpu, rounds), median(acpu, rounds), copied, notifs);
        fflush(stdout);
    }
    free(bufs);
    io_uring_queue_exit(&ring);
    return 0;
}
