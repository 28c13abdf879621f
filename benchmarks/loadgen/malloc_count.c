/* libringnet-malloc-count.so: an LD_PRELOAD shim that counts heap allocation calls.
 *
 *   LD_PRELOAD=.../libringnet-malloc-count.so RINGNET_MALLOC_COUNT_FILE=/tmp/x ./server
 *   kill -USR1 <pid>    # appends the running totals to /tmp/x
 *   (at normal exit)    # appends them once more, event=exit
 *
 * Counted: malloc, calloc, realloc, reallocarray, aligned_alloc, posix_memalign, memalign, valloc,
 * pvalloc (C++ operator new ends in malloc, so it is counted too).  free is not interposed.
 *
 * Each record is one line, appended with a single write(2) (O_APPEND, so concurrent writers do not
 * interleave):
 *   allocs=<total> malloc=<n> calloc=<n> realloc=<n> aligned=<n> pid=<pid> event=signal|exit
 * The runner snapshots at the start and at the end of the measured window and divides the
 * difference by the operations done.
 *
 * No dlsym (which itself allocates): we forward to glibc's exported __libc_* entry points.
 * The counters are plain atomics, the SIGUSR1 handler only uses async-signal-safe calls
 * (open/write/close on a path copied at load time; no stdio).  After fork() the child starts
 * again from zero.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t align, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

#define VISIBLE __attribute__((visibility("default")))

enum { K_MALLOC, K_CALLOC, K_REALLOC, K_ALIGNED, K_N };
static unsigned long long g_count[K_N];
static char g_path[4096];
static int g_enabled;

static inline void count(int k)
{
    __atomic_fetch_add(&g_count[k], 1ull, __ATOMIC_RELAXED);
}

VISIBLE void *malloc(size_t size)
{
    count(K_MALLOC);
    return __libc_malloc(size);
}

VISIBLE void *calloc(size_t n, size_t size)
{
    count(K_CALLOC);
    return __libc_calloc(n, size);
}

VISIBLE void *realloc(void *p, size_t size)
{
    count(K_REALLOC);
    return __libc_realloc(p, size);
}

VISIBLE void *reallocarray(void *p, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    count(K_REALLOC);
    return __libc_realloc(p, total);
}

VISIBLE void *memalign(size_t align, size_t size)
{
    count(K_ALIGNED);
    return __libc_memalign(align, size);
}

VISIBLE void *aligned_alloc(size_t align, size_t size)
{
    count(K_ALIGNED);
    return __libc_memalign(align, size);
}

VISIBLE int posix_memalign(void **out, size_t align, size_t size)
{
    count(K_ALIGNED);
    if (align == 0 || (align & (align - 1)) != 0 || align % sizeof(void *) != 0)
        return EINVAL;
    int saved = errno;
    void *p = __libc_memalign(align, size);
    if (!p)
        return ENOMEM;
    errno = saved;
    *out = p;
    return 0;
}

VISIBLE void *valloc(size_t size)
{
    count(K_ALIGNED);
    return __libc_valloc(size);
}

VISIBLE void *pvalloc(size_t size)
{
    count(K_ALIGNED);
    return __libc_pvalloc(size);
}

/* ---- reporting (async-signal-safe) ---- */
static char *put_str(char *p, const char *s)
{
    while (*s)
        *p++ = *s++;
    return p;
}

static char *put_u64(char *p, unsigned long long v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static void dump(const char *event)
{
    if (!g_enabled)
        return;
    int saved = errno;
    unsigned long long c[K_N], total = 0;
    for (int k = 0; k < K_N; k++) {
        c[k] = __atomic_load_n(&g_count[k], __ATOMIC_RELAXED);
        total += c[k];
    }
    char line[256];
    char *p = line;
    p = put_str(p, "allocs=");
    p = put_u64(p, total);
    p = put_str(p, " malloc=");
    p = put_u64(p, c[K_MALLOC]);
    p = put_str(p, " calloc=");
    p = put_u64(p, c[K_CALLOC]);
    p = put_str(p, " realloc=");
    p = put_u64(p, c[K_REALLOC]);
    p = put_str(p, " aligned=");
    p = put_u64(p, c[K_ALIGNED]);
    p = put_str(p, " pid=");
    p = put_u64(p, (unsigned long long)getpid());
    p = put_str(p, " event=");
    p = put_str(p, event);
    *p++ = '\n';
    int fd = open(g_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        const char *w = line;
        size_t left = (size_t)(p - line);
        while (left) {
            ssize_t n = write(fd, w, left);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            w += n;
            left -= (size_t)n;
        }
        close(fd);
    }
    errno = saved;
}

static void on_usr1(int sig)
{
    (void)sig;
    dump("signal");
}

static void after_fork_child(void)
{
    for (int k = 0; k < K_N; k++)
        __atomic_store_n(&g_count[k], 0ull, __ATOMIC_RELAXED);
}

__attribute__((constructor(101))) static void mc_init(void)
{
    const char *path = getenv("RINGNET_MALLOC_COUNT_FILE");
    if (!path || !*path || strlen(path) >= sizeof g_path)
        return;
    memcpy(g_path, path, strlen(path) + 1);
    g_enabled = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    pthread_atfork(NULL, NULL, after_fork_child);
}

__attribute__((destructor(101))) static void mc_fini(void)
{
    dump("exit");
}
