/* ringnet-loadgen: the client side of the lifecycle-echo benchmark protocol
 * (the lifecycle-echo protocol: README, "Benchmarks").
 *
 * One thread, one epoll instance, edge-triggered, non-blocking sockets: the client core is the
 * first to saturate on a 2-core machine, so every operation costs as few syscalls as we can
 * manage (one epoll_ctl per connection, a speculative send right after connect(), no per-op
 * allocation).  Every echoed byte is checked against the pattern that was sent.
 *
 * Workloads
 *   churn     C clients loop: connect -> send REQ bytes -> shutdown(SHUT_WR) -> read the echo to
 *             EOF, verifying every byte -> close (the client closes first).
 *   pingpong  N persistent connections, one MSG-byte message in flight per connection; with
 *             --interval a connection starts a message only every S seconds (starts spread evenly
 *             over the first interval), with --idle the connections first stay silent for S
 *             seconds after connecting (many mostly idle connections: the server's memory per
 *             connection).
 *
 * Phases: warmup (not counted) -> measured window (--duration / --max-ops) -> drain (no new
 * operations; in-flight ones finish and are verified; pingpong connections half-close and read
 * to EOF so the server sees a clean lifecycle) -> report.  Errors from every phase are counted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum workload { WL_CHURN, WL_PINGPONG };
enum err_kind { ERR_REFUSED, ERR_RESET, ERR_TIMEOUT, ERR_SHORT, ERR_WRONG, ERR_OTHER, ERR_N };
static const char *const err_names[ERR_N] = {"refused", "reset", "timeout", "short", "wrong", "other"};
enum phase { PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };
enum cstate {
    CS_IDLE,    /* not started */
    CS_BACKOFF, /* after an error, waiting until deadline to start again */
    CS_OP,      /* an operation is in flight */
    CS_WAIT,    /* pingpong with --interval or --idle: connected, the next message is due at deadline */
    CS_CLOSING, /* pingpong: half-closed at the end, reading to EOF */
    CS_DONE,
};

#define MAX_SOURCES 64
#define MAX_NOTIFY 16
#define MAX_CPUS 1024
#define PATTERN_SPAN 4093u /* prime: consecutive operations use different byte patterns */
#define RBUF_SIZE (256u * 1024u)
#define BACKOFF_NS (10ull * 1000 * 1000)
#define SCAN_NS (20ull * 1000 * 1000)
#define ERRNO_SLOTS 256

struct conn {
    int fd;
    uint8_t state;
    uint8_t wr_shut;
    uint8_t out_armed; /* EPOLLOUT is in the interest set (only after a send hit EAGAIN) */
    uint32_t sent;
    uint32_t rcvd;
    uint32_t off; /* offset into the pattern for the current operation */
    uint64_t t_start;
    uint64_t deadline;
};

struct cpu_snap {
    int n;
    uint64_t busy[MAX_CPUS];
    uint64_t total[MAX_CPUS];
};

/* ---- configuration ---- */
static enum workload g_wl = WL_CHURN;
static struct sockaddr_in g_target;
static char g_target_str[64] = "";
static unsigned g_conns = 0;
static uint32_t g_size = 64;
static double g_duration = 5.0;
static double g_warmup = 1.0;
static double g_timeout = 5.0;
static uint64_t g_max_ops = 0;
static struct sockaddr_in g_sources[MAX_SOURCES];
static unsigned g_nsources = 0;
static int g_sources_given = 0;
static int g_json = 0;
static int g_fail_on_error = 0;
static pid_t g_notify[MAX_NOTIFY];
static unsigned g_nnotify = 0;

/* ---- state ---- */
static struct conn *g_c;
static int g_ep = -1;
static unsigned char *g_pattern;
static unsigned char g_rbuf[RBUF_SIZE];
static enum phase g_phase = PH_WARMUP;
static unsigned g_active = 0; /* connections not yet CS_DONE */
static unsigned g_src_rr = 0;
static uint32_t g_off_rr = 0;
static uint64_t g_timeout_ns;
static double g_interval, g_idle;       /* pingpong pacing (seconds; 0 = none) */
static uint64_t g_interval_ns, g_idle_ns;
static volatile sig_atomic_t g_interrupted = 0;

