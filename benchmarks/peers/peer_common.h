/* Shared by the benchmark peers (the lifecycle-echo protocol, README "Benchmarks"): command line, endpoints,
 * the listener, signals, a free-list pool and an intrusive list. No dependency beyond libc,
 * so that the C++ Asio peer links it too. */
#ifndef PEER_COMMON_H
#define PEER_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A parsed HOST:PORT (IPv4 "127.0.0.1:0", IPv6 "[::1]:0", or a name). */
struct peer_endpoint {
    struct sockaddr_storage addr;
    socklen_t len;
};

struct peer_args {
    struct peer_endpoint listen;
    struct peer_endpoint upstream; /* only with PEER_ARGS_PROXY */
    double grace;                  /* seconds, default 5 */
    size_t buffer;                 /* bytes per direction, only with PEER_ARGS_PROXY */
    int recv_mode;                 /* --recv circular|bundles|incremental: 0, 1, 2; only with PEER_ARGS_PROXY */
    /* Only with PEER_ARGS_URING_PROBES: io_uring mechanisms the reference does not use by default,
     * each switched on alone to measure what it is worth. */
    bool direct;          /* --descriptors direct: sockets in the ring's file table, never an fd
                           * (implies --teardown sqes) */
    bool sqe_teardown;    /* --teardown sqes: shutdown and close as linked SQEs, not syscalls */
    unsigned min_wait_us; /* --min-wait-us N: each wait gathers completions for up to N µs */
};

enum {
    PEER_ARGS_PROXY = 1,        /* also accept (and require) --upstream, accept --buffer, --recv */
    PEER_ARGS_URING_PROBES = 2, /* accept --descriptors, --teardown, --min-wait-us */
};

/* Parses argv; prints usage and exits 2 on a bad command line, exits 0 on --help. */
void peer_parse_args(int argc, char **argv, unsigned flags, struct peer_args *out);

/* "127.0.0.1:80" or "[::1]:80"; returns buf. */
#define PEER_ADDRSTRLEN 64
const char *peer_format_addr(const struct sockaddr *sa, char buf[PEER_ADDRSTRLEN]);

/* A listening socket with SO_REUSEADDR (and TCP_NODELAY, which Linux copies to every accepted
 * socket) and a backlog of PEER_BACKLOG. Exits 1 with a message on failure. */
#define PEER_BACKLOG 4096
int peer_listen(const struct peer_endpoint *ep, bool nonblocking);

/* Prints "listening on HOST:PORT" for the bound address of fd as the first line of stdout. */
void peer_announce(int fd);

/* Blocks SIGINT/SIGTERM (to be read from the returned signalfd) and ignores SIGPIPE. */
int peer_signalfd(bool nonblocking);

/* Raises RLIMIT_NOFILE to its hard limit. */
void peer_raise_nofile(void);

/* Abortive close: SO_LINGER {1,0} then close, the peer sees RST. */
void peer_abort(int fd);

/* Monotonic clock in milliseconds. */
long long peer_now_ms(void);

/* Fixed-size objects recycled through a free list; the pool grows in chunks and never
 * shrinks, so the steady state does not allocate. Exits on out of memory. */
struct peer_pool {
    void *free;
    size_t size;
    size_t per_chunk;
};
#define PEER_POOL_INIT(type, n) { NULL, sizeof(type) < sizeof(void *) ? sizeof(void *) : sizeof(type), (n) }
void *peer_pool_get(struct peer_pool *p);
void peer_pool_put(struct peer_pool *p, void *obj);

/* Circular doubly-linked intrusive list; a head is a link pointing at itself when empty. */
struct peer_link {
    struct peer_link *prev, *next;
};

static inline void peer_list_init(struct peer_link *head) { head->prev = head->next = head; }
static inline bool peer_list_empty(const struct peer_link *head) { return head->next == head; }
static inline void peer_list_push(struct peer_link *head, struct peer_link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}
/* For a link initialised with peer_list_init: is it in a list? */
static inline bool peer_link_linked(const struct peer_link *l) { return l->next != l; }
static inline void peer_list_remove(struct peer_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

#define peer_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#ifdef __cplusplus
}
#endif

#endif
