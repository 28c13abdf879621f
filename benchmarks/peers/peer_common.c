#include "peer_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "peer";

static void usage(FILE *out, unsigned flags)
{
    if (flags & PEER_ARGS_PROXY)
        fprintf(out, "usage: %s --listen HOST:PORT --upstream HOST:PORT [--buffer BYTES] [--grace SECONDS]\n"
                     "       [--recv circular|bundles|incremental]\n", prog);
    else if (flags & PEER_ARGS_URING_PROBES)
        fprintf(out, "usage: %s --listen HOST:PORT [--grace SECONDS] [--descriptors regular|direct]\n"
                     "       [--teardown syscalls|sqes] [--min-wait-us 0..1000000]\n", prog);
    else
        fprintf(out, "usage: %s --listen HOST:PORT [--grace SECONDS]\n", prog);
}

static _Noreturn void bad_args(unsigned flags, const char *what, const char *arg)
{
    fprintf(stderr, "%s: %s%s%s\n", prog, what, arg ? ": " : "", arg ? arg : "");
    usage(stderr, flags);
    exit(2);
}

/* "[v6]:port", "v4:port", "name:port"; an empty host means the wildcard address. */
static bool parse_endpoint(const char *text, struct peer_endpoint *ep)
{
    char host[256];
    const char *port;
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end || end[1] != ':' || (size_t)(end - text - 1) >= sizeof host)
            return false;
        memcpy(host, text + 1, (size_t)(end - text - 1));
        host[end - text - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon || (size_t)(colon - text) >= sizeof host || memchr(text, ':', (size_t)(colon - text)))
            return false;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
    }
    char *end;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (!*port || *end || errno || p > 65535 || port[0] == '-' || port[0] == '+')
        return false;

    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV | AI_PASSIVE };
    struct addrinfo *res;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0)
        return false;
    memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
    ep->len = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

static bool parse_size(const char *text, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || errno || text[0] == '-')
        return false;
    if (*end == 'k' || *end == 'K')
        v <<= 10, end++;
    else if (*end == 'm' || *end == 'M')
        v <<= 20, end++;
    if (*end || v < 4096 || v > (1ull << 30))
        return false;
    *out = (size_t)v;
    return true;
}