/* ---- accounting ---- */
static uint64_t g_ops, g_warmup_ops, g_drain_ops;
static uint64_t g_err[ERR_N], g_err_window[ERR_N];
static uint64_t g_errno_count[ERRNO_SLOTS];
static uint64_t g_connects, g_spec_send_ok;
static rn_hist g_hist;
static uint64_t g_t_begin, g_t_measure, g_t_measure_end, g_t_end;
static struct cpu_snap g_cpu0, g_cpu1;
static struct rusage g_ru0, g_ru1;
static int g_cpu_ok = 0;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t sec_to_ns(double s)
{
    return s <= 0 ? 0 : (uint64_t)(s * 1e9);
}

static void die(const char *what)
{
    fprintf(stderr, "ringnet-loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- /proc/stat ---- */
static int read_cpu_snap(struct cpu_snap *s)
{
    static char buf[1 << 16];
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len >= sizeof buf - 1)
            break;
    }
    close(fd);
    buf[len] = 0;
    s->n = 0;
    long hz = sysconf(_SC_CLK_TCK);
    if (hz <= 0)
        hz = 100;
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, "cpu", 3) != 0 || line[3] < '0' || line[3] > '9')
            continue;
        char *p = line + 3;
        long cpu = strtol(p, &p, 10);
        unsigned long long v[10] = {0};
        for (int i = 0; i < 10; i++)
            v[i] = strtoull(p, &p, 10);
        if (cpu < 0 || cpu >= MAX_CPUS)
            continue;
        /* user nice system idle iowait irq softirq steal guest guest_nice */
        uint64_t busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        uint64_t total = busy + v[3] + v[4];
        s->busy[cpu] = busy * 1000000ull / (uint64_t)hz;
        s->total[cpu] = total * 1000000ull / (uint64_t)hz;
        if ((int)cpu + 1 > s->n)
            s->n = (int)cpu + 1;
    }
    return 0;
}

static void notify_pids(void)
{
    for (unsigned i = 0; i < g_nnotify; i++)
        if (kill(g_notify[i], SIGUSR1) != 0)
            fprintf(stderr, "ringnet-loadgen: kill(%d, SIGUSR1): %s\n", (int)g_notify[i], strerror(errno));
}

/* ---- phases ---- */
static void enter_measure(void)
{
    notify_pids();
    g_cpu_ok = read_cpu_snap(&g_cpu0) == 0;
    getrusage(RUSAGE_SELF, &g_ru0);
    g_t_measure = now_ns();
    g_phase = PH_MEASURE;
}

static void enter_drain(void)
{
    if (g_phase == PH_WARMUP)
        enter_measure();
    g_t_measure_end = now_ns();
    getrusage(RUSAGE_SELF, &g_ru1);
    if (g_cpu_ok)
        g_cpu_ok = read_cpu_snap(&g_cpu1) == 0;
    notify_pids();
    g_phase = PH_DRAIN;
}

/* ---- errors ---- */
static enum err_kind classify(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return ERR_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return ERR_RESET;
    case ETIMEDOUT:
        return ERR_TIMEOUT;
    default:
        return ERR_OTHER;
    }
}

static void count_error(enum err_kind k, int e)
{
    g_err[k]++;
    if (g_phase == PH_MEASURE)
        g_err_window[k]++;
    if (k == ERR_OTHER && e > 0 && e < ERRNO_SLOTS)
        g_errno_count[e]++;
}

static void close_conn(struct conn *c)
{
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
}

static void set_done(struct conn *c)
{
    close_conn(c);
    if (c->state != CS_DONE) {
        c->state = CS_DONE;
        g_active--;
    }
}

static void fail(struct conn *c, enum err_kind k, int e)
{
    count_error(k, e);
    if (c->fd >= 0) {
        /* abortive close: do not linger on a broken connection */
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close_conn(c);
    if (g_phase >= PH_DRAIN) {
        set_done(c);
        return;
    }
    c->state = CS_BACKOFF;
    c->deadline = now_ns() + BACKOFF_NS;
}

/* ---- operations ---- */
static void drive(struct conn *c, uint32_t events);

static void begin_op(struct conn *c, uint64_t t)
{
    c->state = CS_OP;
    c->sent = 0;
    c->rcvd = 0;
    c->wr_shut = 0;
    c->off = g_off_rr;
    g_off_rr = (g_off_rr + 1) % PATTERN_SPAN;
    c->t_start = t;
    c->deadline = t + g_timeout_ns;
}

/* Open a connection (churn: one per operation; pingpong: one per session). `first`: the session
 * opened at start, which --idle and --interval delay (a reconnect after an error starts at once). */
static void open_conn(struct conn *c, int first)
{
    uint64_t t = now_ns();
    begin_op(c, t);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fail(c, ERR_OTHER, errno);
        return;
    }
    c->fd = fd;
    int one = 1;
    if (g_wl == WL_PINGPONG)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (g_nsources) {
        const struct sockaddr_in *src = &g_sources[g_src_rr++ % g_nsources];
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)src, sizeof *src) != 0) {
            fail(c, ERR_OTHER, errno);
            return;
        }
    }
    g_connects++;
    if (connect(fd, (const struct sockaddr *)&g_target, sizeof g_target) != 0 && errno != EINPROGRESS) {
        int e = errno;
        fail(c, classify(e), e);
        return;
    }
    /* EPOLLOUT is only armed when a send would block, so an idle writable socket never wakes us */
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = (uint64_t)(c - g_c);
    c->out_armed = 0;
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        fail(c, ERR_OTHER, errno);
        return;
    }
    if (first && (g_idle_ns || g_interval_ns)) {
        c->state = CS_WAIT;
        c->deadline = g_t_begin + g_idle_ns + g_interval_ns * (uint64_t)(c - g_c) / g_conns;
        return;
    }
    /* On loopback the handshake has usually completed by now: try to send at once. */
    drive(c, 0);
    if (c->state == CS_OP && c->sent > 0)
        g_spec_send_ok++;
}

/* End of a pingpong session: half-close, then read to EOF (expecting nothing more). */
static void end_session(struct conn *c, uint64_t t)
{
    c->state = CS_CLOSING;
    c->deadline = t + g_timeout_ns;
    if (shutdown(c->fd, SHUT_WR) != 0) {
        int e = errno;
        fail(c, classify(e), e);
    }
}

static void op_done(struct conn *c)
{
    uint64_t t = now_ns();
    switch (g_phase) {
    case PH_WARMUP:
        g_warmup_ops++;
        break;
    case PH_MEASURE:
        g_ops++;
        rn_hist_add(&g_hist, t - c->t_start);
        if (g_max_ops && g_ops >= g_max_ops)
            enter_drain();
        break;
    default:
        g_drain_ops++;
        break;
    }
    if (g_wl == WL_CHURN) {
        close_conn(c);
        if (g_phase >= PH_DRAIN)
            set_done(c);
        else
            open_conn(c, 0);
        return;
    }
    if (g_phase >= PH_DRAIN) {
        end_session(c, t);
        return;
    }
    if (g_interval_ns && c->t_start + g_interval_ns > t) {
        c->state = CS_WAIT;
        c->deadline = c->t_start + g_interval_ns;
        return;
    }
    begin_op(c, t);
    drive(c, 0);
}

/* Send what is left of the request; read and verify what has arrived.  Edge-triggered:
 * everything is pushed until EAGAIN, EOF or completion. */