void peer_parse_args(int argc, char **argv, unsigned flags, struct peer_args *out)
{
    if (argc > 0 && argv[0][0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    memset(out, 0, sizeof *out);
    out->grace = 5.0;
    out->buffer = 1u << 20;
    bool have_listen = false, have_upstream = false, explicit_syscall_teardown = false;

    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "--help") || !strcmp(opt, "-h")) {
            usage(stdout, flags);
            exit(0);
        }
        /* "--opt value" or "--opt=value" */
        const char *value = strchr(opt, '=');
        size_t name_len = value ? (size_t)(value - opt) : strlen(opt);
        if (value)
            value++;
        else if (i + 1 < argc)
            value = argv[++i];
        else
            bad_args(flags, "missing value for", opt);

#define IS(name) (name_len == strlen(name) && !strncmp(opt, name, name_len))
        if (IS("--listen")) {
            if (!parse_endpoint(value, &out->listen))
                bad_args(flags, "bad --listen address", value);
            have_listen = true;
        } else if (IS("--grace")) {
            char *end;
            out->grace = strtod(value, &end);
            if (end == value || *end || !isfinite(out->grace) || out->grace < 0 || out->grace > 1e6)
                bad_args(flags, "bad --grace", value);
        } else if ((flags & PEER_ARGS_PROXY) && IS("--upstream")) {
            if (!parse_endpoint(value, &out->upstream))
                bad_args(flags, "bad --upstream address", value);
            have_upstream = true;
        } else if ((flags & PEER_ARGS_PROXY) && IS("--buffer")) {
            if (!parse_size(value, &out->buffer))
                bad_args(flags, "bad --buffer (4096 .. 1G bytes, k/M suffix allowed)", value);
        } else if ((flags & PEER_ARGS_PROXY) && IS("--recv")) {
            static const char *const modes[] = { "circular", "bundles", "incremental" };
            out->recv_mode = -1;
            for (int m = 0; m < 3; m++)
                if (!strcmp(value, modes[m]))
                    out->recv_mode = m;
            if (out->recv_mode < 0)
                bad_args(flags, "bad --recv (circular, bundles or incremental)", value);
        } else if ((flags & PEER_ARGS_URING_PROBES) && IS("--descriptors")) {
            if (strcmp(value, "regular") && strcmp(value, "direct"))
                bad_args(flags, "bad --descriptors (regular or direct)", value);
            out->direct = !strcmp(value, "direct");
        } else if ((flags & PEER_ARGS_URING_PROBES) && IS("--teardown")) {
            if (strcmp(value, "syscalls") && strcmp(value, "sqes"))
                bad_args(flags, "bad --teardown (syscalls or sqes)", value);
            out->sqe_teardown = !strcmp(value, "sqes");
            explicit_syscall_teardown = !out->sqe_teardown;
        } else if ((flags & PEER_ARGS_URING_PROBES) && IS("--min-wait-us")) {
            char *end;
            errno = 0;
            unsigned long us = strtoul(value, &end, 10);
            if (end == value || *end || errno || us > 1000000 || value[0] == '-')
                bad_args(flags, "bad --min-wait-us (0 .. 1000000)", value);
            out->min_wait_us = (unsigned)us;
        } else {
            bad_args(flags, "unknown option", opt);
        }
#undef IS
    }
    if (!have_listen)
        bad_args(flags, "--listen is required", NULL);
    if (out->direct && explicit_syscall_teardown)
        bad_args(flags, "--descriptors direct needs --teardown sqes: a direct descriptor has no fd for shutdown(2) or close(2)", NULL);
    if (out->direct) /* implied */
        out->sqe_teardown = true;
    if ((flags & PEER_ARGS_PROXY) && !have_upstream)
        bad_args(flags, "--upstream is required", NULL);
}

const char *peer_format_addr(const struct sockaddr *sa, char buf[PEER_ADDRSTRLEN])
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
        snprintf(buf, PEER_ADDRSTRLEN, "[%s]:%u", host, port);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
        snprintf(buf, PEER_ADDRSTRLEN, "%s:%u", host, port);
    }
    return buf;
}

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

int peer_listen(const struct peer_endpoint *ep, bool nonblocking)
{
    int fd = socket(ep->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
        die("setsockopt");
    if (bind(fd, (const struct sockaddr *)&ep->addr, ep->len) < 0)
        die("bind");
    if (listen(fd, PEER_BACKLOG) < 0)
        die("listen");
    return fd;
}

void peer_announce(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char buf[PEER_ADDRSTRLEN];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        die("getsockname");
    printf("listening on %s\n", peer_format_addr((struct sockaddr *)&ss, buf));
    fflush(stdout);
}

int peer_signalfd(bool nonblocking)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
        die("sigprocmask");
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_CLOEXEC | (nonblocking ? SFD_NONBLOCK : 0));
    if (fd < 0)
        die("signalfd");
    return fd;
}

void peer_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

void peer_abort(int fd)
{
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

long long peer_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *peer_pool_get(struct peer_pool *p)
{
    if (!p->free) {
        char *chunk = malloc(p->size * p->per_chunk);
        if (!chunk) {
            fprintf(stderr, "%s: out of memory\n", prog);
            exit(1);
        }
        for (size_t i = 0; i < p->per_chunk; i++)
            peer_pool_put(p, chunk + i * p->size);
    }
    void *obj = p->free;
    p->free = *(void **)obj;
    return obj;
}

void peer_pool_put(struct peer_pool *p, void *obj)
{
    *(void **)obj = p->free;
    p->free = obj;
}