static void drive(struct conn *c, uint32_t events)
{
    if (c->state == CS_OP) {
        while (c->sent < g_size) {
            ssize_t n = send(c->fd, g_pattern + c->off + c->sent, g_size - c->sent, MSG_NOSIGNAL);
            if (n > 0) {
                c->sent += (uint32_t)n;
                continue;
            }
            if (errno == EINTR)
                continue;
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                if (!c->out_armed) { /* still connecting, or the send buffer is full */
                    struct epoll_event ev;
                    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
                    ev.data.u64 = (uint64_t)(c - g_c);
                    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
                        fail(c, ERR_OTHER, errno);
                        return;
                    }
                    c->out_armed = 1;
                }
                break;
            }
            fail(c, classify(e), e);
            return;
        }
        if (g_wl == WL_CHURN && c->sent == g_size && !c->wr_shut) {
            if (shutdown(c->fd, SHUT_WR) != 0) {
                int e = errno;
                fail(c, classify(e), e);
                return;
            }
            c->wr_shut = 1;
        }
    }
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    if (events & EPOLLERR) {
        int e = 0;
        socklen_t l = sizeof e;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l) == 0 && e != 0) {
            fail(c, classify(e), e);
            return;
        }
    }
    for (;;) {
        uint32_t left = c->state == CS_OP ? g_size - c->rcvd : 0;
        size_t want = (size_t)left + 1; /* one more byte than expected: detect an over-long echo */
        if (want > RBUF_SIZE)
            want = RBUF_SIZE;
        ssize_t n = recv(c->fd, g_rbuf, want, 0);
        if (n > 0) {
            size_t got = (size_t)n;
            if (got > left) { /* more bytes than were sent */
                fail(c, ERR_WRONG, 0);
                return;
            }
            if (memcmp(g_rbuf, g_pattern + c->off + c->rcvd, got) != 0) {
                fail(c, ERR_WRONG, 0);
                return;
            }
            c->rcvd += (uint32_t)got;
            if (c->rcvd == g_size && g_wl == WL_PINGPONG) {
                op_done(c);
                return;
            }
            continue;
        }
        if (n == 0) {
            if (c->state == CS_CLOSING) {
                set_done(c);
                return;
            }
            if (c->rcvd < g_size || g_wl == WL_PINGPONG) {
                fail(c, ERR_SHORT, 0);
                return;
            }
            if (!c->wr_shut) { /* EOF before we finished sending: the server closed early */
                fail(c, ERR_SHORT, 0);
                return;
            }
            op_done(c);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (errno == EINTR)
            continue;
        int e = errno;
        fail(c, classify(e), e);
        return;
    }
}

static void scan(uint64_t t)
{
    for (unsigned i = 0; i < g_conns; i++) {
        struct conn *c = &g_c[i];
        switch (c->state) {
        case CS_OP:
        case CS_CLOSING:
            if (t >= c->deadline)
                fail(c, ERR_TIMEOUT, 0);
            break;
        case CS_BACKOFF:
            if (g_phase >= PH_DRAIN)
                set_done(c);
            else if (t >= c->deadline)
                open_conn(c, 0);
            break;
        case CS_WAIT:
            if (g_phase >= PH_DRAIN) {
                end_session(c, t);
            } else if (t >= c->deadline) {
                begin_op(c, t);
                drive(c, 0);
            }
            break;
        case CS_IDLE:
            if (g_phase >= PH_DRAIN)
                set_done(c);
            break;
        default:
            break;
        }
    }
}

/* ---- CLI ---- */
static int parse_addr(const char *s, struct sockaddr_in *out, int need_port)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    size_t hl = colon ? (size_t)(colon - s) : strlen(s);
    if (hl == 0 || hl >= sizeof host)
        return -1;
    memcpy(host, s, hl);
    host[hl] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1)
        return -1;
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (*end || p < 0 || p > 65535)
            return -1;
        out->sin_port = htons((uint16_t)p);
    } else if (need_port) {
        return -1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ringnet-loadgen --workload churn|pingpong --target HOST:PORT [options]\n"
            "  --connections N   concurrent clients (churn, default 32) or persistent connections\n"
            "                    (pingpong, default 1)\n"
            "  --size BYTES      request / message size (default 64)\n"
            "  --duration S      measured window in seconds (default 5)\n"
            "  --warmup S        unmeasured warm-up before the window (default 1)\n"
            "  --max-ops N       end the window after N operations as well\n"
            "  --interval S      pingpong: each connection starts a message every S seconds at most\n"
            "                    (first starts spread over one interval; default 0 = back to back)\n"
            "  --idle S          pingpong: connections stay silent for S seconds after connecting\n"
            "                    (counts towards --warmup: make the warm-up longer)\n"
            "  --timeout S       per-operation timeout, counted as an error (default 5)\n"
            "  --sources A,B,..  IPv4 source addresses to spread connections over (bound with\n"
            "                    IP_BIND_ADDRESS_NO_PORT); 'none' = let the kernel pick.  Default for\n"
            "                    churn to a 127/8 target: 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5\n"
            "  --notify-pid PID  send SIGUSR1 to PID at the start and at the end of the window\n"
            "                    (repeatable; used with libringnet-malloc-count.so)\n"
            "  --json            print one JSON line of results instead of text\n"
            "  --fail-on-error   exit 1 if any operation failed (refused, reset, timeout, short or\n"
            "                    wrong echo, other)\n"
            "Exit: 0 ok, 1 errors with --fail-on-error, 2 usage or setup failure.\n");
}

static double parse_double(const char *s, const char *opt)
{
    char *end;
    double v = strtod(s, &end);
    if (*end || v < 0) {
        fprintf(stderr, "ringnet-loadgen: bad value for %s: %s\n", opt, s);
        exit(2);
    }
    return v;
}

static unsigned long long parse_u64(const char *s, const char *opt)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || s[0] == '-') {
        fprintf(stderr, "ringnet-loadgen: bad value for %s: %s\n", opt, s);
        exit(2);
    }
    return v;
}

static void parse_sources(const char *arg)
{
    g_sources_given = 1;
    g_nsources = 0;
    if (strcmp(arg, "none") == 0 || arg[0] == 0)
        return;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", arg);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (g_nsources == MAX_SOURCES) {
            fprintf(stderr, "ringnet-loadgen: too many sources (max %d)\n", MAX_SOURCES);
            exit(2);
        }
        if (parse_addr(tok, &g_sources[g_nsources], 0) != 0) {
            fprintf(stderr, "ringnet-loadgen: bad source address: %s\n", tok);
            exit(2);
        }
        g_sources[g_nsources].sin_port = 0;
        g_nsources++;
    }
}

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = 1;
}

static const char *errno_name(int e)
{
    switch (e) {
    case EADDRNOTAVAIL:
        return "EADDRNOTAVAIL";
    case EADDRINUSE:
        return "EADDRINUSE";
    case EMFILE:
        return "EMFILE";
    case ENFILE:
        return "ENFILE";
    case ENOBUFS:
        return "ENOBUFS";
    case ENOMEM:
        return "ENOMEM";
    case EHOSTUNREACH:
        return "EHOSTUNREACH";
    case ENETUNREACH:
        return "ENETUNREACH";
    case ENOTCONN:
        return "ENOTCONN";
    case EINVAL:
        return "EINVAL";
    case EAGAIN:
        return "EAGAIN";
    default:
        return NULL;
    }
}

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static void report(void)
{
    double elapsed = (double)(g_t_measure_end - g_t_measure) / 1e9;
    double rate = elapsed > 0 ? (double)g_ops / elapsed : 0;
    uint64_t err_total = 0, err_win = 0;
    for (int k = 0; k < ERR_N; k++) {
        err_total += g_err[k];
        err_win += g_err_window[k];
    }
    double client_cpu_us = (double)(g_ru1.ru_utime.tv_sec - g_ru0.ru_utime.tv_sec) * 1e6 +
                           (double)(g_ru1.ru_utime.tv_usec - g_ru0.ru_utime.tv_usec) +
                           (double)(g_ru1.ru_stime.tv_sec - g_ru0.ru_stime.tv_sec) * 1e6 +
                           (double)(g_ru1.ru_stime.tv_usec - g_ru0.ru_stime.tv_usec);
    double p50 = us(rn_hist_quantile(&g_hist, 0.50)), p90 = us(rn_hist_quantile(&g_hist, 0.90));
    double p99 = us(rn_hist_quantile(&g_hist, 0.99)), p999 = us(rn_hist_quantile(&g_hist, 0.999));
    double mx = us(g_hist.count ? g_hist.max : 0), mn = us(g_hist.count ? g_hist.min : 0);
    double mean = g_hist.count ? us(g_hist.sum / g_hist.count) : 0;
    const char *wl = g_wl == WL_CHURN ? "churn" : "pingpong";

    if (!g_json) {
        printf("workload %s  target %s  connections %u  size %u  sources %u\n", wl, g_target_str, g_conns, g_size,
               g_nsources);
        printf("ops %llu in %.3f s = %.0f ops/s   (warmup %llu, drain %llu, connects %llu)\n",
               (unsigned long long)g_ops, elapsed, rate, (unsigned long long)g_warmup_ops,
               (unsigned long long)g_drain_ops, (unsigned long long)g_connects);
        printf("latency us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n", p50, p90, p99, p999, mx,
               mean);
        printf("errors %llu:", (unsigned long long)err_total);
        for (int k = 0; k < ERR_N; k++)
            printf(" %s %llu", err_names[k], (unsigned long long)g_err[k]);
        printf("\n");
        for (int e = 0; e < ERRNO_SLOTS; e++)
            if (g_errno_count[e]) {
                const char *nm = errno_name(e);
                printf("  other errno %d (%s): %llu\n", e, nm ? nm : strerror(e), (unsigned long long)g_errno_count[e]);
            }
        if (g_cpu_ok)
            for (int i = 0; i < g_cpu1.n && i < g_cpu0.n; i++) {
                uint64_t b = g_cpu1.busy[i] - g_cpu0.busy[i], t = g_cpu1.total[i] - g_cpu0.total[i];
                printf("cpu%d busy %.1f%%  (%.0f us/op)\n", i, t ? 100.0 * (double)b / (double)t : 0.0,
                       g_ops ? (double)b / (double)g_ops : 0.0);
            }
        printf("client process cpu %.0f us (%.2f us/op)\n", client_cpu_us, g_ops ? client_cpu_us / (double)g_ops : 0);
        return;
    }
    printf("{\"workload\":\"%s\",\"target\":\"%s\",\"connections\":%u,\"size\":%u,\"sources\":%u,"
           "\"duration_s\":%.3f,\"warmup_s\":%.3f,\"timeout_s\":%.3f,\"max_ops\":%llu,"
           "\"interval_s\":%.3f,\"idle_s\":%.3f,",
           wl, g_target_str, g_conns, g_size, g_nsources, g_duration, g_warmup, g_timeout,
           (unsigned long long)g_max_ops, g_interval, g_idle);
    printf("\"ops\":%llu,\"ops_per_sec\":%.1f,\"elapsed_s\":%.6f,\"warmup_ops\":%llu,\"drain_ops\":%llu,"
           "\"connects\":%llu,\"spec_send_ok\":%llu,\"total_s\":%.3f,",
           (unsigned long long)g_ops, rate, elapsed, (unsigned long long)g_warmup_ops, (unsigned long long)g_drain_ops,
           (unsigned long long)g_connects, (unsigned long long)g_spec_send_ok, (double)(g_t_end - g_t_begin) / 1e9);
    printf("\"errors\":{");
    for (int k = 0; k < ERR_N; k++)
        printf("%s\"%s\":%llu", k ? "," : "", err_names[k], (unsigned long long)g_err[k]);
    printf("},\"error_total\":%llu,\"errors_in_window\":%llu,\"other_errno\":{", (unsigned long long)err_total,
           (unsigned long long)err_win);
    int first = 1;
    for (int e = 0; e < ERRNO_SLOTS; e++)
        if (g_errno_count[e]) {
            const char *nm = errno_name(e);
            if (nm)
                printf("%s\"%s\":%llu", first ? "" : ",", nm, (unsigned long long)g_errno_count[e]);
            else
                printf("%s\"errno%d\":%llu", first ? "" : ",", e, (unsigned long long)g_errno_count[e]);
            first = 0;
        }
    printf("},\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,\"min_us\":%.2f,"
           "\"mean_us\":%.2f,",
           p50, p90, p99, p999, mx, mn, mean);
    printf("\"client_cpu_us\":%.0f,\"cpu\":[", client_cpu_us);
    if (g_cpu_ok)
        for (int i = 0; i < g_cpu1.n && i < g_cpu0.n; i++)
            printf("%s{\"cpu\":%d,\"busy_us\":%llu,\"total_us\":%llu}", i ? "," : "", i,
                   (unsigned long long)(g_cpu1.busy[i] - g_cpu0.busy[i]),
                   (unsigned long long)(g_cpu1.total[i] - g_cpu0.total[i]));
    printf("],\"notified\":[");
    for (unsigned i = 0; i < g_nnotify; i++)
        printf("%s%d", i ? "," : "", (int)g_notify[i]);
    printf("],\"interrupted\":%s}\n", g_interrupted ? "true" : "false");
}

int main(int argc, char **argv)
{
    enum {
        O_WORKLOAD = 1000, O_TARGET, O_CONNS, O_SIZE, O_DURATION, O_WARMUP, O_MAXOPS, O_TIMEOUT, O_SOURCES,
        O_NOTIFY, O_JSON, O_FAIL, O_HELP, O_INTERVAL, O_IDLE,
    };
    static const struct option opts[] = {
        {"workload", required_argument, 0, O_WORKLOAD}, {"target", required_argument, 0, O_TARGET},
        {"connections", required_argument, 0, O_CONNS}, {"size", required_argument, 0, O_SIZE},
        {"duration", required_argument, 0, O_DURATION}, {"warmup", required_argument, 0, O_WARMUP},
        {"max-ops", required_argument, 0, O_MAXOPS},    {"timeout", required_argument, 0, O_TIMEOUT},
        {"sources", required_argument, 0, O_SOURCES},   {"notify-pid", required_argument, 0, O_NOTIFY},
        {"json", no_argument, 0, O_JSON},               {"fail-on-error", no_argument, 0, O_FAIL},
        {"help", no_argument, 0, O_HELP},               {"interval", required_argument, 0, O_INTERVAL},
        {"idle", required_argument, 0, O_IDLE},         {0, 0, 0, 0},
    };
    int have_target = 0;
    for (;;) {
        int o = getopt_long(argc, argv, "", opts, NULL);
        if (o == -1)
            break;
        switch (o) {
        case O_WORKLOAD:
            if (strcmp(optarg, "churn") == 0)
                g_wl = WL_CHURN;
            else if (strcmp(optarg, "pingpong") == 0)
                g_wl = WL_PINGPONG;
            else {
                fprintf(stderr, "ringnet-loadgen: unknown workload %s\n", optarg);
                return 2;
            }
            break;
        case O_TARGET:
            if (parse_addr(optarg, &g_target, 1) != 0) {
                fprintf(stderr, "ringnet-loadgen: bad --target %s (want IPv4:PORT)\n", optarg);
                return 2;
            }
            snprintf(g_target_str, sizeof g_target_str, "%s", optarg);
            have_target = 1;
            break;
        case O_CONNS: {
            unsigned long long v = parse_u64(optarg, "--connections");
            if (v < 1 || v > 1000000) {
                fprintf(stderr, "ringnet-loadgen: --connections out of range\n");
                return 2;
            }
            g_conns = (unsigned)v;
            break;
        }
        case O_SIZE: {
            unsigned long long v = parse_u64(optarg, "--size");
            if (v < 1 || v > (1ull << 30)) {
                fprintf(stderr, "ringnet-loadgen: --size out of range (1..1GiB)\n");
                return 2;
            }
            g_size = (uint32_t)v;
            break;
        }
        case O_DURATION:
            g_duration = parse_double(optarg, "--duration");
            break;
        case O_WARMUP:
            g_warmup = parse_double(optarg, "--warmup");
            break;
        case O_MAXOPS:
            g_max_ops = parse_u64(optarg, "--max-ops");
            break;
        case O_TIMEOUT:
            g_timeout = parse_double(optarg, "--timeout");
            break;
        case O_INTERVAL:
            g_interval = parse_double(optarg, "--interval");
            break;
        case O_IDLE:
            g_idle = parse_double(optarg, "--idle");
            break;
        case O_SOURCES:
            parse_sources(optarg);
            break;
        case O_NOTIFY:
            if (g_nnotify == MAX_NOTIFY) {
                fprintf(stderr, "ringnet-loadgen: too many --notify-pid\n");
                return 2;
            }
            g_notify[g_nnotify++] = (pid_t)parse_u64(optarg, "--notify-pid");
            break;
        case O_JSON:
            g_json = 1;
            break;
        case O_FAIL:
            g_fail_on_error = 1;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || !have_target) {
        usage(stderr);
        return 2;
    }
    if (g_timeout <= 0)
        g_timeout = 5.0;
    if (g_conns == 0)
        g_conns = g_wl == WL_CHURN ? 32 : 1;
    if (!g_sources_given && g_wl == WL_CHURN && (ntohl(g_target.sin_addr.s_addr) >> 24) == 127)
        parse_sources("127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5");
    g_timeout_ns = sec_to_ns(g_timeout);
    if ((g_interval > 0 || g_idle > 0) && g_wl != WL_PINGPONG) {
        fprintf(stderr, "ringnet-loadgen: --interval and --idle are for pingpong\n");
        return 2;
    }
    g_interval_ns = sec_to_ns(g_interval);
    g_idle_ns = sec_to_ns(g_idle);

    /* file descriptors: one per connection plus slack */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)g_conns + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < (rlim_t)g_conns + 64)
            fprintf(stderr, "ringnet-loadgen: warning: RLIMIT_NOFILE %llu is below %u connections\n",
                    (unsigned long long)rl.rlim_cur, g_conns);
    }

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* the byte pattern: pseudo-random, each operation starts at a different offset */
    g_pattern = malloc((size_t)g_size + PATTERN_SPAN);
    g_c = calloc(g_conns, sizeof *g_c);
    if (!g_pattern || !g_c)
        die("malloc");
    uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    for (size_t i = 0; i < (size_t)g_size + PATTERN_SPAN; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g_pattern[i] = (unsigned char)(x >> 24);
    }
    rn_hist_reset(&g_hist);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        die("epoll_create1");

    g_t_begin = now_ns();
    uint64_t warm_end = g_t_begin + sec_to_ns(g_warmup);
    for (unsigned i = 0; i < g_conns; i++) {
        g_c[i].fd = -1;
        g_c[i].state = CS_IDLE;
    }
    g_active = g_conns;
    uint64_t measure_end = UINT64_MAX;
    if (g_warmup <= 0) {
        enter_measure();
        measure_end = g_t_measure + sec_to_ns(g_duration);
    }
    for (unsigned i = 0; i < g_conns; i++)
        open_conn(&g_c[i], 1);

    struct epoll_event evs[256];
    uint64_t next_scan = now_ns() + SCAN_NS;
    uint64_t drain_hard_end = UINT64_MAX;
    for (;;) {
        uint64_t t = now_ns();
        if (g_phase == PH_WARMUP && t >= warm_end) {
            enter_measure();
            measure_end = g_t_measure + sec_to_ns(g_duration);
        }
        if (g_phase == PH_WARMUP && g_interrupted)
            enter_drain();
        if (g_phase == PH_MEASURE && (t >= measure_end || g_interrupted))
            enter_drain();
        if (g_phase == PH_DRAIN && drain_hard_end == UINT64_MAX) {
            drain_hard_end = t + g_timeout_ns + 1000000000ull;
            scan(t); /* retire idle / backing-off slots */
        }
        if (g_phase == PH_DRAIN && (g_active == 0 || t >= drain_hard_end)) {
            for (unsigned i = 0; i < g_conns; i++)
                if (g_c[i].state != CS_DONE) {
                    if (g_c[i].state == CS_OP || g_c[i].state == CS_CLOSING)
                        count_error(ERR_TIMEOUT, 0);
                    set_done(&g_c[i]);
                }
            break;
        }
        if (t >= next_scan) {
            scan(t);
            next_scan = t + SCAN_NS;
            continue;
        }
        uint64_t wake = next_scan;
        if (g_phase == PH_WARMUP && warm_end < wake)
            wake = warm_end;
        if (g_phase == PH_MEASURE && measure_end < wake)
            wake = measure_end;
        int tmo = (int)((wake - t + 999999) / 1000000);
        int n = epoll_wait(g_ep, evs, 256, tmo);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = &g_c[evs[i].data.u64];
            if (c->fd < 0 || (c->state != CS_OP && c->state != CS_CLOSING))
                continue;
            drive(c, evs[i].events);
        }
    }
    g_t_end = now_ns();
    report();
    fflush(stdout);
    uint64_t err_total = 0;
    for (int k = 0; k < ERR_N; k++)
        err_total += g_err[k];
    return g_fail_on_error && err_total ? 1 : 0;
}
